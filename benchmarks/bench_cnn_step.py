"""One training step (forward, backward, SGD) of a LeNet-style CNN on 1x28x28 at batch 64.

conv 6@5x5 -> relu -> maxpool 2 -> conv 16@5x5 -> relu -> maxpool 2 -> fc 120 -> relu
-> fc 84 -> relu -> fc 10, cross-entropy, float32. zgrad beside PyTorch CPU eager in one run,
interleaved with a rotating order, the same weights and the same thread count; medians and
the zgrad/torch ratio. --profile also prints where zgrad's step spends its time.

    python benchmarks/bench_cnn_step.py [--threads N] [--repeats R] [--steps S] [--profile] [--cpu-time]
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

BATCH = 64
LR = 0.01


# wall time by default; --cpu-time switches to process CPU time (see main)
_clock = time.perf_counter


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


def time_steps(step, n):
    t0 = _clock()
    for _ in range(n):
        step()
    return (_clock() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
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

    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    tensor.manual_seed(0)
    zmodel = build(tensor.nn)
    tmodel = build(torch.nn)
    # the same starting weights, moved through state_dicts
    tmodel.load_state_dict({k: torch.tensor(v.numpy()) for k, v in zmodel.state_dict().items()})
    impls = {"zgrad": make_step(tensor, zmodel, tensor.tensor(x), tensor.tensor(y)),
             "torch": make_step(torch, tmodel, torch.tensor(x), torch.tensor(y))}

    losses = {k: float(f().detach()) for k, f in impls.items()}  # same first loss: same computation
    for _ in range(2):
        for f in impls.values():
            f()
    times = {k: [] for k in impls}
    names = list(impls)
    for r in range(args.repeats):
        # interleaved so drift hits both alike; the order rotates and a pause lets spinning
        # worker threads (OpenMP in torch, OpenBLAS) go to sleep first
        for k in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.25)
            impls[k]()
            times[k].append(time_steps(impls[k], args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # less sensitive to a busy machine

    print(f"LeNet 1x28x28, batch {BATCH}, float32, cpu, {args.threads} threads, "
          f"median (and best) of {args.repeats} x {args.steps} steps"
          + (", cpu time" if args.cpu_time else ""))
    print("first-step loss: " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    print(f"{'impl':8s} {'ms/step':>9s} {'vs torch':>9s} {'best ms':>9s} {'vs torch':>9s}")
    for k, v in med.items():
        print(f"{k:8s} {v * 1e3:9.3f} {v / med['torch']:9.3f} {best[k] * 1e3:9.3f} "
              f"{best[k] / best['torch']:9.3f}")

    if args.profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        time_steps(impls["zgrad"], 20)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
