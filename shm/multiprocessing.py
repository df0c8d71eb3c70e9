"""zgrad's torch.multiprocessing: the standard multiprocessing API, shared arrays sent by handle.

Everything in the standard ``multiprocessing`` module is re-exported (Process, Queue,
SimpleQueue, Pipe, Pool, get_context, ...), for every start method: importing ``shm``
registers the ForkingPickler reducers (shm/reductions.py) that all of them use, so a shared
numpy array, any view of it, and a Tensor whose ``.array`` is one, crosses as a handle.
``spawn(fn, args, nprocs)`` starts `nprocs` processes running ``fn(i, *args)`` and re-raises a
child's exception here with its rank and traceback, as torch.multiprocessing.spawn does.
"""
from __future__ import annotations

import builtins
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time
import traceback
from multiprocessing import *  # noqa: F401,F403  (the public API, as torch.multiprocessing)

from . import reductions as _reductions

_reductions.init_reductions()

__all__ = list(multiprocessing.__all__) + [
    "spawn", "start_processes", "ProcessContext", "ProcessException", "ProcessRaisedException",
    "ProcessExitedException", "get_sharing_strategy", "set_sharing_strategy",
    "get_all_sharing_strategies"]

_STRATEGY = "file_system"


def get_all_sharing_strategies() -> set[str]:
    """{'file_system'}: segments by name, counted by the job's manager (Note [Shm lifetime])."""
    return {_STRATEGY}


def get_sharing_strategy() -> str:
    return _STRATEGY


def set_sharing_strategy(strategy: str) -> None:
    """Accepts only 'file_system'; torch's 'file_descriptor' is not needed: mapped segments
    hold no descriptors here."""
    if strategy != _STRATEGY:
        raise ValueError(f"shm.multiprocessing.set_sharing_strategy: expected 'file_system', "
                         f"got {strategy!r}; zgrad keeps no descriptor per tensor, so "
                         "'file_descriptor' has no purpose here")


class ProcessException(Exception):
    def __init__(self, msg: str, error_index: int, error_pid: int):
        super().__init__(msg)
        self.msg, self.error_index, self.pid = msg, error_index, error_pid

    def __reduce__(self):
        return type(self), (self.msg, self.error_index, self.pid)


class ProcessRaisedException(ProcessException):
    """A spawned process raised; the message carries its traceback."""


class ProcessExitedException(ProcessException):
    """A spawned process exited with a non-zero code or was killed by a signal."""

    def __init__(self, msg, error_index, error_pid, exit_code, signal_name=None):
        super().__init__(msg, error_index, error_pid)
        self.exit_code, self.signal_name = exit_code, signal_name

    def __reduce__(self):
        return type(self), (self.msg, self.error_index, self.pid, self.exit_code,
                            self.signal_name)


def _wrap(fn, i, args, error_queue):
    try:
        fn(i, *args)
    except KeyboardInterrupt:
        pass  # the parent is stopping us
    except Exception:
        error_queue.put(traceback.format_exc())
        sys.exit(1)


class ProcessContext:
    """The processes started by `start_processes`; `join()` watches them."""

    def __init__(self, processes, error_queues):
        self.processes, self.error_queues = processes, error_queues
        self.sentinels = {p.sentinel: i for i, p in enumerate(processes)}

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` s; True when all exited cleanly. Raises on the first failure."""
        if not self.sentinels:
            return True
        ready = multiprocessing.connection.wait(list(self.sentinels), timeout=timeout)
        error_index = None
        for s in ready:
            i = self.sentinels.pop(s)
            p = self.processes[i]
            p.join()
            if p.exitcode != 0:
                error_index = i
                break
        if error_index is None:
            return not self.sentinels
        self._stop_rest()
        p = self.processes[error_index]
        q = self.error_queues[error_index]
        if q._reader.poll(0.1):  # the child wrote before exiting; no wait needed
            tb = q.get()
            raise ProcessRaisedException(
                f"\n\n-- Process {error_index} (pid {p.pid}) terminated with the following "
                f"error:\n{tb}", error_index, p.pid)
        if p.exitcode < 0:
            name = signal.Signals(-p.exitcode).name
            raise ProcessExitedException(
                f"process {error_index} (pid {p.pid}) terminated with signal {name}",
                error_index, p.pid, p.exitcode, name)
        raise ProcessExitedException(
            f"process {error_index} (pid {p.pid}) terminated with exit code {p.exitcode}",
            error_index, p.pid, p.exitcode)

    def _stop_rest(self, grace_s: float = 5.0):
        """SIGTERM the live ones, wait up to grace_s, then SIGKILL (STYLE: shutdown order)."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5.0)
        self.sentinels.clear()


def start_processes(fn, args=(), nprocs=1, join=True, daemon=False, start_method="spawn",
                    timeout_s: float | None = None):
    """Start `nprocs` processes running fn(i, *args); see `spawn`."""
    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"shm.multiprocessing.spawn: nprocs must be an int >= 1, got {nprocs!r}")
    ctx = multiprocessing.get_context(start_method)
    error_queues, processes = [], []
    for i in range(nprocs):
        q = ctx.SimpleQueue()
        p = ctx.Process(target=_wrap, args=(fn, i, args, q), daemon=daemon, name=f"spawn-{i}")
        p.start()
        error_queues.append(q)
        processes.append(p)
    context = ProcessContext(processes, error_queues)
    if not join:
        return context
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not context.join(None if deadline is None else max(0.0, deadline - time.monotonic())):
        if deadline is not None and time.monotonic() >= deadline:
            running = [i for i, p in enumerate(processes) if p.is_alive()]
            context._stop_rest()
            raise builtins.TimeoutError(
                f"shm.multiprocessing.spawn: processes {running} still running after "
                f"{timeout_s:.0f}s; they were terminated. Raise timeout_s or look for a hang in fn.")
    return None


def spawn(fn, args=(), nprocs=1, join=True, daemon=False, start_method="spawn",
          timeout_s: float | None = None):
    """Run fn(i, *args) for i in range(nprocs) in new processes (as torch.multiprocessing.spawn).

    Args:
        fn: a module-level function (it is pickled for 'spawn'); called as fn(i, *args).
        join: wait for all; if False, return the ProcessContext.
        start_method: 'spawn' (default, as torch), 'fork' or 'forkserver'.
        timeout_s: zgrad addition: give up after this many seconds, stop the processes and
            raise TimeoutError (None: wait as long as they run, as torch).
    Raises:
        ProcessRaisedException: a child raised; the message has its rank, pid and traceback.
        ProcessExitedException: a child exited non-zero or died by a signal.
    """
    return start_processes(fn, args, nprocs, join, daemon, start_method, timeout_s)
