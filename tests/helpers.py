"""Shared test helpers: gradient checks, real multi-process runs, ports, /dev/shm leak checks,
log capture, loading the example scripts.

Every multi-process helper has a deadline: a test that goes wrong fails with the child's
traceback, it never hangs CI.
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing as mp
import os
import signal
import socket
import time
import traceback

import numpy as np
import pytest

try:
    import cupy  # noqa: F401
    _HAS_CUPY = True
    try:
        _HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        _HAS_GPU = False
except Exception:
    _HAS_CUPY = _HAS_GPU = False

requires_cupy = pytest.mark.skipif(not (_HAS_CUPY and _HAS_GPU),
                                   reason="needs CuPy and a CUDA GPU (pip install 'zgrad[gpu]')")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LogLines(logging.Handler):
    """A logging handler that keeps every record's message in .lines."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def grab_log(name: str = "runtime.distributed") -> LogLines:
    """Attach a LogLines handler to the logger `name` and return it."""
    grab = LogLines()
    logging.getLogger(name).addHandler(grab)
    return grab


def load_example(name: str, folder: str = "examples"):
    """Import <folder>/<name>.py as a module (examples/ and benchmarks/ are not packages)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(_ROOT, folder,
                                                                     name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shm_listing() -> set[str]:
    """Names in /dev/shm that belong to zgrad (or to nothing else the tests care about)."""
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("zgrad")}
    except FileNotFoundError:
        return set()


def assert_no_new_shm(before: set[str], timeout_s: float = 5.0):
    """Wait up to timeout_s for zgrad segments created since `before` to disappear."""
    deadline = time.monotonic() + timeout_s
    while True:
        new = shm_listing() - before
        if not new:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"/dev/shm segments leaked: {sorted(new)}")
        time.sleep(0.05)


def check_grad(fn, *inputs, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-7,
               argnums=None):
    """Compare autograd's gradient of scalar fn(*tensors) with central differences, in float64.

    `inputs` are numpy arrays (floats become float64 tensors that require grad; integer
    arrays are passed as non-differentiable tensors). Returns the analytic gradients.
    """
    import tensor

    tensors = []
    for x in inputs:
        x = np.asarray(x)
        if x.dtype.kind == "f":
            tensors.append(tensor.tensor(x.astype(np.float64), requires_grad=True))
        else:
            tensors.append(tensor.tensor(x))
    diff = [i for i, t in enumerate(tensors) if t.requires_grad]
    if argnums is not None:
        diff = [i for i in diff if i in argnums]
    out = fn(*tensors)
    assert out.numel() == 1, f"check_grad: fn must return a scalar, got shape {tuple(out.shape)}"
    grads = tensor.autograd.grad(out, [tensors[i] for i in diff], allow_unused=True)
    results = []
    for i, g in zip(diff, grads):
        x = tensors[i].array
        g = np.zeros_like(x) if g is None else g.numpy()
        num = np.zeros_like(x)
        flat = x.reshape(-1)
        nflat = num.reshape(-1)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + eps
            with tensor.no_grad():
                fp = float(fn(*tensors).item())
            flat[k] = old - eps
            with tensor.no_grad():
                fm = float(fn(*tensors).item())
            flat[k] = old
            nflat[k] = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=rtol, atol=atol,
                                   err_msg=f"check_grad: input {i} gradient mismatch")
        results.append(g)
    return results


# ---------------------------------------------------------------------------------------------
# real processes


def _rank_main(fn, rank, world_size, env, args, conn):
    os.environ.update({k: str(v) for k, v in env.items()})
    if os.environ.get("ZGRAD_FAKE_GPU") == "1":  # pytest --fake-gpu (Note [Fake GPU runs])
        from tensor import backend
        from tests import fakecuda
        if backend.cupy is not fakecuda.cupy:  # a spawned rank; a forked one has it already
            fakecuda.install(fused=True)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(world_size))
    try:
        result = fn(rank, world_size, *args)
        conn.send(("ok", result))
    except BaseException:
        conn.send(("err", traceback.format_exc()))
    finally:
        conn.close()


def spawn_ranks(fn, world_size: int, *args, timeout_s: float = 30.0, env: dict | None = None,
                start_method: str = "fork", check_shm: bool = True):
    """Run fn(rank, world_size, *args) in `world_size` real processes and return their results.

    Sets RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE and, unless `env` gives them,
    MASTER_ADDR=127.0.0.1 and a free MASTER_PORT. Joins every rank with a deadline; on the
    first failure the rest are terminated and the child's traceback is raised here. When
    `check_shm`, fails if the run left zgrad segments in /dev/shm.
    """
    ctx = mp.get_context(start_method)
    env = dict(env or {})
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(free_port()))
    before = shm_listing() if check_shm else None
    procs, conns = [], []
    for rank in range(world_size):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_rank_main, args=(fn, rank, world_size, env, args, child),
                        name=f"rank{rank}", daemon=True)
        p.start()
        child.close()
        procs.append(p)
        conns.append(parent)
    results: list = [None] * world_size
    done = [False] * world_size
    deadline = time.monotonic() + timeout_s
    failure = None
    try:
        while not all(done) and failure is None:
            if time.monotonic() > deadline:
                missing = [r for r in range(world_size) if not done[r]]
                failure = f"spawn_ranks: ranks {missing} did not finish within {timeout_s:.0f}s"
                break
            for rank, (p, c) in enumerate(zip(procs, conns)):
                if done[rank]:
                    continue
                if c.poll(0.02):
                    try:
                        status, value = c.recv()
                    except EOFError:
                        status, value = "err", f"rank {rank} closed its pipe without a result"
                    done[rank] = True
                    if status == "ok":
                        results[rank] = value
                    else:
                        failure = f"rank {rank} failed:\n{value}"
                        break
                elif not p.is_alive() and not c.poll(0):
                    done[rank] = True
                    failure = f"rank {rank} (pid {p.pid}) died with exit code {p.exitcode}"
                    break
    finally:
        for p in procs:
            p.join(timeout=0 if failure else 5)
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=5)
        for c in conns:
            c.close()
    if failure:
        raise AssertionError(failure)
    if check_shm:
        assert_no_new_shm(before)
    return results

