"""Soak: does anything grow over minutes of work? File descriptors, RSS, /dev/shm entries.

Three loads run side by side for `--minutes`, each in its own processes:

  collectives  2 ranks (zmq backend, shared memory on this host) doing small all_reduce,
               broadcast and all_gather calls, `--collectives` in all
  loader       `--epochs` epochs of a DataLoader with 2 workers (a fresh iterator each epoch)
  shm          `--tensors-per-s` shared tensors a second, each sent to a child through a
               shm.multiprocessing Queue and dropped on both sides

Each process samples its fds (/proc/self/fd), RSS (/proc/self/statm) at its start, after a
warm-up, and at its end; the parent samples /dev/shm. The goal is flat: what the warm-up
reached is what the end holds.

    python3 benchmarks/soak.py [--minutes 2] [--collectives 10000] [--epochs 100]
                               [--tensors-per-s 1000]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sample() -> dict:
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"fds": len(os.listdir("/proc/self/fd")),
            "rss_mb": round(rss_pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20, 1)}


def _shm_entries() -> int:
    return len([n for n in os.listdir("/dev/shm") if n.startswith("zgrad")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank, port, n_calls, seconds, q):
    import numpy as np
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    import runtime.distributed as dist
    dist.init_process_group("zmq", timeout=120)
    x, out = np.ones(256, np.float32), [np.empty(256, np.float32) for _ in range(2)]
    start, samples, t0 = _sample(), {}, time.monotonic()
    for i in range(n_calls):
        k = i % 3
        if k == 0:
            dist.all_reduce(x)
            x[:] = 1
        elif k == 1:
            dist.broadcast(x, src=i % 2)
        else:
            dist.all_gather(out, x)
        if i == n_calls // 10:
            samples["warm"] = _sample()
        if seconds and i % 100 == 99:   # spread the calls over the soak's duration
            ahead = t0 + seconds * (i + 1) / n_calls - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    end = _sample()   # before teardown closes the group's sockets
    dist.barrier()
    dist.destroy_process_group()
    q.put((f"collectives rank {rank}", start, samples["warm"], end, n_calls))


def _loader(epochs, seconds, q):
    import numpy as np
    from runtime.data import DataLoader, TensorDataset
    import tensor
    ds = TensorDataset(tensor.tensor(np.random.default_rng(0).normal(size=(512, 32))
                                     .astype(np.float32)), tensor.arange(512))
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2)
    start, warm, t0 = _sample(), None, time.monotonic()
    for e in range(epochs):
        for _ in loader:
            pass
        if e == epochs // 10:
            warm = _sample()
        ahead = t0 + seconds * (e + 1) / epochs - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    q.put(("loader", start, warm, _sample(), epochs))


def _receiver(tq):
    while tq.get() is not None:
        pass


def _shm_tensors(per_s, seconds, q):
    import shm.multiprocessing as smp
    import tensor
    ctx = smp.get_context("fork")
    tq = ctx.Queue()
    child = ctx.Process(target=_receiver, args=(tq,))
    child.start()
    start, warm, t0, n = _sample(), None, time.monotonic(), 0
    total = int(per_s * seconds)
    while n < total:
        t = tensor.zeros(1024).share_memory_()
        tq.put(t)
        del t
        n += 1
        if n == total // 10:
            warm = _sample()
        ahead = t0 + n / per_s - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    tq.put(None)
    child.join(60)
    q.put(("shm tensors", start, warm, _sample(), n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--collectives", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--tensors-per-s", type=float, default=1000)
    args = ap.parse_args()
    seconds = args.minutes * 60
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    shm_start = _shm_entries()
    port = _free_port()
    procs = [ctx.Process(target=_collectives, args=(r, port, args.collectives, seconds, q))
             for r in range(2)]
    procs.append(ctx.Process(target=_loader, args=(args.epochs, seconds, q)))
    procs.append(ctx.Process(target=_shm_tensors, args=(args.tensors_per_s, seconds, q)))
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results, shm_peak = [], shm_start
    while len(results) < len(procs):
        try:
            results.append(q.get(timeout=1.0))
        except Exception:
            pass
        shm_peak = max(shm_peak, _shm_entries())
        if time.monotonic() - t0 > seconds * 3 + 120:
            raise SystemExit("soak: a load did not finish in time")
    for p in procs:
        p.join(60)
    time.sleep(1.0)   # the shm manager unlinks what the last holders let go
    print(f"soak: {time.monotonic() - t0:.0f} s, every process sampled at start / after 10% "
          "(warm) / end")
    print(f"{'load':<22} {'count':>7} {'fds start/warm/end':>20} {'RSS MB start/warm/end':>26}")
    for name, s, w, e, n in sorted(results):
        fds = f"{s['fds']}/{w['fds']}/{e['fds']}"
        rss = f"{s['rss_mb']}/{w['rss_mb']}/{e['rss_mb']}"
        print(f"{name:<22} {n:>7} {fds:>20} {rss:>26}")
    print(f"/dev/shm zgrad entries: start {shm_start}, peak {shm_peak}, end {_shm_entries()}")
    codes = [p.exitcode for p in procs]
    if any(codes):
        raise SystemExit(f"soak: exit codes {codes}")


if __name__ == "__main__":
    main()
