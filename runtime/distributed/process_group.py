"""ProcessGroup (the zmq backend): its links, its communication thread, and the collectives.

Note [Communication thread]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
Each group owns one thread that runs queued collectives strictly in launch order; only the
thread running a collective touches the group's sockets and segment. Launching is a lock,
a sequence number and a deque append, so DDP can launch from autograd hooks. A synchronous
collective on an idle group runs inline in the caller's thread (saving two thread switches
on small messages); the lock hands sockets over with a full memory barrier, as ZeroMQ asks.
The first failure (desync, timeout, lost peer) breaks the group: it is raised by the failing
Work and by every later launch, as NCCL does, since the ranks can no longer agree on state.
CuPy arrays are staged through host memory inside the communication thread.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

from tensor import backend

from . import tcp_algorithms as algo
from .transport import AbortedError, PeerMesh


class ReduceOp:
    """Reduction operations, as ``torch.distributed.ReduceOp``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return f"ReduceOp.{self.name}"

    def __eq__(self, other):
        return isinstance(other, ReduceOp) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


for _name in ("SUM", "AVG", "MAX", "MIN", "PRODUCT"):
    setattr(ReduceOp, _name, ReduceOp(_name))

_UFUNC = {"SUM": np.add, "AVG": np.add, "MAX": np.maximum, "MIN": np.minimum,
          "PRODUCT": np.multiply}


def check_op(op, what: str) -> str:
    name = op.name if isinstance(op, ReduceOp) else op
    if name not in _UFUNC:
        raise ValueError(f"{what}: expected a ReduceOp (SUM, AVG, MAX, MIN, PRODUCT), got {op!r}")
    return name


class Work:
    """The handle of a launched collective (``async_op=True``), as PyTorch's Work."""

    def __init__(self, what: str):
        self.what = what
        self._done = threading.Event()
        self._exc: BaseException | None = None
        self._result = None

    def _finish(self, exc=None, result=None):
        self._exc, self._result = exc, result
        self._done.set()

    def is_completed(self) -> bool:
        """True once the collective finished (successfully or not)."""
        return self._done.is_set()

    def is_success(self) -> bool:
        return self._done.is_set() and self._exc is None

    def exception(self):
        return self._exc

    def wait(self, timeout=None) -> bool:
        """Block until done; re-raise its error. `timeout` (seconds or timedelta) bounds the wait."""
        if hasattr(timeout, "total_seconds"):
            timeout = timeout.total_seconds()
        if not self._done.wait(timeout):
            raise TimeoutError(f"Work.wait: {self.what} did not finish within {timeout}s")
        if self._exc is not None:
            raise self._exc
        return True

    def result(self):
        self.wait()
        return self._result


class _Item:
    __slots__ = ("call", "fn", "work")

    def __init__(self, call, fn, work):
        self.call, self.fn, self.work = call, fn, work


class Staged:
    """A flat, C-contiguous host view of an array (numpy or CuPy); write_back() if copied."""

    def __init__(self, a, copy: bool = False):
        self.a = a
        direct = isinstance(a, np.ndarray) and a.flags.c_contiguous and not copy
        self.copied = not direct
        self.flat = a.reshape(-1) if direct else \
            np.array(backend.to_numpy(a), order="C", copy=True).reshape(-1)

    def write_back(self):
        if self.copied:
            host = self.flat.reshape(self.a.shape)
            self.a[...] = host if isinstance(self.a, np.ndarray) else \
                backend.to_device(host, backend.device_of(self.a))


