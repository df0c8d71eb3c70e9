"""One training step (forward, backward, SGD) of a LeNet-style CNN on 1x28x28 at batch 64.

conv 6@5x5 -> relu -> maxpool 2 -> conv 16@5x5 -> relu -> maxpool 2 -> fc 120 -> relu
-> fc 84 -> relu -> fc 10, cross-entropy, float32. zgrad beside PyTorch CPU eager in one run,
interleaved with a rotating order, the same weights and the same thread count; medians and
the zgrad/torch ratio. --profile also prints where zgrad's step spends its time.

    python benchmarks/bench_cnn_step.py [--threads N] [--repeats R] [--steps S] [--profile] [--cpu-time]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
from benchmarks._step_harness import parse_args, run  # noqa: E402

BATCH = 64
LR = 0.01



def build(nn):
    """The same LeNet in tensor.nn or torch.nn (the module trees match key for key)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def make_step(lib, model, x, y):
    F = lib.nn.functional
    opt = lib.optim.SGD(model.parameters(), lr=LR)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def main():
    args = parse_args(__doc__, steps=10)
    import torch
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    tensor.manual_seed(0)
    zmodel = build(tensor.nn)
    tmodel = build(torch.nn)
    # the same starting weights, moved through state_dicts
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in zmodel.state_dict().items()})
    run(f"LeNet 1x28x28, batch {BATCH}", {
        "zgrad": make_step(tensor, zmodel, tensor.tensor(x), tensor.tensor(y)),
        "torch": make_step(torch, tmodel, torch.tensor(x), torch.tensor(y))}, args)


if __name__ == "__main__":
    main()
