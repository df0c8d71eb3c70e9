"""Data-parallel training throughput (samples/s): MLP 784-512-512-10, batch 128 per rank,
float32, SGD, one BLAS thread per rank. In one run, interleaved round by round:

  zgrad-1       DistributedDataParallel, 1 rank
  zgrad-2       DistributedDataParallel, 2 ranks (shared-memory all-reduce on this host)
  zgrad-2-view  the same with gradient_as_bucket_view=True
  indep-2       two independent zgrad processes training the same model at once, no
                communication: the hardware's limit for 2-rank data parallelism here
  torch-1/2     torch.nn.parallel.DistributedDataParallel over gloo (when torch is installed)

Each configuration runs in fresh processes: warm-up steps, a barrier, then timed steps; its
throughput is all ranks' samples over the slowest rank's time; its efficiency the samples per
CPU-second of all its processes. The table gives medians over rounds and the ratios to
indep-2 and to torch-2.

    python3 benchmarks/bench_ddp.py [--rounds 3] [--steps 60] [--configs zgrad-2,indep-2,...]
                                    [--keep-memory]
"""
from __future__ import annotations

import os

# one BLAS thread per rank: set before numpy is imported here or in the (forked) children
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = (784, 512, 512, 10)
BATCH = 128
WARMUP = 8
CONFIGS = {   # name: (framework, world size, communicate, gradient_as_bucket_view)
    "zgrad-1": ("zgrad", 1, True, False),
    "zgrad-2": ("zgrad", 2, True, False),
    "zgrad-2-view": ("zgrad", 2, True, True),
    "indep-2": ("zgrad", 2, False, False),
    "torch-1": ("torch", 1, True, False),
    "torch-2": ("torch", 2, True, False),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zgrad_step(ws, comm, as_view, rank):
    import numpy as np
    import tensor
    import tensor.nn as nn
    import tensor.nn.functional as F
    tensor.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(SIZES) - 2 else [])
    model = nn.Sequential(*layers)
    if comm:
        import runtime.distributed as dist
        dist.init_process_group(timeout=120)
        model = dist.DistributedDataParallel(model, gradient_as_bucket_view=as_view)
    opt = tensor.optim.SGD(model.parameters(), lr=0.01)
    rng = np.random.default_rng(rank)
    x = tensor.tensor(rng.normal(size=(BATCH, SIZES[0])).astype(np.float32))
    y = tensor.tensor(rng.integers(0, SIZES[-1], size=BATCH))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def done():
        if comm:
            dist.destroy_process_group()
    return step, done


def _torch_step(ws, rank):
    import torch
    import torch.distributed as tdist
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tdist.init_process_group("gloo", rank=rank, world_size=ws)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(BATCH, SIZES[0], generator=g)
    y = torch.randint(0, SIZES[-1], (BATCH,), generator=g)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step, tdist.destroy_process_group


def _keep_freed_memory():
    """glibc hands large freed arrays back to the OS, so the next step's gradients and
    temporaries page-fault again (~750 faults a step here); keep them (every configuration
    alike, torch's too). See --keep-memory."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 << 20)    # M_MMAP_THRESHOLD: arrays < 64 MiB come from the heap
    libc.mallopt(-1, 256 << 20)   # M_TRIM_THRESHOLD: keep up to 256 MiB free in the heap


def _worker(config, rank, port, steps, barrier, q, keep_memory):
    if keep_memory:
        _keep_freed_memory()
    fw, ws, comm, as_view = CONFIGS[config]
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ws), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ws))
    step, done = _torch_step(ws, rank) if fw == "torch" else _zgrad_step(ws, comm, as_view, rank)
    for _ in range(WARMUP):
        step()
    barrier.wait(120)     # every rank (communicating or not) starts timing together
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    q.put((rank, time.perf_counter() - t0, time.process_time() - c0))
    barrier.wait(120)
    done()


def run_config(config: str, steps: int, keep_memory: bool = False) -> tuple:
    """(samples per second, samples per CPU second) of `config`: all ranks' samples over the
    slowest rank's wall time, and over the CPU time of all ranks' processes (every thread)."""
    ws = CONFIGS[config][1]
    ctx = mp.get_context("fork")
    q, barrier, port = ctx.Queue(), ctx.Barrier(ws), _free_port()
    procs = [ctx.Process(target=_worker, args=(config, r, port, steps, barrier, q, keep_memory))
             for r in range(ws)]
    for p in procs:
        p.start()
    times = []
    try:
        deadline = time.monotonic() + 600
        while len(times) < ws:
            try:
                times.append(q.get(timeout=1)[1:])
            except Exception:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"bench_ddp: {config} workers failed (exit codes {dead}) "
                                       "or took over 600 s; see their output above")
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    samples = ws * BATCH * steps
    return samples / max(t[0] for t in times), samples / sum(t[1] for t in times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per configuration")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--keep-memory", action="store_true",
                    help="mallopt in every worker so freed arrays stay mapped (no page faults "
                         "from re-allocating gradients and temporaries each step)")
    args = ap.parse_args()
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {bad}; expected some of {', '.join(CONFIGS)}")
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        print("torch is not installed: no PyTorch DDP reference", file=sys.stderr)
        configs = [c for c in configs if CONFIGS[c][0] != "torch"]
    runs = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs:     # interleaved: machine noise hits every configuration alike
            runs[c].append(run_config(c, args.steps, args.keep_memory))
            print(f"round {r + 1}/{args.rounds}: {c} {runs[c][-1][0]:.0f} samples/s, "
                  f"{runs[c][-1][1]:.0f} samples/CPU-s", file=sys.stderr, flush=True)
    med = {c: statistics.median(v[0] for v in runs[c]) for c in runs}
    cpu = {c: statistics.median(v[1] for v in runs[c]) for c in runs}
    best = {c: max(v[0] for v in runs[c]) for c in runs}
    print(f"MLP 784-512-512-10, batch {BATCH}/rank, 1 BLAS thread/rank, {args.steps} timed "
          f"steps, median of {args.rounds} interleaved rounds ({os.cpu_count()} CPUs"
          f"{', --keep-memory' if args.keep_memory else ''})")
    head = (f"{'config':>13} {'samples/s':>10} {'/indep-2':>9} {'/torch-2':>9} |"
            f" {'best':>7} {'/indep-2':>9} |"
            f" {'samples/CPU-s':>13} {'/indep-2':>9} {'/torch-2':>9}")
    print(head)
    print("-" * len(head))
    for c in configs:
        def ratio(d, ref):
            return f"{d[c] / d[ref]:>9.2f}" if ref in d else f"{'-':>9}"
        print(f"{c:>13} {med[c]:>10.0f} {ratio(med, 'indep-2')} {ratio(med, 'torch-2')} |"
              f" {best[c]:>7.0f} {ratio(best, 'indep-2')} |"
              f" {cpu[c]:>13.0f} {ratio(cpu, 'indep-2')} {ratio(cpu, 'torch-2')}")
    print("samples/s: wall-clock throughput, median (what the goal is about; noisy on a shared "
          "machine); best: the best round.\nsamples/CPU-s: samples per CPU-second of all the ranks' threads (work "
          "per sample, robust to other load; waiting that spins counts as work).")


if __name__ == "__main__":
    main()
