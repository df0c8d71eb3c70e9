"""DataLoader, as ``torch.utils.data.DataLoader``: batches from a dataset, optionally made by
worker processes that hand them over in shared memory (Note [Loader protocol] in
_multiprocess_iter.py).
"""
from __future__ import annotations

import itertools
import multiprocessing

from . import _pin
from ._epoch import _BaseIter, _begin_epoch, _end_epoch, _Progress
from ._multiprocess_iter import DataLoaderTimeoutError, _MultiProcessIter
from ._random import generator_state, set_generator_state
from .collate import default_collate, default_convert
from .dataset import IterableDataset
from .sampler import BatchSampler, RandomSampler, SequentialSampler
from .worker import _Fetcher

__all__ = ["DataLoader", "DataLoaderTimeoutError", "pin_memory"]


class _InfiniteConstantSampler:
    """The 'sampler' of an IterableDataset: each request means 'the next batch'."""

    def __iter__(self):
        return itertools.repeat(None)


class DataLoader:
    """Iterates over batches of `dataset`, as torch.utils.data.DataLoader.

    Args (PyTorch's): dataset, batch_size=1, shuffle=False, sampler, batch_sampler,
    num_workers=0, collate_fn, pin_memory, drop_last, timeout (seconds per batch wait, 0 = no
    limit), worker_init_fn(worker_id), generator (for the shuffle and the workers' base seed),
    prefetch_factor (batches in flight per worker; 2 with workers, None without),
    persistent_workers, pin_memory_device, in_order, multiprocessing_context ('fork', 'spawn',
    'forkserver' or a context).

    Differs from PyTorch on purpose: with ``pin_memory=True`` and ``pin_memory_device="cuda"``
    (or "cuda:N") batches arrive already on that GPU, copied asynchronously from pinned memory
    on a side stream (Note [Loader device copies] in runtime/data/_pin.py); PyTorch only pins.

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
                 pin_memory_device: str = "", in_order: bool = True):
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
        self.pin_memory_device = pin_memory_device
        self._pin_device = _pin.check_device(pin_memory_device)
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

    # No __del__ that shuts the persistent iterator down: in ``for b in DataLoader(...)`` the
    # loader is a temporary that dies as soon as iter() returns, while the loop still holds the
    # iterator. The iterator's own finalizer stops the workers once nobody holds it.

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
                "served_ahead": sorted(p.ahead) if p.in_progress else [],
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
        p.skip_ahead = set(state.get("served_ahead", ())) if p.replay else set()
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


class _SingleProcessIter(_BaseIter):
    def __init__(self, loader: DataLoader):
        self._progress = loader._progress
        self._fetcher = _Fetcher(loader.dataset, loader._iterable, loader._auto_collation,
                                 loader.batch_size, loader.drop_last)
        self._collate = loader.collate_fn
        self._pin = loader.pin_memory
        self._pin_device = loader._pin_device
        self._iterable = loader._iterable
        self._len = len(loader) if not loader._iterable or hasattr(loader.dataset, "__len__") \
            else 0
        _begin_epoch(loader, self)
        self._next_i = self._skip_to   # number (in sampler order) of the next batch

    def __next__(self):
        try:
            indices, i = next(self._sampler_iter), self._next_i
            while i in self._skip_set:   # served out of order before a resume: fetch nothing
                indices, i = next(self._sampler_iter), i + 1
            self._next_i = i + 1
            batch = self._collate(self._fetcher.fetch(indices))
        except StopIteration:
            _end_epoch(self._progress)
            raise
        if self._pin:
            batch = _pin.stage(batch, self._pin_device).get()
        if self._iterable:
            self._progress.served += 1
        else:
            self._progress.mark_served(i)
        return batch


def pin_memory(batch):
    """Copy the CPU arrays of `batch` into page-locked memory (for fast, asynchronous host to
    GPU copies). Without a CUDA device (CuPy) there is nothing to pin for: warns once and
    returns the batch unchanged."""
    return _pin.pin_batch(batch)
