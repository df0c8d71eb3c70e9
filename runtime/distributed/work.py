"""ReduceOp, Work (and its Future), host staging, and the communication thread that runs a
group's calls.

Note [Communication thread]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
Each group owns one thread that runs queued calls strictly in launch order; only the thread
running a call touches the group's sockets and segment. Launching is a lock, a sequence
number (the ``Call`` is built there, so its seq is the launch order) and a deque append, so
DDP can launch from autograd hooks. A synchronous call on an idle group runs inline in the
caller's thread (saving two thread switches on small messages); the lock hands sockets over
with a full memory barrier, as ZeroMQ asks. A call may *post* work that finishes later
(isend, irecv): between calls, and while idle with posted work, the thread drives it with
``progress`` in short non-blocking steps, so a posted receive never stops later calls.
The first failure (desync, timeout, lost peer) breaks the group: it is raised by the failing
Work and by every later launch, as NCCL does, since the ranks can no longer agree on state.
"""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

from tensor import backend
from tensor.futures import Future

from . import _cuda

from .call import Call
from .transport import AbortedError


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

UFUNC = {"SUM": np.add, "AVG": np.add, "MAX": np.maximum, "MIN": np.minimum,
         "PRODUCT": np.multiply}


def check_op(op, what: str) -> str:
    name = op.name if isinstance(op, ReduceOp) else op
    if name not in UFUNC:
        raise ValueError(f"{what}: expected a ReduceOp (SUM, AVG, MAX, MIN, PRODUCT), got {op!r}")
    return name


class Work:
    """The handle of a launched call (``async_op=True``, isend, irecv), as PyTorch's Work.

    A call on CuPy arrays through the host routes finishes in two parts: the host part (the
    communication thread) and the copy of the result back to the GPU, queued on a side
    stream; ``_after`` is that copy's (event, device). wait() waits for the host part, then
    makes the caller's current stream wait on the event (Note [GPU staging] in _cuda.py)."""

    def __init__(self, what: str):
        self.what = what
        self._done = threading.Event()
        self._exc: BaseException | None = None
        self._result = None
        self._after = None

    def _finish(self, exc=None, result=None):
        self._exc, self._result = exc, result
        self._done.set()

    def _host_done(self) -> bool:
        return self._done.is_set()

    def is_completed(self) -> bool:
        """True once the call finished (successfully or not), its GPU copies included."""
        return self._done.is_set() and (self._after is None or _cuda.event_done(self._after[0]))

    def is_success(self) -> bool:
        return self._done.is_set() and self._exc is None

    def exception(self):
        return self._exc

    def _wait_host(self, timeout):
        if hasattr(timeout, "total_seconds"):
            timeout = timeout.total_seconds()
        if not self._done.wait(timeout):
            raise TimeoutError(f"Work.wait: {self.what} did not finish within {timeout}s")
        if self._exc is not None:
            raise self._exc
        return timeout

    def wait(self, timeout=None) -> bool:
        """Block until the host part is done; re-raise its error. A result bound for a GPU is
        then waited for by the caller's current stream, not the host. `timeout` (seconds or
        timedelta) bounds the wait."""
        self._wait_host(timeout)
        if self._after is not None:
            _cuda.stream_wait(*self._after)
        return True

    def synchronize(self, timeout=None) -> None:
        """Block the host until the call is done, its GPU copies included."""
        timeout = self._wait_host(timeout)
        if self._after is not None:
            _cuda.wait_event_host(self._after[0], timeout, self.what)

    def result(self):
        """What the call returned (the sender's rank for a receive), after waiting for it."""
        self.wait()
        return self._result

    def get_future(self):
        """A tensor.futures.Future completed (with the result) when the call is done."""
        return WorkFuture(self, self._result)


class WorkFuture(Future):
    """A Future of a launched call, completed with `value` when the Work's host part is done;
    it notices completion when polled (done/wait). As PyTorch's future of a NCCL Work, a GPU
    part is not waited for by the host: wait() (and so then()'s callbacks, which run in the
    waiting thread) leaves the caller's current stream waiting for it, so work queued on that
    stream sees the value; ``Work.synchronize()`` blocks the host."""

    def __init__(self, work, value):
        super().__init__()
        self._work, self._result = work, value
        self._lock = threading.Lock()
        self._claimed = False

    def _poll(self, block: bool, timeout=None):
        if self._done:
            return
        if not block and (not self._work._host_done() or (
                getattr(self._work, "_blocking", False) and not self._work.is_completed())):
            return
        # also when polled (done(), value(), a then() chain's done()): wait() orders the
        # current stream after the GPU part before the value is handed out and callbacks
        # run, as PyTorch runs them on a stream synchronised with the kernels; the host part
        # is over here, so it does not block
        try:
            self._work.wait(timeout)
        except TimeoutError:
            if block:
                raise
        except BaseException:  # noqa: BLE001 - recorded below as the future's exception
            pass
        with self._lock:
            if self._claimed:
                return
            self._claimed = True
        exc = self._work.exception()
        if exc is not None:
            self.set_exception(exc)
        else:
            self.set_result(self._result)

    def done(self) -> bool:
        self._poll(False)
        return self._done

    def wait(self, timeout=None):
        self._poll(True, timeout)
        return super().wait(timeout)


