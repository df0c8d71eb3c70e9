"""The loader's worker process: ``get_worker_info()`` and the loop that serves batch requests.

The messages and the shutdown order are described in Note [Loader protocol] (_multiprocess_iter.py).
"""
from __future__ import annotations

import itertools
import os
import pickle
import random
import sys
import traceback
from dataclasses import dataclass

import numpy as np

_POLL_S = 0.5          # how often an idle worker checks that its parent is alive

_worker_info = None


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker knows about itself (``get_worker_info()`` inside a worker).

    ``id``/``num_workers``/``seed``/``dataset`` are PyTorch's. zgrad adds ``rank`` and
    ``world_size`` (the distributed job's, captured when the loader started iterating) so an
    IterableDataset can shard by worker and by rank: see ``shard()``.
    """

    id: int
    num_workers: int
    seed: int
    dataset: object
    rank: int = 0
    world_size: int = 1


def get_worker_info() -> WorkerInfo | None:
    """This worker's WorkerInfo, or None in the main process."""
    return _worker_info


def _distributed_position() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) without one."""
    dist = sys.modules.get("runtime.distributed")
    try:
        if dist is not None and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # a half-initialised group reads as none: shard nothing
        pass
    return 0, 1


def shard(iterable):
    """The part of `iterable` this (rank, worker) should produce: every
    (world_size * num_workers)-th element, starting at rank * num_workers + worker id.

    Use it inside ``IterableDataset.__iter__`` so each element is read once across all
    workers of all ranks. In the main process (num_workers=0) it splits by rank only.
    """
    info = get_worker_info()
    if info is None:
        rank, world = _distributed_position()
        wid, nw = 0, 1
    else:
        rank, world, wid, nw = info.rank, info.world_size, info.id, info.num_workers
    return itertools.islice(iterable, rank * nw + wid, None, world * nw)


_inherited_cuda: list = []   # CUDA objects a forked worker inherited and must never touch


def seed_worker(seed: int) -> None:
    """Seed zgrad's, numpy's global and Python's RNGs in a worker (PyTorch seeds torch and
    random with base_seed + worker_id; numpy's legacy RNG takes 32 bits).

    A worker forked after the parent drew random numbers on a GPU (dropout in training, then
    the eval loader's workers start) inherits the parent's CuPy generator, whose cuRAND
    states live in the parent's CUDA context. CUDA cannot be used in a child forked after
    the parent initialised it, so reseeding that generator (tensor.manual_seed re-initialises
    its states with a kernel) would kill the worker. It is dropped first: the worker's seed
    is then recorded for a GPU stream made afresh, as PyTorch queues a forked child's CUDA
    seed. Dropped but kept referenced: freeing its device memory would be a CUDA call too."""
    import tensor
    gen = tensor.random.default_generator
    if getattr(gen, "_cupy_rng", None) is not None:
        _inherited_cuda.append(gen._cupy_rng)
        gen._cupy_rng = None
    random.seed(seed)
    tensor.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


class _Fetcher:
    """Turns a request into a list of samples (map-style) or the next samples (iterable)."""

    def __init__(self, dataset, iterable, auto_collation, batch_size, drop_last):
        self.dataset, self.iterable = dataset, iterable
        self.auto, self.batch_size, self.drop_last = auto_collation, batch_size, drop_last
        self.it = None
        self.failed_at = None   # index (or stream position) of the sample that raised

    def fetch(self, indices):
        if self.iterable:
            if self.it is None:
                self.it = iter(self.dataset)
            if not self.auto:
                return next(self.it)          # StopIteration ends this worker's stream
            data = list(itertools.islice(self.it, self.batch_size))
            if not data or (self.drop_last and len(data) < self.batch_size):
                raise StopIteration
            return data
        ds = self.dataset
        if not self.auto:
            self.failed_at = indices
            return ds[indices]
        getitems = getattr(ds, "__getitems__", None)
        if getitems is not None:
            self.failed_at = indices
            return getitems(indices)
        data = []
        append = data.append
        for idx in indices:
            self.failed_at = idx
            append(ds[idx])
        return data


def worker_loop(worker_id, dataset, index_conn, result_conn, collate_fn,
                auto_collation, batch_size, drop_last, base_seed, init_fn, num_workers,
                rank, world_size, parent_pid, iterable, tag, done):
    """Serve requests from `index_conn` until the None sentinel or `done` is set (see
    Note [Loader protocol])."""
    global _worker_info
    import tensor
    from . import _transport
    from .collate import _collate, default_collate

    seed = base_seed + worker_id
    seed_worker(seed)
    _worker_info = WorkerInfo(worker_id, num_workers, seed, dataset, rank, world_size)
    ring = _transport.WorkerRing(tag)
    tensor_type = tensor.Tensor

    def send(msg):
        result_conn.send_bytes(ring.encode(msg, tensor_type))

    def send_error(key, where, exc):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            pickle.dumps(type(exc))
            exc_type = type(exc)
        except Exception:  # a class defined in a function: the name is enough
            exc_type = None
        payload = (exc_type, type(exc).__name__, where, tb)
        result_conn.send_bytes(pickle.dumps((key, worker_id, "err", payload), protocol=5))

    try:
        if init_fn is not None:
            try:
                init_fn(worker_id)
            except Exception as e:
                send_error((-1, -1), "in worker_init_fn", e)
                return
        fetcher = _Fetcher(dataset, iterable, auto_collation, batch_size, drop_last)
        while True:
            if not index_conn.poll(_POLL_S):
                if os.getppid() != parent_pid:   # the main process is gone: nobody to serve
                    return
                continue
            try:
                msg = index_conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            if msg[0] == "reset":   # a new epoch with persistent workers
                fetcher = _Fetcher(dataset, iterable, auto_collation, batch_size, drop_last)
                continue
            if done.value:   # shutting down: skip the requests still queued before None
                return
            _, key, indices, freed = msg   # ("task", (epoch, batch_idx), indices, freed)
            for name in freed:
                ring.release(name)
            fetcher.failed_at = None
            try:
                data = fetcher.fetch(indices)
            except StopIteration:
                send((key, worker_id, "stop", None))
                continue
            except Exception as e:
                where = (f"while fetching index {fetcher.failed_at!r}" if not iterable
                         else "while iterating the IterableDataset")
                send_error(key, where, e)
                continue
            try:
                if collate_fn is default_collate:
                    batch = _collate(data, _transport.pending_leaf)
                else:
                    batch = collate_fn(data)
            except Exception as e:
                send_error(key, f"in collate_fn for indices {_short(indices)}", e)
                continue
            try:   # default_collate's leaves are stacked into the block here
                send((key, worker_id, "ok", batch))
            except Exception as e:
                # only a pickling failure earns the picklable hint: a full /dev/shm or
                # samples of different shapes (stacked here) carry their own explanation
                hint = "; a collate_fn result must be picklable" if _is_pickling_error(e) else ""
                send_error(key, f"while collating batch {key[1]} (indices {_short(indices)}) "
                           f"into shared memory{hint}", e)
    except KeyboardInterrupt:
        pass   # the main process handles Ctrl-C and shuts workers down
    finally:
        ring.close()
        for c in (index_conn, result_conn):
            try:
                c.close()
            except OSError:
                pass


def _is_pickling_error(e: BaseException) -> bool:
    return isinstance(e, pickle.PicklingError) or (
        isinstance(e, (TypeError, AttributeError)) and "pickle" in str(e).lower())


def _short(indices, n=8):
    if isinstance(indices, list) and len(indices) > n:
        return f"[{', '.join(map(str, indices[:n]))}, ... ({len(indices)} in all)]"
    return repr(indices)
