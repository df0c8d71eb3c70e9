"""Samplers, as ``torch.utils.data``: which indices a DataLoader fetches, in which order.

Random samplers draw one seed per epoch from their generator (default: zgrad's default
generator) and build that epoch's order from the seed alone. ``state_dict()`` reports the seed
of the current epoch, so a resumed job replays exactly the same order (see
``DataLoader.state_dict``). zgrad differs from PyTorch here on purpose: PyTorch draws the
permutation from the generator directly, which cannot be replayed from a checkpoint.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import numpy as np

from ._random import draw_seed, generator_state, rng_from_seed, set_generator_state


class Sampler:
    """Base class: ``__iter__`` yields indices (or, for a batch sampler, lists of indices)."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self) -> Iterator:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__()")


class SequentialSampler(Sampler):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class _EpochSeeded(Sampler):
    """A sampler whose epoch order is a function of one seed drawn at ``__iter__``."""

    generator = None
    _seed = None
    _gen_before = None
    _pending_seed = None

    def _next_seed(self) -> int:
        self._gen_before = generator_state(self.generator)
        if self._pending_seed is not None:   # restored by load_state_dict: replay that epoch
            seed, self._pending_seed = self._pending_seed, None
            draw_seed(self.generator)   # the original run drew it here: keep the sequence
        else:
            seed = draw_seed(self.generator)
        self._seed = seed
        return seed

    def state_dict(self) -> dict:
        """The current epoch's seed and the generator's state before that epoch drew it.

        Loading it makes the next ``__iter__`` replay that epoch (``epoch_seed``; None: draw a
        new one), and the generator then continues exactly as in the original run."""
        gen = self._gen_before if self._seed is not None else generator_state(self.generator)
        return {"epoch_seed": self._seed, "generator": gen}

    def load_state_dict(self, state: dict) -> None:
        """Make the next ``__iter__`` replay the epoch recorded in `state`."""
        if not isinstance(state, dict) or "epoch_seed" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict from "
                             f"state_dict() with an 'epoch_seed' key, got {state!r:.80}")
        self._pending_seed = state["epoch_seed"]
        set_generator_state(self.generator, state.get("generator"))


class RandomSampler(_EpochSeeded):
    """Random order; with `replacement`, `num_samples` independent draws.

    Args:
        data_source: the dataset (only its length is used).
        replacement: draw with replacement.
        num_samples: how many indices per epoch (default: len(data_source)); without
            replacement and larger than the dataset, whole permutations are concatenated.
        generator: a ``tensor.Generator`` (or numpy Generator); default zgrad's default one.
    """

    def __init__(self, data_source, replacement: bool = False, num_samples: int | None = None,
                 generator=None):
        if not isinstance(replacement, bool):
            raise TypeError(f"RandomSampler: replacement should be a boolean value, but got "
                            f"replacement={replacement!r}")
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = generator
        if not isinstance(self.num_samples, int) or isinstance(self.num_samples, bool) \
                or self.num_samples <= 0:
            raise ValueError(f"RandomSampler: num_samples should be a positive integer value, "
                             f"but got num_samples={self.num_samples!r}")

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self):
        n, k = len(self.data_source), self.num_samples
        rng = rng_from_seed(self._next_seed())
        if self.replacement:
            return iter(rng.integers(0, n, size=k).tolist())
        if k == n:
            return iter(rng.permutation(n).tolist())
        parts = [rng.permutation(n) for _ in range(k // n)]
        parts.append(rng.permutation(n)[:k % n])
        return iter(np.concatenate(parts).tolist())

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(_EpochSeeded):
    """The given indices in random order."""

    def __init__(self, indices: Sequence[int], generator=None):
        self.indices = indices
        self.generator = generator

    def __iter__(self):
        perm = rng_from_seed(self._next_seed()).permutation(len(self.indices)).tolist()
        indices = self.indices
        return (indices[i] for i in perm)

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(_EpochSeeded):
    """Indices 0..len(weights)-1 drawn with probability proportional to `weights`."""

    def __init__(self, weights, num_samples: int, replacement: bool = True, generator=None):
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"WeightedRandomSampler: num_samples should be a positive integer "
                             f"value, but got num_samples={num_samples!r}")
        if not isinstance(replacement, bool):
            raise ValueError(f"WeightedRandomSampler: replacement should be a boolean value, but "
                             f"got replacement={replacement!r}")
        w = np.asarray(getattr(weights, "array", weights), dtype=np.float64)
        if w.ndim != 1:
            raise ValueError(f"WeightedRandomSampler: weights should be a 1d sequence but given "
                             f"weights have shape {tuple(w.shape)}")
        if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("WeightedRandomSampler: weights must be finite, non-negative and "
                             f"not all zero; got {w[:8].tolist()}{'...' if w.size > 8 else ''}")
        if not replacement and num_samples > np.count_nonzero(w):
            raise ValueError(f"WeightedRandomSampler: cannot draw {num_samples} samples without "
                             f"replacement from {np.count_nonzero(w)} non-zero weights; lower "
                             "num_samples or set replacement=True")
        self.weights = w
        self.num_samples = num_samples
        self.replacement = replacement
        self.generator = generator

    def __iter__(self):
        rng = rng_from_seed(self._next_seed())
        p = self.weights / self.weights.sum()
        return iter(rng.choice(len(p), size=self.num_samples, replace=self.replacement,
                               p=p).tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Groups the indices of `sampler` into lists of `batch_size` (the last one may be short
    unless `drop_last`)."""

    def __init__(self, sampler, batch_size: int, drop_last: bool):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"BatchSampler: batch_size should be a positive integer value, but "
                             f"got batch_size={batch_size!r}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"BatchSampler: drop_last should be a boolean value, but got "
                             f"drop_last={drop_last!r}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self):
        # iter(sampler) runs now, not at the first next(): a random sampler draws its epoch
        # seed at once, so the loader can record it (see DataLoader.state_dict)
        return self._batches(iter(self.sampler))

    def _batches(self, it):
        bs = self.batch_size
        while True:
            batch = list(itertools.islice(it, bs))
            if not batch or (self.drop_last and len(batch) < bs):
                return
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def state_dict(self) -> dict | None:
        fn = getattr(self.sampler, "state_dict", None)
        return fn() if callable(fn) else None

    def load_state_dict(self, state) -> None:
        fn = getattr(self.sampler, "load_state_dict", None)
        if callable(fn) and state is not None:
            fn(state)
