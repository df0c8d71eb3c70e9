"""DataLoader, as ``torch.utils.data.DataLoader``: batches from a dataset, optionally made by
worker processes that hand them over in shared memory.

Note [Loader protocol]
~~~~~~~~~~~~~~~~~~~~~~
Channels. Worker w has two one-way pipes of its own: the *index pipe* (main -> w) and the
*result pipe* (w -> main). One writer and one reader each, so no locks, and the main process
waits on all result pipes and all worker sentinels at once (``multiprocessing.connection.wait``):
a message or a death wakes it immediately, never a poll loop.

Index pipe messages (pickled tuples, all small):
  ("task", (epoch, i), indices)   fetch batch i (indices: list, single index, or None for an
                                  IterableDataset: "your next batch")
  ("free", name)                  the main process dropped the last array of the batch that
                                  lived in block `name`; the worker may overwrite it
  ("reset",)                      persistent workers: a new epoch starts (restart iterables)
  None                            exit
Result pipe messages: ((epoch, i), w, status, payload) with status "ok" (payload: the batch,
arrays replaced by block handles), "stop" (the worker's IterableDataset is exhausted) or
"err" (exception type, name, where, traceback). `epoch` lets the main process drop results of an
epoch the user abandoned.

Order and flow. The main process numbers batches i = 0, 1, ... in sampler order and sends batch
i to worker i % num_workers (in_order=False: to the worker with the fewest requests pending, and
batches are yielded as they arrive). At most prefetch_factor * num_workers batches are requested
and not yet yielded; each yielded batch releases one more request.

Block lifetime (see runtime/data/_transport.py). A worker keeps a ring of shm segments; a batch
is written into one free block and the block stays busy until "free" comes back. The main
process maps a block the first time a handle names it and unlinks the name right away: from
then on the memory lives exactly as long as the two mappings, so a crash of either side cannot
leave a file in /dev/shm. Each batch's arrays are views of a per-batch base array; a finalizer
on it queues ("free", name), which the main process sends with its next request (never from the
finalizer itself, which can run in the middle of another send). Blocks a worker created but the
main process never mapped (the worker died, or shutdown came first) carry the iterator's tag in
their name and are unlinked by the shutdown sweep.

Shutdown order (end of epoch without persistent_workers, leaving a loop early, deleting the
loader, interpreter exit): (1) send None to every index pipe; (2) join all workers with a shared
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

import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import warnings
import weakref

from ._random import draw_seed, generator_state, set_generator_state
from .collate import default_collate, default_convert
from .dataset import IterableDataset
from .sampler import BatchSampler, RandomSampler, SequentialSampler
from .worker import _Fetcher, _distributed_position, _short, worker_loop

_JOIN_S = 2.0           # shutdown: how long workers get to exit before terminate/kill
_WAIT_CHECK_S = 5.0     # without a timeout, how often a wait wakes to re-check (never a hang)
_ITER_IDS = itertools.count()


class DataLoaderTimeoutError(TimeoutError, RuntimeError):
    """A worker did not deliver a batch within ``timeout`` seconds (a RuntimeError, as in
    PyTorch, and a TimeoutError, as zgrad's deadlines)."""


class _InfiniteConstantSampler:
    """The 'sampler' of an IterableDataset: each request means 'the next batch'."""

    def __iter__(self):
        return itertools.repeat(None)


class _Progress:
    """Where the loader is in its epochs (shared by the loader and its iterators; it holds no
    reference to either, so deleting the loader frees everything at once)."""

    def __init__(self):
        self.epoch = 0             # epochs started before the current one
        self.served = 0            # batches yielded in the current epoch
        self.in_progress = False
        self.sampler_state = None  # the index sampler's state at the start of this epoch
        self.gen_state = None      # the loader generator's state at the start of this epoch
        self.skip = 0              # set by load_state_dict: batches to skip in the next epoch
        self.replay = False


class DataLoader:
    """Iterates over batches of `dataset`, as torch.utils.data.DataLoader.

    Args (PyTorch's): dataset, batch_size=1, shuffle=False, sampler, batch_sampler,
    num_workers=0, collate_fn, pin_memory, drop_last, timeout (seconds per batch wait, 0 = no
    limit), worker_init_fn(worker_id), generator (for the shuffle and the workers' base seed),
    prefetch_factor (batches in flight per worker; 2 with workers, None without),
    persistent_workers, in_order, multiprocessing_context ('fork', 'spawn', 'forkserver' or a
    context).

    With ``num_workers > 0`` each worker is a process that collates batches straight into shared
    memory; the main process receives Tensors backed by that memory without a copy
    (Note [Loader protocol]). ``state_dict()``/``load_state_dict()`` save and restore the
    position in the epoch.
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler=None, batch_sampler=None, num_workers: int = 0, collate_fn=None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn=None, multiprocessing_context=None, generator=None, *,
                 prefetch_factor: int | None = None, persistent_workers: bool = False,
                 in_order: bool = True):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError("DataLoader: num_workers option should be a non-negative int; use "
                             f"num_workers=0 to disable multiprocessing, got {num_workers!r}")
        if timeout < 0:
            raise ValueError(f"DataLoader: timeout option should be non-negative, got {timeout}")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("DataLoader: prefetch_factor option could only be specified in "
                             "multiprocessing. Let num_workers > 0 to enable multiprocessing, "
                             "otherwise set prefetch_factor to None.")
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        if prefetch_factor is not None and (not isinstance(prefetch_factor, int)
                                            or prefetch_factor < 1):
            raise ValueError(f"DataLoader: prefetch_factor should be an int >= 1, got "
                             f"{prefetch_factor!r}")
        if persistent_workers and num_workers == 0:
            raise ValueError("DataLoader: persistent_workers option needs num_workers > 0")
        iterable = isinstance(dataset, IterableDataset)
        if iterable:
            if shuffle not in (None, False):
                raise ValueError("DataLoader with IterableDataset: expected unspecified shuffle "
                                 f"option, but got shuffle={shuffle}")
            if sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler "
                                 f"option, but got sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified "
                                 f"batch_sampler option, but got batch_sampler={batch_sampler}")
        shuffle = bool(shuffle)
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler option is mutually exclusive with "
                                 "batch_size, shuffle, sampler, and drop_last")
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("DataLoader: batch_size=None option disables auto-batching and is "
                             "mutually exclusive with drop_last")
        if sampler is None:
            if iterable:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.generator = generator
        self.persistent_workers = persistent_workers
        self.in_order = in_order
        self._iterable = iterable
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn
        self._progress = _Progress()
        self._iterator = None   # the persistent workers' iterator

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self):
        return self.batch_sampler if self._auto_collation else self.sampler

    def _mp_context(self):
        ctx = self.multiprocessing_context
        if ctx is None:
            return multiprocessing.get_context()
        if isinstance(ctx, str):
            if ctx not in multiprocessing.get_all_start_methods():
                raise ValueError(f"DataLoader: multiprocessing_context {ctx!r} is not available "
                                 f"here; expected one of {multiprocessing.get_all_start_methods()}")
            return multiprocessing.get_context(ctx)
        return ctx

    def __iter__(self):
        if self.num_workers == 0:
            it = _SingleProcessIter(self)
        elif self.persistent_workers:
            if self._iterator is None or self._iterator._closed:
                self._iterator = _MultiProcessIter(self)
            else:
                self._iterator._reset(self)
            it = self._iterator
        else:
            it = _MultiProcessIter(self)
        if self._iterable and it._skip_to:
            it._fast_forward()
        return it

    def __len__(self):
        if self._iterable:
            n = len(self.dataset)   # TypeError from the dataset if it has no length
            if self.batch_size is not None:
                n = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            return n
        return len(self._index_sampler)

    def __del__(self):
        it = self.__dict__.get("_iterator")
        if it is not None:
            it._shutdown()

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the loader is: the epoch, the batches already yielded in it, and the sampler's
        state at the start of the epoch (its permutation seed), so that after
        ``load_state_dict`` the next ``iter(loader)`` yields exactly the remaining batches.

        Take it after the training step on the last batch you received.
        """
        p = self._progress
        if p.in_progress:
            sampler_state, gen_state = p.sampler_state, p.gen_state
        else:
            fn = getattr(self._index_sampler, "state_dict", None)
            sampler_state = fn() if callable(fn) else None
            gen_state = generator_state(self.generator)
        return {"epoch": p.epoch, "batches_served": p.served if p.in_progress else 0,
                "in_progress": p.in_progress, "batch_size": self.batch_size,
                "sampler": sampler_state, "generator": gen_state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position from ``state_dict()``: the next epoch resumes where it stopped."""
        if not isinstance(state, dict) or "batches_served" not in state:
            raise ValueError("DataLoader.load_state_dict: expected a dict from state_dict(), got "
                             f"{state!r:.80}")
        if state.get("batch_size") != self.batch_size:
            raise ValueError(f"DataLoader.load_state_dict: the state was saved with batch_size="
                             f"{state.get('batch_size')} but this loader has batch_size="
                             f"{self.batch_size}; resume with the same batch size")
        p = self._progress
        p.epoch = int(state["epoch"])
        p.replay = bool(state.get("in_progress"))
        p.skip = int(state["batches_served"]) if p.replay else 0
        sampler_state = state.get("sampler")
        fn = getattr(self._index_sampler, "load_state_dict", None)
        if sampler_state is not None and callable(fn):
            fn(sampler_state)
            if not p.replay and isinstance(sampler_state, dict) \
                    and sampler_state.get("epoch_seed") is not None:
                # the state is that of the last, finished epoch: consume its replay so the
                # next epoch draws exactly what the original run draws next
                iter(self._index_sampler)
        # last: when the sampler shares the loader's generator, the loader's (earlier) state wins
        set_generator_state(self.generator, state.get("generator"))


def _begin_epoch(loader: DataLoader, it) -> None:
    """Start an epoch: the index iterator (with any resume skip) and the progress record.

    Order of the random draws (replayed exactly after load_state_dict): the loader's
    generator state is recorded, the workers' base seed is drawn (every epoch, whatever
    num_workers is, as PyTorch, so the shuffle does not depend on the worker count), then the
    sampler draws its epoch seed.
    """
    p = loader._progress
    if p.in_progress:   # the previous iteration was abandoned: that epoch is over
        p.epoch += 1
    sampler = loader._index_sampler
    state_fn = getattr(sampler, "state_dict", None)
    state_fn = state_fn if callable(state_fn) else None
    p.gen_state = generator_state(loader.generator)
    it._base_seed = draw_seed(loader.generator)
    it._sampler_iter = iter(sampler)
    p.sampler_state = state_fn() if state_fn is not None else None
    skip, p.skip, p.replay = p.skip, 0, False
    p.in_progress, p.served = True, skip
    it._skip_to = skip
    if skip and not loader._iterable:   # map-style: skip indices without fetching
        for _ in itertools.islice(it._sampler_iter, skip):
            pass


def _end_epoch(progress: _Progress) -> None:
    if progress.in_progress:
        progress.in_progress, progress.served = False, 0
        progress.epoch += 1


class _BaseIter:
    _skip_to = 0
    _closed = False

    def __iter__(self):
        return self

    def __len__(self):
        return self._len

    def _fast_forward(self):
        """IterableDataset resume: the stream can only be replayed by reading it."""
        skip, self._progress.served = self._skip_to, 0
        for _ in range(skip):
            try:
                next(self)
            except StopIteration:
                break
        self._skip_to = 0


class _SingleProcessIter(_BaseIter):
    def __init__(self, loader: DataLoader):
        self._progress = loader._progress
        self._fetcher = _Fetcher(loader.dataset, loader._iterable, loader._auto_collation,
                                 loader.batch_size, loader.drop_last)
        self._collate = loader.collate_fn
        self._pin = loader.pin_memory
        self._len = len(loader) if not loader._iterable or hasattr(loader.dataset, "__len__") \
            else 0
        _begin_epoch(loader, self)

    def __next__(self):
        try:
            indices = next(self._sampler_iter)
            batch = self._collate(self._fetcher.fetch(indices))
        except StopIteration:
            _end_epoch(self._progress)
            raise
        if self._pin:
            batch = pin_memory(batch)
        self._progress.served += 1
        return batch


class _Workers:
    """The processes and pipes of one multi-process iterator; shut down by a finalizer so that
    neither early exit nor interpreter exit leaves processes or segments behind."""

    def __init__(self, tag):
        self.tag = tag
        self.procs, self.index_conns, self.result_conns = [], [], []
        self.receiver = None
        self.closed = False

    def shutdown(self):
        if self.closed:
            return
        self.closed = True
        from . import _transport
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
        from . import _transport
        self._progress = loader._progress
        self._n = loader.num_workers
        self._prefetch = loader.prefetch_factor * self._n
        self._in_order = loader.in_order
        self._timeout = loader.timeout
        self._pin = loader.pin_memory
        self._iterable = loader._iterable
        self._persistent = loader.persistent_workers
        self._len = len(loader) if not loader._iterable or hasattr(loader.dataset, "__len__") \
            else 0
        tag = f"dl{os.getpid()}x{next(_ITER_IDS)}x"
        w = self._w = _Workers(tag)
        self._finalizer = weakref.finalize(self, w.shutdown)
        ctx = loader._mp_context()
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
                          os.getpid(), loader._iterable, f"{tag}w{wid}"))
                p.start()
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
    def _flush_frees(self):
        freed, conns = self._w.receiver.freed, self._w.index_conns
        while freed:
            wid, name = freed.popleft()
            try:
                conns[wid].send(("free", name))
            except (OSError, ValueError):
                pass   # the worker is gone: its block dies with the mappings

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
        except StopIteration:
            self._exhausted = True
            return
        if self._w.receiver.freed:
            self._flush_frees()
        i = self._send_idx
        try:
            self._w.index_conns[wid].send(("task", (self._epoch_key, i), indices))
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
        self._progress.served += 1
        if self._pin:
            payload = pin_memory(payload)
        return payload

    def _raise_worker_error(self, wid, payload):
        exc_type, type_name, where, tb = payload
        msg = (f"Caught {type_name} in DataLoader worker process {wid} {where}.\n"
               f"Original Traceback (most recent call last):\n"
               f"{tb.split('Traceback (most recent call last):', 1)[-1].lstrip(chr(10))}")
        try:
            exc = exc_type(msg) if exc_type is not None else RuntimeError(msg)
        except Exception:
            exc = RuntimeError(msg)
        raise exc

    def _wait(self):
        """Block until at least one result arrives; raise on a dead worker or the timeout."""
        w = self._w
        if self._w.receiver.freed:
            self._flush_frees()
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
            if self._timeout > 0 and time.monotonic() - start >= self._timeout:
                self._raise_timeout(time.monotonic() - start)

    def _read(self, wid, conn) -> bool:
        """Read what `conn` holds; True when a result of this epoch arrived."""
        got = False
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return got    # the worker closed its end: its sentinel reports why
            key, _, status, payload = self._w.receiver.decode(data, wid)
            if key == (-1, -1):   # worker_init_fn failed: that worker cannot serve anything
                self._shutdown()
                self._raise_worker_error(wid, payload)
            if key[0] == self._epoch_key:
                self._buffer[key[1]] = (status, payload)
                self._pending[wid] -= 1
                got = True
            if not conn.poll():
                return got

    def _raise_worker_died(self, wid, p):
        conn = self._w.result_conns[wid]
        try:
            sent = conn.poll()
        except (OSError, EOFError):
            sent = False
        if sent:   # what it sent before dying (a worker_init_fn error is raised from here)
            self._read(wid, conn)
        p.join(0.1)
        code = p.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by signal {name} ({-code})"
            hint = {signal.SIGKILL: " SIGKILL often means the OS ran out of memory (see dmesg).",
                    signal.SIGBUS: " SIGBUS often means /dev/shm is full (df -h /dev/shm)."}
            how += hint.get(-code, "")
        else:
            how = f"exited unexpectedly with exit code {code}"
        waiting = [i for i, (w, _) in self._task_info.items() if w == wid]
        what = ""
        if waiting:
            i = min(waiting)
            what = f" while it held batch {i} (indices {_short(self._task_info[i][1])})"
        self._shutdown()
        raise RuntimeError(f"DataLoader worker {wid} (pid {p.pid}) {how}{what}. The other "
                           "workers were stopped.")

    def _raise_timeout(self, waited_s):
        due = [i for i in self._task_info if i not in self._buffer]
        i = min(due) if due else self._rcvd_idx
        wid, indices = self._task_info.get(i, (None, None))
        pid = self._w.procs[wid].pid if wid is not None else None
        raise DataLoaderTimeoutError(
            f"DataLoader timed out after {waited_s:.1f} seconds (timeout={self._timeout}) waiting "
            f"for batch {i} (indices {_short(indices)}) from worker {wid} (pid {pid}). The "
            "worker is alive but slow or stuck in __getitem__/collate_fn; raise `timeout` if "
            "the work is legitimately slow.")

    def _shutdown(self):
        self._closed = True
        self._finalizer()

    def __del__(self):
        self._finalizer()


def pin_memory(batch):
    """Copy the CPU arrays of `batch` into page-locked memory (for fast, asynchronous host to
    GPU copies). Without a CUDA device (CuPy) there is nothing to pin for: warns once and
    returns the batch unchanged."""
    from . import _pin
    return _pin.pin_batch(batch)
