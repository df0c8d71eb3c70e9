"""The multi-process loader iterator: worker processes, their pipes, ordering, failures.

Note [Loader protocol]
~~~~~~~~~~~~~~~~~~~~~~
Channels. Worker w has two one-way pipes of its own: the *index pipe* (main -> w) and the
*result pipe* (w -> main). One writer and one reader each, so no locks, and the main process
waits on all result pipes and all worker sentinels at once (``multiprocessing.connection.wait``):
a message or a death wakes it immediately, never a poll loop.

Index pipe messages (pickled tuples, all small):
  ("task", (epoch, i), indices, freed)
                                  fetch batch i (indices: list, single index, or None for an
                                  IterableDataset: "your next batch"); `freed` names the blocks
                                  whose batches the main process has dropped since the last
                                  task to this worker: the worker may overwrite them
  ("reset",)                      persistent workers: a new epoch starts (restart iterables)
  None                            exit
Result pipe messages: ((epoch, i), w, status, payload) with status "ok" (payload: the batch,
arrays replaced by block handles), "stop" (the worker's IterableDataset is exhausted) or
"err" (exception type, name, where, traceback). `epoch` lets the main process drop results of an
epoch the user abandoned.

Order and flow. The main process numbers batches i = 0, 1, ... in sampler order and sends batch
i to worker i % num_workers, also in an epoch resumed at batch k (in_order=False: to the worker
with the fewest requests pending, and batches are yielded as they arrive). At most prefetch_factor * num_workers batches are requested
and not yet yielded; each yielded batch releases one more request.

Block lifetime (see runtime/data/_transport.py). A worker keeps a ring of shm segments; a batch
is written into one free block and the block stays busy until its name comes back. The main
process maps a block the first time a handle names it and unlinks the name right away: from
then on the memory lives exactly as long as the two mappings, so a crash of either side cannot
leave a file in /dev/shm. Each batch's arrays are views of a per-batch base array; a finalizer
on it queues the block's name, which travels back with the worker's next task (never sent from
the finalizer itself, which can run in the middle of another send; and one pipe write per batch,
not two). A worker that finds no free block large enough creates one, so a user holding on to
batches costs memory, never a wait. Blocks a worker created but the
main process never mapped (the worker died, or shutdown came first) are released by shm's
manager when the worker's connection closes (Note [Shm lifetime]); they also carry the
iterator's tag in their name and the shutdown sweep unlinks them at once.

Shutdown order (end of epoch without persistent_workers, leaving a loop early, deleting the
loader, interpreter exit): (1) set the shared `done` flag (workers drop requests still queued)
and send None to every index pipe; (2) join all workers with a shared
deadline; (3) terminate, then kill, the ones still alive; (4) close the pipes; (5) unlink blocks
still named with this iterator's tag; (6) forget the block mappings (batches the user still
holds keep theirs). A worker also exits by itself when its index pipe closes or its parent
process disappears (checked every 0.5 s while idle).

Failures. An exception in a worker comes back as "err" and is raised when that batch is due,
as the same type with the worker id, the failing index and the worker's traceback. A worker that
dies is noticed through its sentinel the next time the main process waits, and reported with
its pid, signal or exit code. `timeout` bounds each wait for a batch.
"""
from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
import warnings
import weakref

from . import _pin, _transport
from ._epoch import _BaseIter, _begin_epoch, _end_epoch
from .worker import _distributed_position, _short, worker_loop

_JOIN_S = 1.0           # shutdown: how long workers get to exit before terminate/kill
_WAIT_CHECK_S = 5.0     # without a timeout, how often a wait wakes to re-check (never a hang)
_SLOW_WARN_S = 60.0     # without a timeout, warn (once) after waiting this long for a batch
_ITER_IDS = itertools.count()


class DataLoaderTimeoutError(TimeoutError, RuntimeError):
    """A worker did not deliver a batch within ``timeout`` seconds (a RuntimeError, as in
    PyTorch, and a TimeoutError, as zgrad's deadlines)."""


