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
from benchmarks._step_harness import lenet, make_step, parse_args, run  # noqa: E402

BATCH = 64
LR = 0.01



def main():
    args = parse_args(__doc__, steps=10)
    import torch
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    tensor.manual_seed(0)
    zmodel = lenet(tensor.nn)
    tmodel = lenet(torch.nn)
    # the same starting weights, moved through state_dicts
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in zmodel.state_dict().items()})
    run(f"LeNet 1x28x28, batch {BATCH}", {
        "zgrad": make_step(tensor, zmodel, tensor.tensor(x), tensor.tensor(y),
                           tensor.optim.SGD(zmodel.parameters(), lr=LR)),
        "torch": make_step(torch, tmodel, torch.tensor(x), torch.tensor(y),
                           torch.optim.SGD(tmodel.parameters(), lr=LR))}, args)


if __name__ == "__main__":
    main()
