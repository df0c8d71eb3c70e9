"""Pass a 256 MiB float32 array to another process and get an acknowledgement back.

Three ways in one run, interleaved round by round (each in its own echo child, fork):
  shm      shm.multiprocessing.Queue with a shared array (shm.empty): a handle crosses
  tensor   the same with a zgrad Tensor after share_memory_() (when tensor is importable)
  torch    torch.multiprocessing.Queue with a shared torch tensor (share_memory_), when installed
  copy     multiprocessing.Queue with a plain numpy array: pickled, copied through a pipe
The receiver reads one element (so the memory is really reachable), acks, and drops it.

    python benchmarks/bench_shm_queue.py [--mib 256] [--rounds 5] [--repeats 20]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shm  # noqa: E402
import shm.multiprocessing as smp  # noqa: E402

try:
    import torch
    import torch.multiprocessing as tmp
except ImportError:
    torch = None


def echo(q_in, q_out):
    """Get an array, touch one element, ack, drop it; None stops."""
    while True:
        x = q_in.get(timeout=600)
        if x is None:
            return
        q_out.put(float(x[-1]))
        del x


def start(ctx):
    q_in, q_out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=echo, args=(q_in, q_out), daemon=True)
    p.start()
    return p, q_in, q_out


def one_trip(q_in, q_out, x) -> float:
    t0 = time.perf_counter()
    q_in.put(x)
    q_out.get(timeout=600)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20, help="trips per round (copy: 1 per round)")
    args = ap.parse_args()
    n = args.mib * (1 << 20) // 4

    a = shm.empty((n,), np.float32)
    a[:] = 1.0
    plain = np.ones(n, np.float32)
    methods = {"shm": (start(smp.get_context("fork")), a, args.repeats),
               "copy": (start(multiprocessing.get_context("fork")), plain, 1)}
    try:
        import tensor
        zt = tensor.ones(n).share_memory_()
        methods["tensor"] = (start(smp.get_context("fork")), zt, args.repeats)
    except ImportError:
        pass
    if torch is not None:
        t = torch.ones(n, dtype=torch.float32).share_memory_()
        methods["torch"] = (start(tmp.get_context("fork")), t, args.repeats)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for name, ((p, q_in, q_out), x, _) in methods.items():
        one_trip(q_in, q_out, x)  # warm-up: imports, first mappings
    for _ in range(args.rounds):
        for name, ((p, q_in, q_out), x, reps) in methods.items():
            for _ in range(reps):
                times[name].append(one_trip(q_in, q_out, x))
    for (p, q_in, _), _, _ in methods.values():
        q_in.put(None)
        p.join(30)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"pass a {args.mib} MiB float32 array to another process and get an ack "
          f"(median of {args.rounds} interleaved rounds; {os.cpu_count()} CPUs)")
    print(f"{'method':<8}{'trips':>7}{'median':>12}{'min':>12}{'time / shm':>14}")
    for k, v in times.items():
        ratio = med[k] / med["shm"]
        print(f"{k:<8}{len(v):>7}{med[k] * 1e3:>10.3f}ms{min(v) * 1e3:>10.3f}ms{ratio:>13.1f}x")
    goals = [f"shm median < 1 ms: {'yes' if med['shm'] < 1e-3 else 'NO'}",
             f">= 100x faster than copy: {'yes' if med['copy'] / med['shm'] >= 100 else 'NO'}"]
    if "torch" in med:
        goals.append(f"no slower than torch.multiprocessing: "
                     f"{'yes' if med['shm'] <= med['torch'] else 'NO'}")
    print("goals: " + "; ".join(goals))


if __name__ == "__main__":
    main()
