"""The shared part of the training-step benchmarks (bench_{cnn,lstm,transformer}_step.py):
arguments, thread limits, interleaved timing and the report.

Each benchmark builds a zero-argument ``step()`` per library (zgrad and torch, same weights)
and hands them to ``run``, which warms up, times them interleaved (the order rotates and a
pause lets spinning worker threads, OpenMP in torch and OpenBLAS, go to sleep first, so drift
hits both alike) and prints medians and best-ofs as ratios to torch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def parse_args(doc: str, steps: int = 5):
    """The common flags; sets the BLAS and torch thread counts before anything runs."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time instead of wall time: leaves out waiting for a "
                         "core on a loaded machine (with threads > 1 it sums the threads)")
    ap.add_argument("--profile", action="store_true", help="cProfile 20 zgrad steps after")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    return args


def run(title: str, steps: dict, args) -> None:
    """Time `steps` ({"zgrad": step, "torch": step}; each returns its loss) and report."""
    clock = time.process_time if args.cpu_time else time.perf_counter

    def time_steps(step, n):
        t0 = clock()
        for _ in range(n):
            step()
        return (clock() - t0) / n

    losses = {k: float(f().detach()) for k, f in steps.items()}
    for _ in range(2):  # warm up
        for f in steps.values():
            f()
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.2)
            times[k].append(time_steps(steps[k], args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # less sensitive to a busy machine
    print(f"{title}, float32, {args.threads} threads, median (and best) of {args.repeats} x "
          f"{args.steps} steps" + (", cpu time" if args.cpu_time else ""))
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
        time_steps(steps["zgrad"], 20)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(15)


def sequence_steps(zmodel, tmodel, x, y, classes: int, lr: float) -> dict:
    """{"zgrad": step, "torch": step}: SGD on cross-entropy over every position's logits
    (the LSTM and transformer benchmarks); x, y are numpy arrays."""
    import tensor
    import torch

    def make(model, lib, xs, ys):
        opt = lib.optim.SGD(model.parameters(), lr=lr)
        F = lib.nn.functional

        def step():
            loss = F.cross_entropy(model(xs).reshape(-1, classes), ys.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    return {"zgrad": make(zmodel, tensor, tensor.tensor(x), tensor.tensor(y)),
            "torch": make(tmodel, torch, torch.tensor(x), torch.tensor(y))}
