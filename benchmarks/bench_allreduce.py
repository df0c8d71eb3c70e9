"""all_reduce latency and bus bandwidth, 1 KiB .. 64 MiB, 2 ranks on this machine:

  shm   zgrad, both ranks on one host: the shared-memory reduction (Note [Shm reduce])
  tcp   zgrad with the ranks forced onto different "hosts" (ZGRAD_HOST_ID): ring/direct
        over ZeroMQ TCP on loopback (Note [Ring and direct])
  gloo  torch.distributed with the gloo backend (when torch is importable)

busbw = bytes / time * 2(n-1)/n (NCCL's definition). Each backend runs in its own pair of
processes; the backends are interleaved round by round and the table reports, per size, the
median over rounds of each round's median time.

    python3 benchmarks/bench_allreduce.py [--rounds 3] [--min-kib 1] [--max-mib 64]
                                          [--world-size 2] [--kinds shm,tcp,gloo]

tcp-zmq is tcp with the data channel off (every payload through ZeroMQ, Note [Data channel]).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _iters(nbytes: int) -> int:
    return max(5, min(300, int(200e6 / max(nbytes, 1))))


def _worker(kind, rank, ws, port, sizes, q):
    import numpy as np
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ws), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ws))
    if kind == "gloo":
        import torch
        import torch.distributed as tdist
        torch.set_num_threads(1)
        tdist.init_process_group("gloo", rank=rank, world_size=ws)
        make = lambda n: torch.zeros(n // 4, dtype=torch.float32)  # noqa: E731
        allreduce, barrier = tdist.all_reduce, tdist.barrier
        done = tdist.destroy_process_group
    else:
        if kind in ("tcp", "tcp-zmq"):
            os.environ["ZGRAD_HOST_ID"] = f"bench-host-{rank}"
        if kind == "tcp-zmq":
            os.environ["ZGRAD_DATA_CHANNEL"] = "0"
        import runtime.distributed as dist
        dist.init_process_group("zmq", timeout=120)
        make = lambda n: np.zeros(n // 4, np.float32)  # noqa: E731
        allreduce, barrier = dist.all_reduce, dist.barrier
        done = dist.destroy_process_group
    out = {}
    for nbytes in sizes:
        x = make(nbytes)
        for _ in range(2):
            allreduce(x)
        barrier()
        times = []
        for _ in range(_iters(nbytes)):
            t0 = time.perf_counter()
            allreduce(x)
            times.append(time.perf_counter() - t0)
        out[nbytes] = statistics.median(times)
    done()
    if rank == 0:
        q.put(out)


def run_ranks(worker, kind: str, ws: int, *args, who: str = "bench_allreduce"):
    """Run ``worker(kind, rank, ws, port, *args, q)`` in `ws` forked processes and return what
    rank 0 puts on q; workers that fail or take over 600 s raise (also for bench_collectives)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=worker, args=(kind, r, ws, port, *args, q)) for r in range(ws)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                return q.get(timeout=1)
            except Exception:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"{who}: {kind} workers failed (exit codes {dead}) or "
                                       "took over 600 s; see their output above")
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()


def run_backend(kind: str, ws: int, sizes) -> dict:
    return run_ranks(_worker, kind, ws, sizes)


def _fmt_size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-kib", type=int, default=1)
    ap.add_argument("--max-mib", type=int, default=64)
    ap.add_argument("--kinds", default="shm,tcp,gloo",
                    help="comma-separated, from shm, tcp, tcp-zmq, gloo (gloo needs torch)")
    ap.add_argument("--world-size", type=int, default=2)
    args = ap.parse_args()
    sizes = []
    n = args.min_kib << 10
    while n <= args.max_mib << 20:
        sizes.append(n)
        n *= 4
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ("shm", "tcp", "tcp-zmq", "gloo")]
    if bad:
        ap.error(f"--kinds: unknown {bad}; expected some of shm, tcp, tcp-zmq, gloo")
    if "gloo" in kinds:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            print("torch is not installed: no gloo reference", file=sys.stderr)
            kinds.remove("gloo")
    runs = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds:          # interleaved: machine noise hits every backend alike
            runs[k].append(run_backend(k, args.world_size, sizes))
            print(f"round {r + 1}/{args.rounds}: {k} done", file=sys.stderr, flush=True)
    ws = args.world_size
    med = {k: {s: statistics.median(run[s] for run in runs[k]) for s in sizes} for k in kinds}
    bus = lambda s, t: s / t * 2 * (ws - 1) / ws / 1e9  # noqa: E731
    head = f"{'size':>8} |" + "".join(f" {k + ' us':>10} {k + ' GB/s':>10} |" for k in kinds)
    others = [k for k in kinds if k != "gloo"] if "gloo" in kinds else []
    head += "".join(f" {k + '/gloo':>12}" for k in others)
    print(f"all_reduce float32 SUM, {ws} ranks, medians of {args.rounds} interleaved rounds; "
          "busbw in GB/s; ratios are busbw ratios (>1: faster than gloo)")
    print(head)
    print("-" * len(head))
    for s in sizes:
        line = f"{_fmt_size(s):>8} |"
        for k in kinds:
            t = med[k][s]
            line += f" {t * 1e6:>10.1f} {bus(s, t):>10.3f} |"
        line += "".join(f" {med['gloo'][s] / med[k][s]:>12.2f}" for k in others)
        print(line)


if __name__ == "__main__":
    main()
