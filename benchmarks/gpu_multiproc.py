"""Processes sharing one GPU (issue 12's multi-process checks); each check prints one line.

  ipc   a CUDA zgrad Tensor and a view of it through shm.multiprocessing's queue (CUDA IPC): the
        child adds 1 in place and writes the view, the parent sees both in its own memory, then
        the child sees the parent's write; and the put -> get time of a 256 MiB tensor (a
        handle crosses, not the data)
  zmq   2 ranks, backend "zmq": all_reduce (sum, avg) and broadcast on CUDA tensors (staged
        through host memory), and the time of a 64 MiB all_reduce
  nccl  world size 1, backend "nccl": all_reduce, broadcast, all_gather_into_tensor on CUDA
        tensors, and the time of a 64 MiB all_reduce

    python benchmarks/gpu_multiproc.py {ipc,zmq,nccl} [--json PATH] [--device cpu]

--device cpu runs the same logic on shared-memory CPU tensors (nccl: n/a), to check it without a
GPU. Exit status 0 when the check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shm.multiprocessing as mp  # noqa: E402
import tensor  # noqa: E402

MIB = 2 ** 20


def _sync(device):
    if device == "cuda":
        tensor.cuda.synchronize()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zeros(shape, device):
    t = tensor.zeros(shape, device=device)
    return t if device == "cuda" else t.share_memory_()


# --- ipc ----------------------------------------------------------------------------------------

def _ipc_child(q, r, device):
    x, view = q.get(timeout=60)
    assert x.device.type == device, f"child got a tensor on {x.device}, expected {device}"
    x.add_(1)          # in place, in the parent's memory
    view.fill_(-5)     # a view at an offset inside the block
    _sync(device)
    r.put((float(x.sum()), tuple(x.shape), tuple(view.shape)))
    assert q.get(timeout=60) == "parent wrote"
    r.put(float(x[0, 0]))
    big = q.get(timeout=60)
    r.put(("got", tuple(big.shape)))
    del x, view, big


def check_ipc(device):
    ctx = mp.get_context("spawn")
    q, r = ctx.Queue(), ctx.Queue()
    x = _zeros((4, 8), device)
    p = ctx.Process(target=_ipc_child, args=(q, r, device))
    p.start()
    try:
        q.put((x, x[2:, 3:5]))
        total, shape, vshape = r.get(timeout=120)
        assert (total, shape, vshape) == (32 - 4 - 4 * 5, (4, 8), (2, 2)), (total, shape, vshape)
        host = x.cpu().numpy()
        assert (host[2:, 3:5] == -5).all() and host[0, 0] == 1.0, host
        with tensor.no_grad():
            x[0, 0] = 42
        _sync(device)
        q.put("parent wrote")
        seen = r.get(timeout=60)
        assert seen == 42.0, f"the child read {seen} after the parent wrote 42"
        big = _zeros((256 * MIB // 4,), device)
        _sync(device)
        t0 = time.perf_counter()
        q.put(big)
        assert r.get(timeout=60) == ("got", (256 * MIB // 4,))
        put_get_ms = (time.perf_counter() - t0) * 1e3
        p.join(60)
        assert p.exitcode == 0, f"the child exited with {p.exitcode}"
    finally:
        if p.is_alive():
            p.terminate()
    return {"detail": "child's in-place add and view write seen by the parent, parent's write "
                      "seen by the child", "put_get_256MiB_ms": put_get_ms}


# --- collectives --------------------------------------------------------------------------------

def _allreduce_ms(dist, device, n_bytes, repeats=5):
    x = tensor.ones(n_bytes // 4, device=device)
    for _ in range(2):
        dist.all_reduce(x)
    times = []
    for _ in range(repeats):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        dist.all_reduce(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _collectives(dist, rank, ws, device):
    x = tensor.arange(10_007, dtype=tensor.float32, device=device) * (rank + 1)
    dist.all_reduce(x)
    assert x.device.type == device, f"all_reduce moved the tensor to {x.device}"
    want = np.arange(10_007, dtype=np.float32) * sum(range(1, ws + 1))
    np.testing.assert_allclose(x.cpu().numpy(), want, rtol=1e-6)
    dist.all_reduce(x, op=dist.ReduceOp.AVG)  # every rank holds `want`: their mean is `want`
    np.testing.assert_allclose(x.cpu().numpy(), want, rtol=1e-6)
    b = tensor.full((3, 5), float(rank), device=device)
    dist.broadcast(b, src=ws - 1)
    assert float(b.sum()) == 15.0 * (ws - 1)
    out = tensor.empty(4 * ws, device=device)
    dist.all_gather_into_tensor(out, tensor.full((4,), float(rank), device=device))
    assert out.cpu().numpy().tolist() == [float(r) for r in range(ws) for _ in range(4)]
    return _allreduce_ms(dist, device, 64 * MIB)


def _zmq_rank(rank, q, port, device):
    import runtime.distributed as dist
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("zmq", timeout=60)
    try:
        ms = _collectives(dist, rank, 2, device)
        if rank == 0:
            q.put(ms)
    finally:
        dist.destroy_process_group()


def check_zmq(device):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    mp.spawn(_zmq_rank, args=(q, _free_port(), device), nprocs=2, timeout_s=150)
    return {"detail": "2 ranks: all_reduce sum/avg, broadcast, all_gather_into_tensor on "
                      f"{device} tensors", "allreduce_64MiB_ms": q.get(timeout=10)}


def check_nccl(device):
    if device != "cuda":
        return {"detail": "n/a (cpu)"}
    import runtime.distributed as dist
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", timeout=60)
    try:
        assert dist.get_backend() == "nccl", dist.get_backend()
        ms = _collectives(dist, 0, 1, device)
    finally:
        dist.destroy_process_group()
    return {"detail": "world size 1: all_reduce sum/avg, broadcast, all_gather_into_tensor",
            "allreduce_64MiB_ms": ms}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=["ipc", "zmq", "nccl"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--json", help="append the result as one JSON line here")
    args = ap.parse_args()
    if args.device == "cuda" and not tensor.cuda.is_available():
        raise SystemExit("gpu_multiproc: --device cuda needs CuPy and a GPU; use --device cpu "
                         "to check the logic without one.")
    t0 = time.perf_counter()
    res = {"check": args.check, "device": args.device}
    try:
        res.update(globals()[f"check_{args.check}"](args.device), ok=True)
    except BaseException as e:
        res.update(ok=False, error=f"{type(e).__name__}: {str(e).strip()[:2000]}")
        raise
    finally:
        res["seconds"] = time.perf_counter() - t0
        nums = ", ".join(f"{k} {v:.2f}" for k, v in res.items() if isinstance(v, float))
        what = res.get("detail") or (res.get("error", "").splitlines() or [""])[-1]
        print(f"{args.check}: {'ok' if res['ok'] else 'FAILED'} ({nums}) {what}", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
