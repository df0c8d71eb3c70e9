"""optimizer.step() for the parameters of an MLP 784-512-512-10 (float32, ~670k values).

zgrad's optimizers (in-place ufuncs on the arrays, Note [Optimizer updates]) against the same
update written by hand in numpy (the floor) and PyTorch's CPU optimizers (default settings,
when installed), interleaved in one run with the same thread count; medians of the repeats.

    python benchmarks/bench_optim_step.py [--threads N] [--repeats R] [--steps S]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

SHAPES = [(512, 784), (512,), (512, 512), (512,), (10, 512), (10,)]


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def make_numpy(kind, arrays, grads, np):
    ps = [a.copy() for a in arrays]
    st = [dict(m=np.zeros_like(a), v=np.zeros_like(a)) for a in arrays]
    t = [0]

    def step():
        t[0] += 1
        for p, g, s in zip(ps, grads, st):
            if kind == "sgd":
                s["m"] *= 0.9
                s["m"] += g
                p -= 0.01 * s["m"]
            elif kind == "adam":
                s["m"] *= 0.9
                s["m"] += 0.1 * g
                s["v"] *= 0.999
                s["v"] += 0.001 * (g * g)
                d = np.sqrt(s["v"])
                d /= (1 - 0.999 ** t[0]) ** 0.5
                d += 1e-8
                np.divide(s["m"], d, out=d)
                d *= 1e-3 / (1 - 0.9 ** t[0])
                p -= d
            else:  # rmsprop
                s["v"] *= 0.99
                s["v"] += 0.01 * (g * g)
                d = np.sqrt(s["v"])
                d += 1e-8
                np.divide(g, d, out=d)
                d *= 0.01
                p -= d
    return step


def make_zgrad(kind, arrays, grads):
    import tensor
    from tensor import nn, optim
    ps = [nn.Parameter(tensor.tensor(a)) for a in arrays]
    for p, g in zip(ps, grads):
        p.grad = tensor.tensor(g)
    opt = {"sgd": lambda: optim.SGD(ps, lr=0.01, momentum=0.9),
           "adam": lambda: optim.Adam(ps, lr=1e-3),
           "rmsprop": lambda: optim.RMSprop(ps, lr=0.01)}[kind]()
    return opt.step


def make_torch(kind, arrays, grads, torch):
    ps = [torch.tensor(a, requires_grad=True) for a in arrays]
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g)
    opt = {"sgd": lambda: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
           "adam": lambda: torch.optim.Adam(ps, lr=1e-3),
           "rmsprop": lambda: torch.optim.RMSprop(ps, lr=0.01)}[kind]()
    return opt.step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    _set_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [rng.normal(size=s).astype(np.float32) * 1e-2 for s in SHAPES]
    n = sum(a.size for a in arrays)
    print(f"optimizer.step() on {n} float32 values in {len(SHAPES)} tensors, "
          f"{args.threads} threads, median of {args.repeats} x {args.steps} steps")
    print(f"{'optimizer':10} {'impl':7} {'us/step':>9} {'vs numpy':>9} {'vs torch':>9}")
    for kind in ("sgd", "adam", "rmsprop"):
        impls = {"zgrad": make_zgrad(kind, arrays, grads), "numpy": make_numpy(kind, arrays,
                                                                               grads, np)}
        if torch is not None:
            impls["torch"] = make_torch(kind, arrays, grads, torch)
        times = {k: [] for k in impls}
        for f in impls.values():
            f()  # warm up (state allocation)
        for _ in range(args.repeats):
            for k, f in impls.items():  # interleaved
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    f()
                times[k].append((time.perf_counter() - t0) / args.steps * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in med.items():
            vt = f"{v / med['torch']:9.3f}" if "torch" in med else f"{'-':>9}"
            print(f"{kind:10} {k:7} {v:9.1f} {v / med['numpy']:9.3f} {vt}")


if __name__ == "__main__":
    main()
