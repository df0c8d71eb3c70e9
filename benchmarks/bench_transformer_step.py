"""One training step (forward, backward, SGD) of a 2-layer transformer encoder, zgrad beside
PyTorch CPU eager.

TransformerEncoder(2 x TransformerEncoderLayer(d_model 128, 4 heads, feed-forward 512,
dropout 0.1, batch_first)), sequence 64, batch 16, a linear head to 64 classes at every
position and cross-entropy over all positions, float32, training mode (dropout on). Both
start from the same weights (PyTorch's state_dict loaded into zgrad); their dropout masks
differ, so the first-step losses agree only roughly. Run interleaved with the same thread
count; medians and the ratio zgrad / torch.

    python benchmarks/bench_transformer_step.py [--threads N] [--repeats R] [--steps S] [--cpu-time]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402

D_MODEL, HEADS, FF, LAYERS, SEQ, BATCH, CLASSES, LR = 128, 4, 512, 2, 64, 16, 64, 0.01


# wall time by default; --cpu-time switches to process CPU time (see main)
_clock = time.perf_counter


def make_models(torch):
    """The PyTorch model and a zgrad copy of it (same state_dict keys, same weights)."""
    torch.manual_seed(0)

    def net(nn):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.1,
                                                   batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
                self.head = nn.Linear(D_MODEL, CLASSES)

            def forward(self, x):
                return self.head(self.encoder(x))
        return Net()

    tm, zm = net(torch.nn), net(tensor.nn)
    zm.load_state_dict({k: tensor.tensor(v.numpy()) for k, v in tm.state_dict().items()})
    return zm, tm


def make_step(model, lib, F):
    opt = lib.optim.SGD(model.parameters(), lr=LR)

    def step(x, y):
        loss = F.cross_entropy(model(x).reshape(-1, CLASSES), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()
    return step


def time_steps(step, args, n):
    t0 = _clock()
    for _ in range(n):
        step(*args)
    return (_clock() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time instead of wall time: leaves out waiting for a "
                         "core on a loaded machine (with threads > 1 it sums the threads)")
    args = ap.parse_args()
    if args.cpu_time:
        global _clock
        _clock = time.process_time
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    import torch
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH, SEQ, D_MODEL)).astype(np.float32)
    y = rng.integers(0, CLASSES, (BATCH, SEQ))
    zm, tm = make_models(torch)
    impls = {"zgrad": (make_step(zm, tensor, tensor.nn.functional),
                       (tensor.tensor(x), tensor.tensor(y))),
             "torch": (make_step(tm, torch, torch.nn.functional),
                       (torch.tensor(x), torch.tensor(y)))}
    # dropout draws differ between the libraries, so the first losses agree only roughly
    losses = {k: float(f(*a)) for k, (f, a) in impls.items()}
    for _ in range(2):  # warm up
        for f, a in impls.values():
            f(*a)
    times = {k: [] for k in impls}
    names = list(impls)
    for r in range(args.repeats):
        # interleaved so drift hits both alike; the order rotates, and a pause lets the other
        # library's spinning worker threads go to sleep first
        for k in names[r % 2:] + names[:r % 2]:
            f, a = impls[k]
            time.sleep(0.2)
            times[k].append(time_steps(f, a, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # less sensitive to a busy machine
    print(f"TransformerEncoder {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, ff {FF}, "
          f"seq {SEQ}, batch {BATCH}, head {CLASSES}, float32, {args.threads} threads, "
          f"median (and best) of {args.repeats} x {args.steps} steps"
          + (", cpu time" if args.cpu_time else ""))
    print("first-step loss: " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    for k, v in med.items():
        print(f"{k:6s} {v * 1e3:8.2f} ms/step  {v / med['torch']:6.2f}x torch   best "
              f"{best[k] * 1e3:8.2f} ms  {best[k] / best['torch']:6.2f}x")


if __name__ == "__main__":
    main()