class ProcessGroup:
    """A group of ranks with its mesh, its optional shared segment and its thread."""

    def __init__(self, gid: int, ranks: list[int], global_rank: int, timeout_s: float):
        self.gid, self.ranks, self.timeout_s = gid, list(ranks), timeout_s
        self.group_rank = self.ranks.index(global_rank)
        self.mesh: PeerMesh | None = None
        self.leader_mesh: PeerMesh | None = None   # hierarchical all_reduce, one per host
        self.local = None                          # ShmComm among this host's members
        self.is_leader = True
        self.single_host = True
        self.hierarchical = False                  # shm per host, then leaders over TCP
        self.nccl = None
        self._lock = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._busy = False
        self._seq = 0
        self._broken: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=f"zgrad-comm-g{gid}",
                                        daemon=True)
        self._thread.start()

    def rank(self) -> int:
        return self.group_rank

    def size(self) -> int:
        return len(self.ranks)

    def __repr__(self):
        return f"ProcessGroup(id={self.gid}, ranks={self.ranks}, backend=zmq)"

    # -- execution (see Note [Communication thread]) ---------------------------------------

    def submit(self, name, op, dtype, shape, root, fn, async_op: bool):
        """Launch fn(call, deadline) in order; returns a Work (async) or waits for it."""
        work = Work(name)
        with self._lock:
            if self._broken is not None:
                raise RuntimeError(f"{name}: this process group is broken by an earlier error "
                                   f"and cannot run collectives: {self._broken}") from self._broken
            if self._stop:
                raise RuntimeError(f"{name}: the process group was destroyed")
            call = [self._seq, name, op, None if dtype is None else np.dtype(dtype).name,
                    None if shape is None else [int(s) for s in shape], root]
            self._seq += 1
            item = _Item(call, fn, work)
            inline = not async_op and not self._busy and not self._queue
            if inline:
                self._busy = True
            else:
                self._queue.append(item)
                self._lock.notify_all()
        if inline:
            self._run_then_release(item)
        if async_op:
            return work
        work.wait()
        return None

    def _loop(self):
        while True:
            with self._lock:
                while not self._stop and (self._busy or not self._queue):
                    self._lock.wait(0.5)
                if self._stop and not self._queue:
                    return
                item = self._queue.popleft()
                self._busy = True
            self._run_then_release(item)

    def _run_then_release(self, item: _Item):
        """Run a claimed item, then let the next one (inline or queued) go."""
        try:
            self._run(item)
        finally:
            with self._lock:
                self._busy = False
                self._lock.notify_all()

    def _run(self, item: _Item):
        if self._broken is not None:
            item.work._finish(RuntimeError(f"{item.call[1]}: this process group is broken by an "
                                           f"earlier error: {self._broken}"))
            return
        deadline = time.monotonic() + self.timeout_s
        try:
            result = item.fn(item.call, deadline)
        except BaseException as e:  # noqa: BLE001 - every failure must reach the waiter
            if not isinstance(e, AbortedError):
                msg = str(e)
                for mesh in (self.mesh, self.leader_mesh):
                    if mesh is not None:
                        mesh.abort(msg)
                if self.local is not None:
                    self.local.abort(msg)
            self._broken = e
            item.work._finish(e)
            return
        item.work._finish(None, result)

    def shutdown(self, timeout_s: float = 5.0):
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout_s)
        for mesh in (self.mesh, self.leader_mesh):
            if mesh is not None:
                mesh.close()
        if self.local is not None:
            self.local.close()

    # -- algorithms on flat host arrays ----------------------------------------------------

    def all_reduce_flat(self, call, x: np.ndarray, op: str, deadline: float):
        ufunc = _UFUNC[op]
        if self.size() > 1:
            if self.local is not None and self.single_host:
                self.local.all_reduce(call, x, ufunc, deadline)
            elif self.hierarchical:
                if self.local is not None:
                    self.local.all_reduce(call, x, ufunc, deadline)
                if self.is_leader:
                    algo.all_reduce(self.leader_mesh, call, x, ufunc, deadline)
                if self.local is not None:
                    self.local.broadcast(call, x, 0, deadline)
            else:
                algo.all_reduce(self.mesh, call, x, ufunc, deadline)
        if op == "AVG":
            np.divide(x, self.size(), out=x)

    def barrier_flat(self, call, deadline: float):
        if self.local is not None and self.single_host:
            self.local.barrier(call, deadline, desc=True)
        elif self.size() > 1:
            algo.barrier(self.mesh, call, deadline)

    def broadcast_flat(self, call, x: np.ndarray, root: int, deadline: float):
        if self.local is not None and self.single_host:
            self.local.broadcast(call, x, root, deadline)
        else:
            algo.broadcast(self.mesh, call, x, root, deadline)