class _Workers:
    """The processes and pipes of one multi-process iterator; shut down by a finalizer so that
    neither early exit nor interpreter exit leaves processes or segments behind."""

    def __init__(self, tag):
        self.tag = tag
        self.procs, self.index_conns, self.result_conns = [], [], []
        self.receiver = None
        self.done = None   # a shared flag: workers drop queued requests once it is set
        self.closed = False

    def shutdown(self):
        if self.closed:
            return
        self.closed = True
        if self.done is not None:
            self.done.value = True
        for c in self.index_conns:
            try:
                c.send(None)
            except (OSError, ValueError):
                pass   # that worker is gone already
        deadline = time.monotonic() + _JOIN_S
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(1.0)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(1.0)
        for c in self.index_conns + self.result_conns:
            c.close()
        _transport.unlink_leftovers(self.tag)
        if self.receiver is not None:
            self.receiver.segments.clear()
            self.receiver.freed.clear()


class _MultiProcessIter(_BaseIter):
    def __init__(self, loader: DataLoader):
        self._progress = loader._progress
        self._n = loader.num_workers
        self._prefetch = loader.prefetch_factor * self._n
        self._in_order = loader.in_order
        self._timeout = loader.timeout
        self._pin = loader.pin_memory
        self._pin_device = loader._pin_device
        self._iterable = loader._iterable
        self._persistent = loader.persistent_workers
        self._len = len(loader) if not loader._iterable or hasattr(loader.dataset, "__len__") \
            else 0
        tag = f"dl{os.getpid()}x{next(_ITER_IDS)}x"
        w = self._w = _Workers(tag)
        self._finalizer = weakref.finalize(self, w.shutdown)
        ctx = loader._mp_context()
        w.done = ctx.RawValue(ctypes.c_bool, False)
        _begin_epoch(loader, self)
        base_seed = self._base_seed
        rank, world_size = _distributed_position()
        # A daemonic process (a spawn_ranks/Pool child) may not start children through
        # multiprocessing; our workers need no such protection (they exit when their parent
        # goes, see Note [Loader protocol]), so the flag is lifted while they start.
        config = multiprocessing.current_process()._config
        daemonic = config.pop("daemon", None)
        try:
            for wid in range(self._n):
                idx_r, idx_w = ctx.Pipe(duplex=False)
                res_r, res_w = ctx.Pipe(duplex=False)
                p = ctx.Process(
                    target=worker_loop, name=f"DataLoader worker {wid}", daemon=True,
                    args=(wid, loader.dataset, idx_r, res_w, loader.collate_fn,
                          loader._auto_collation, loader.batch_size, loader.drop_last,
                          base_seed, loader.worker_init_fn, self._n, rank, world_size,
                          os.getpid(), loader._iterable, f"{tag}w{wid}", w.done))
                try:
                    p.start()
                except (TypeError, AttributeError, pickle.PicklingError) as e:
                    for c in (idx_r, idx_w, res_r, res_w):
                        c.close()
                    raise RuntimeError(
                        f"DataLoader: cannot start worker {wid} with the "
                        f"{ctx.get_start_method()!r} start method: the dataset, collate_fn and "
                        f"worker_init_fn must be picklable ({e}). Define them at module "
                        "level, or use multiprocessing_context='fork'.") from e
                idx_r.close()   # the worker's ends: only the worker holds them now
                res_w.close()
                w.procs.append(p)
                w.index_conns.append(idx_w)
                w.result_conns.append(res_r)
            w.receiver = _transport.MainReceiver()
        except BaseException:
            w.shutdown()
            raise
        finally:
            if daemonic is not None:
                config["daemon"] = daemonic
        self._epoch_key = 0
        self._warned_slow = False
        self._frees = [[] for _ in range(self._n)]   # block names to return, per worker
        self._start_epoch()

    def _start_epoch(self):
        """Counters for a new epoch (after _begin_epoch), then the first requests."""
        self._epoch_key += 1
        self._send_idx = self._rcvd_idx = 0
        self._task_info = {}      # batch index -> (worker id, indices)
        self._buffer = {}         # batch index -> (status, payload)
        self._active = [True] * self._n
        self._pending = [0] * self._n   # requests sent to each worker and not yet answered
        self._in_flight = 0             # requested and not yet yielded
        self._exhausted = False
        if not self._iterable:   # resumed map-style epochs keep batch i on worker i % n
            self._send_idx = self._rcvd_idx = self._skip_to
            self._skip_to = 0
        self._next_worker = self._send_idx % self._n
        for _ in range(self._prefetch):
            self._try_put_index()

    def _reset(self, loader):
        """Persistent workers: start the next epoch on the same processes."""
        _begin_epoch(loader, self)
        for c in self._w.index_conns:
            c.send(("reset",))
        self._start_epoch()

    # -- requests ------------------------------------------------------------------------------
    def _collect_frees(self):
        """Sort the blocks freed since the last call by worker (they ride on its next task)."""
        freed, frees = self._w.receiver.freed, self._frees
        while freed:
            wid, name = freed.popleft()
            frees[wid].append(name)

    def _pick_worker(self):
        if self._in_order:
            for _ in range(self._n):
                wid = self._next_worker
                self._next_worker = (wid + 1) % self._n
                if self._active[wid]:
                    return wid
            return None
        live = [w for w in range(self._n) if self._active[w]]
        return min(live, key=self._pending.__getitem__) if live else None

    def _try_put_index(self):
        if self._exhausted or self._in_flight >= self._prefetch:
            return
        wid = self._pick_worker()
        if wid is None:
            self._exhausted = True
            return
        try:
            indices = next(self._sampler_iter)
            while self._send_idx in self._skip_set:   # served out of order before a resume
                self._send_idx += 1
                indices = next(self._sampler_iter)
        except StopIteration:
            self._exhausted = True
            return
        if self._w.receiver.freed:
            self._collect_frees()
        frees, self._frees[wid] = self._frees[wid], []
        i = self._send_idx
        try:
            self._w.index_conns[wid].send(("task", (self._epoch_key, i), indices, frees))
        except OSError:   # its pipe is closed: the worker died
            self._raise_worker_died(wid, self._w.procs[wid])
        self._task_info[i] = (wid, indices)
        self._pending[wid] += 1
        self._in_flight += 1
        self._send_idx = i + 1

    # -- results -------------------------------------------------------------------------------
    def __next__(self):
        if self._closed:
            raise StopIteration
        while True:
            msg = self._pop_ready()
            if msg is not None:
                return self._process(*msg)
            if self._in_flight == 0 and self._exhausted:
                _end_epoch(self._progress)
                if not self._persistent:
                    self._shutdown()
                raise StopIteration
            self._wait()

    def _pop_ready(self):
        while self._buffer:
            if self._in_order:
                while self._rcvd_idx in self._skip_set:
                    self._rcvd_idx += 1
                i = self._rcvd_idx
                if i not in self._buffer:
                    return None
            else:
                i = next(iter(self._buffer))
            status, payload = self._buffer.pop(i)
            wid, indices = self._task_info.pop(i)
            self._in_flight -= 1
            if self._in_order:
                self._rcvd_idx += 1
            if status == "stop":
                self._active[wid] = False
                self._try_put_index()
                continue
            self._try_put_index()
            return i, wid, indices, status, payload
        return None

    def _process(self, i, wid, indices, status, payload):
        if status == "err":
            self._raise_worker_error(wid, payload)
        if self._iterable:   # streams resume by count (see _BaseIter._fast_forward)
            self._progress.served += 1
        else:
            self._progress.mark_served(i)
        if self._pin:   # staged when it arrived (see _read)
            payload = payload.get()
        return payload

    def _raise_worker_error(self, wid, payload):
        exc_type, type_name, where, tb = payload
        msg = (f"Caught {type_name} in DataLoader worker process {wid} {where}.\n"
               f"Original Traceback (most recent call last):\n"
               f"{tb.split('Traceback (most recent call last):', 1)[-1].lstrip(chr(10))}")
        if exc_type is not None and issubclass(exc_type, KeyError):
            msg = _KeyErrorMessage(msg)   # str(KeyError(s)) is repr(s): newlines as '\n'
        try:
            exc = exc_type(msg) if exc_type is not None else RuntimeError(msg)
        except Exception:
            exc = RuntimeError(msg)
        raise exc

    def _wait(self):
        """Block until at least one result arrives; raise on a dead worker or the timeout."""
        w = self._w
        start = time.monotonic()
        waitables = w.result_conns + [p.sentinel for p in w.procs]
        while True:
            limit = _WAIT_CHECK_S
            if self._timeout > 0:
                limit = min(limit, max(0.0, start + self._timeout - time.monotonic()))
            ready = multiprocessing.connection.wait(waitables, timeout=limit)
            got = False
            for wid, c in enumerate(w.result_conns):
                if c in ready:
                    got |= self._read(wid, c)
            if got:
                return
            for wid, p in enumerate(w.procs):
                if p.sentinel in ready or not p.is_alive():
                    self._raise_worker_died(wid, p)
            waited_s = time.monotonic() - start
            if self._timeout > 0 and waited_s >= self._timeout:
                self._raise_timeout(waited_s)
            if self._timeout == 0 and waited_s >= _SLOW_WARN_S and not self._warned_slow:
                self._warned_slow = True
                warnings.warn(f"DataLoader: no batch for {waited_s:.0f}s; "
                              f"{self._describe_due()}. Workers are alive; pass timeout= to "
                              "raise instead of waiting.", RuntimeWarning, stacklevel=4)

    def _read(self, wid, conn) -> bool:
        """Read what `conn` holds; True when a result of this epoch arrived."""
        got = False
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return got    # the worker closed its end: its sentinel reports why
            try:
                key, _, status, payload = self._w.receiver.decode(data, wid)
            except FileNotFoundError:
                # a result sent just before its worker died names a block that died with it
                p = self._w.procs[wid]
                p.join(1.0)
                if p.is_alive():
                    raise
                self._raise_worker_died(wid, p, read_pending=False)
            if key == (-1, -1):   # worker_init_fn failed: that worker cannot serve anything
                self._shutdown()
                self._raise_worker_error(wid, payload)
            if key[0] == self._epoch_key:
                if self._pin and status == "ok":  # pinned and copied before it is served
                    payload = _pin.stage(payload, self._pin_device)  # Note [Loader device copies]
                self._buffer[key[1]] = (status, payload)
                self._pending[wid] -= 1
                got = True
            if not conn.poll():
                return got

    def _raise_worker_died(self, wid, p, read_pending=True):
        conn = self._w.result_conns[wid]
        try:
            sent = read_pending and conn.poll()
        except (OSError, EOFError):
            sent = False
        if sent:   # what it sent before dying (a worker_init_fn error is raised from here)
            self._read(wid, conn)
        p.join(0.1)
        code, hint = p.exitcode, ""
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by signal {name} ({-code})"
            hint = {signal.SIGKILL: " SIGKILL often means the OS ran out of memory (see dmesg).",
                    signal.SIGBUS: " SIGBUS often means /dev/shm is full (df -h /dev/shm)."
                    }.get(-code, "")
        else:
            how = f"exited unexpectedly with exit code {code}"
        waiting = [i for i, (w, _) in self._task_info.items()
                   if w == wid and i not in self._buffer]
        what = ""
        if waiting:
            i = min(waiting)
            what = f" while it held batch {i} (indices {_short(self._task_info[i][1])})"
        self._shutdown()
        raise RuntimeError(f"DataLoader worker {wid} (pid {p.pid}) {how}{what}.{hint} The "
                           "other workers were stopped.")

    def _describe_due(self) -> str:
        due = [i for i in self._task_info if i not in self._buffer]
        i = min(due) if due else self._rcvd_idx
        wid, indices = self._task_info.get(i, (None, None))
        pid = self._w.procs[wid].pid if wid is not None else None
        return f"waiting for batch {i} (indices {_short(indices)}) from worker {wid} (pid {pid})"

    def _raise_timeout(self, waited_s):
        raise DataLoaderTimeoutError(
            f"DataLoader timed out after {waited_s:.1f} seconds (timeout={self._timeout}) "
            f"{self._describe_due()}. The worker is alive but slow or stuck in "
            "__getitem__/collate_fn; raise `timeout` if the work is legitimately slow.")

    def _shutdown(self):
        self._closed = True
        self._finalizer()

    def __del__(self):
        self._finalizer()


class _KeyErrorMessage(str):
    """A message whose repr is itself, so a re-raised KeyError prints its traceback readably
    (KeyError's str() is the repr of its argument)."""

    def __repr__(self):
        return self