class Staged:
    """A flat, C-contiguous host view of an array; write_back() if copied.

    A numpy array is used as it is when it can be; a CuPy array is staged through pinned
    host memory by `gpu` (the call's GpuStaging, Note [GPU staging]); read=False skips
    copying in an array the call only writes."""

    def __new__(cls, a, copy: bool = False, gpu=None, read: bool = True):
        if gpu is not None and not isinstance(a, np.ndarray):
            return gpu.stage(a, read)
        return super().__new__(cls)

    def __init__(self, a, copy: bool = False, gpu=None, read: bool = True):
        self.a = a
        direct = isinstance(a, np.ndarray) and a.flags.c_contiguous and not copy
        self.copied = not direct
        self.flat = a.reshape(-1) if direct else \
            np.array(backend.to_numpy(a), order="C", copy=True).reshape(-1)

    def write_back(self):
        if self.copied:
            _write(self.a, self.flat)


def _write(dst, flat: np.ndarray):
    """dst[...] = flat reshaped, on dst's device."""
    host = flat.reshape(dst.shape)
    dst[...] = host if isinstance(dst, np.ndarray) else \
        backend.to_device(host, backend.device_of(dst))


POSTED = object()   # returned by a call whose Work finishes later (see progress)


class _Item:
    __slots__ = ("call", "fn", "work")

    def __init__(self, call, fn, work):
        self.call, self.fn, self.work = call, fn, work


class CommThread:
    """Runs a group's calls in launch order (see Note [Communication thread]).

    on_error(message) tells the peers when a call fails; progress(block_ms) drives posted
    work and returns whether some is left; fail_posted(exc) finishes it with an error."""

    def __init__(self, name: str, timeout_s: float, on_error, progress, fail_posted):
        self.timeout_s = timeout_s
        self._on_error, self._progress, self._fail_posted = on_error, progress, fail_posted
        self._lock = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self._busy = False
        self._posted = False      # progress said work is left
        self.current: Work | None = None
        self._seq = 0
        self._p2p_seq = 0
        self.broken: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, async_op: bool, name: str, collective: bool = True, **fields):
        """Launch fn(call, deadline) in order; returns a Work (async) or waits for it.

        The Call is built here, the one place: Call(seq, name, **fields). Point-to-point
        messages (collective=False) count apart and leave the group's count alone, since only
        two ranks take part."""
        work = Work(name)
        with self._lock:
            if self.broken is not None:
                raise RuntimeError(f"{name}: this process group is broken by an earlier error "
                                   f"and cannot run collectives: {self.broken}") from self.broken
            if self._stop:
                raise RuntimeError(f"{name}: the process group was destroyed")
            if collective:
                call = Call(self._seq, name, **fields)
                self._seq += 1
            else:
                call = Call(self._p2p_seq, name, **fields)
                self._p2p_seq += 1
            item = _Item(call, fn, work)
            inline = not async_op and not self._busy and not self._queue
            if inline:
                self._busy = True
            else:
                self._queue.append(item)
                self._lock.notify_all()
        if inline:
            self._release_after(self._run, item)
        if async_op:
            return work
        work.wait()
        return work

    def _loop(self):
        while True:
            with self._lock:
                while not self._stop and (self._busy or not (self._queue or self._posted)):
                    self._lock.wait(0.5)
                if self._stop and not self._queue:
                    return
                item = self._queue.popleft() if self._queue else None
                self._busy = True
            self._release_after(self._run if item else self._drive, item)

    def _release_after(self, fn, item):
        """Run a claimed step, then let the next one (inline or queued) go."""
        try:
            fn(item)
        finally:
            with self._lock:
                self._busy = False
                self._lock.notify_all()

    def _drive(self, _item, block_ms: int = 2):
        try:
            self._posted = self._progress(block_ms)
        except BaseException as e:  # noqa: BLE001 - every failure must reach the waiters
            self._fail(e)

    def _run(self, item: _Item):
        if self.broken is not None:
            item.work._finish(RuntimeError(f"{item.call.name}: this process group is broken by "
                                           f"an earlier error: {self.broken}"))
            return
        deadline = time.monotonic() + self.timeout_s
        self.current = item.work     # what a call that posts work finishes later
        try:
            result = item.fn(item.call, deadline)
        except BaseException as e:  # noqa: BLE001 - every failure must reach the waiter
            item.work._finish(e)
            self._fail(e)
            return
        if result is not POSTED:
            item.work._finish(None, result)
        self._drive(None, block_ms=0)

    def _fail(self, e: BaseException):
        if not isinstance(e, AbortedError):
            self._on_error(str(e))
        self.broken = e
        self._posted = False
        self._fail_posted(e)

    def shutdown(self, timeout_s: float = 5.0):
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout_s)
        self._fail_posted(RuntimeError("the process group was destroyed before this finished"))
