"""all_gather and reduce_scatter bus bandwidth, zgrad beside gloo in one run (2 ranks, 64 MiB).

  shm   zgrad, both ranks on one host: the shared-memory route (Note [Shm reduce])
  tcp   zgrad with the ranks on different "hosts" (ZGRAD_HOST_ID): ring over TCP loopback
  gloo  torch.distributed with the gloo backend (when torch is importable)

SIZE is the whole tensor: all_gather_into_tensor's output, reduce_scatter_tensor's input
(float32). busbw = SIZE / time * (n-1)/n (NCCL's definition for both). send_recv: ranks 0
and 1 swap SIZE bytes with isend + recv (point-to-point takes the TCP mesh on every layout,
Note [Point-to-point]); its GB/s is SIZE / time, each way. Each backend runs
in its own pair of processes; backends are interleaved round by round and the table reports
the median over rounds of each round's median time.

    python3 benchmarks/bench_collectives.py [--rounds 3] [--mib 64] [--world-size 2]
                                            [--kinds shm,tcp,gloo] [--iters 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_allreduce import run_ranks  # noqa: E402

COLLECTIVES = ("all_gather", "reduce_scatter", "send_recv")


def _worker(kind, rank, ws, port, nbytes, iters, q):
    import numpy as np
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ws), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ws))
    n = nbytes // 4
    if kind == "gloo":
        import torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=ws)
        make = lambda k: torch.ones(k, dtype=torch.float32)  # noqa: E731
    else:
        if kind == "tcp":
            os.environ["ZGRAD_HOST_ID"] = f"bench-host-{rank}"
        import runtime.distributed as dist
        dist.init_process_group("zmq", timeout=120)
        make = lambda k: np.ones(k, np.float32)  # noqa: E731
    whole, part, back = make(n), make(n // ws), make(n)

    def send_recv():           # ranks 0 and 1 swap SIZE bytes (isend + recv, as a ring step)
        if rank < 2:
            w = dist.isend(whole, 1 - rank)
            dist.recv(back, 1 - rank)
            w.wait()
    calls = {"all_gather": lambda: dist.all_gather_into_tensor(whole, part),
             "reduce_scatter": lambda: dist.reduce_scatter_tensor(part, whole),
             "send_recv": send_recv}
    out = {}
    for name in COLLECTIVES:
        for _ in range(2):
            calls[name]()
        dist.barrier()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            calls[name]()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    dist.destroy_process_group()
    if rank == 0:
        q.put(out)


def run_backend(kind: str, ws: int, nbytes: int, iters: int) -> dict:
    return run_ranks(_worker, kind, ws, nbytes, iters, who="bench_collectives")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--kinds", default="shm,tcp,gloo", help="comma-separated: shm, tcp, gloo")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in ("shm", "tcp", "gloo")]
    if bad:
        ap.error(f"--kinds: unknown {bad}; expected some of shm, tcp, gloo")
    if "gloo" in kinds:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            print("torch is not installed: no gloo reference", file=sys.stderr)
            kinds.remove("gloo")
    ws, nbytes = args.world_size, args.mib << 20
    runs = {k: [] for k in kinds}
    for r in range(args.rounds):
        for k in kinds:          # interleaved: machine noise hits every backend alike
            runs[k].append(run_backend(k, ws, nbytes, args.iters))
            print(f"round {r + 1}/{args.rounds}: {k} done", file=sys.stderr, flush=True)
    bus = lambda t: nbytes / t * (ws - 1) / ws / 1e9  # noqa: E731
    print(f"{args.mib} MiB float32, {ws} ranks, medians of {args.rounds} interleaved rounds x "
          f"{args.iters} calls; busbw in GB/s; ratio = busbw / gloo's (>1: faster)")
    head = f"{'collective':>15} |" + "".join(f" {k + ' ms':>9} {k + ' GB/s':>10} |" for k in kinds)
    others = [k for k in kinds if k != "gloo"] if "gloo" in kinds else []
    head += "".join(f" {k + '/gloo':>9}" for k in others)
    print(head)
    print("-" * len(head))
    for name in COLLECTIVES:
        med = {k: statistics.median(run[name] for run in runs[k]) for k in kinds}
        rate = (lambda t: nbytes / t / 1e9) if name == "send_recv" else bus
        line = f"{name:>15} |" + "".join(f" {med[k] * 1e3:>9.2f} {rate(med[k]):>10.3f} |"
                                         for k in kinds)
        line += "".join(f" {med['gloo'] / med[k]:>9.2f}" for k in others)
        print(line)


if __name__ == "__main__":
    main()
