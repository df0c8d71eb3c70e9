"""Epoch bookkeeping shared by the loader's iterators: progress (for state_dict), the order of
the random draws at the start of an epoch, and resume skipping."""
from __future__ import annotations

import itertools

from ._random import draw_seed, generator_state


class _Progress:
    """Where the loader is in its epochs (shared by the loader and its iterators; it holds no
    reference to either, so deleting the loader frees everything at once)."""

    def __init__(self):
        self.epoch = 0             # epochs started before the current one
        self.served = 0            # batches yielded in the current epoch
        self.in_progress = False
        self.sampler_state = None  # the index sampler's state at the start of this epoch
        self.gen_state = None      # the loader generator's state at the start of this epoch
        self.ahead = set()         # batches yielded past the first `served` (in_order=False)
        self.skip = 0              # set by load_state_dict: batches to skip in the next epoch
        self.skip_ahead = set()    # ... and single batches past those (served out of order)
        self.replay = False

    def mark_served(self, i: int) -> None:
        """Batch i (its number in sampler order) was yielded."""
        if i == self.served:
            self.ahead.discard(i)
            self.served += 1
            while self.ahead and self.served in self.ahead:
                self.ahead.remove(self.served)
                self.served += 1
        else:
            self.ahead.add(i)


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
    p.ahead, it._skip_set, p.skip_ahead = set(p.skip_ahead), p.skip_ahead, set()
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
    _skip_set = frozenset()
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
