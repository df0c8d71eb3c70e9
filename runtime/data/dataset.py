"""Datasets, as ``torch.utils.data``: Dataset, IterableDataset, TensorDataset, Subset,
ConcatDataset, ChainDataset and ``random_split``.
"""
from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence

from ._random import np_rng, resolve_generator


class Dataset:
    """A map-style dataset: ``__getitem__(index)`` and usually ``__len__``."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index)")

    def __add__(self, other: "Dataset") -> "ConcatDataset":
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A dataset that is a stream: ``__iter__`` yields samples.

    With ``num_workers > 0`` every worker iterates its own copy; shard inside ``__iter__``
    with ``get_worker_info()`` (or ``runtime.data.shard(iterable)``, which also splits across
    distributed ranks) so each sample is produced once.
    """

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __iter__()")

    def __add__(self, other):
        return ChainDataset([self, other])


class TensorDataset(Dataset):
    """Samples are the i-th rows of the given tensors (or arrays), as a tuple."""

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset: expected at least one tensor, got none")
        n = len(tensors[0])
        for k, t in enumerate(tensors):
            if len(t) != n:
                raise ValueError(f"TensorDataset: size mismatch between tensors: tensor 0 has "
                                 f"{n} rows, tensor {k} has {len(t)}. All first dimensions "
                                 "must match.")
        self.tensors = tensors

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return len(self.tensors[0])


class Subset(Dataset):
    """The items of `dataset` at `indices`, in that order."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = indices

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return self.dataset[[self.indices[i] for i in idx]]
        return self.dataset[self.indices[idx]]

    def __getitems__(self, indices):
        # forwards the batched fetch when the wrapped dataset has one
        if callable(getattr(self.dataset, "__getitems__", None)):
            return self.dataset.__getitems__([self.indices[i] for i in indices])
        return [self.dataset[self.indices[i]] for i in indices]

    def __len__(self):
        return len(self.indices)


class ConcatDataset(Dataset):
    """Map-style datasets one after another."""

    def __init__(self, datasets: Iterable[Dataset]):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: expected a non-empty iterable of datasets, got none")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise TypeError("ConcatDataset does not support IterableDataset "
                                f"({type(d).__name__}); use ChainDataset for streams")
        self.cumulative_sizes = []
        total = 0
        for d in self.datasets:
            total += len(d)
            self.cumulative_sizes.append(total)

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx):
        if idx < 0:
            if -idx > len(self):
                raise ValueError(f"ConcatDataset: index {idx} out of range for length {len(self)}")
            idx = len(self) + idx
        d = bisect.bisect_right(self.cumulative_sizes, idx)
        start = 0 if d == 0 else self.cumulative_sizes[d - 1]
        return self.datasets[d][idx - start]


class ChainDataset(IterableDataset):
    """Iterable datasets one after another."""

    def __init__(self, datasets: Iterable[Dataset]):
        self.datasets = list(datasets)

    def __iter__(self):
        for d in self.datasets:
            if not isinstance(d, IterableDataset):
                raise TypeError(f"ChainDataset only supports IterableDataset, got "
                                f"{type(d).__name__}")
            yield from d

    def __len__(self):
        return sum(len(d) for d in self.datasets)


def random_split(dataset: Dataset, lengths: Sequence, generator=None) -> list[Subset]:
    """Split `dataset` into non-overlapping random Subsets of the given lengths.

    `lengths` are counts summing to ``len(dataset)``, or fractions summing to 1: then each
    part gets ``floor(frac * n)`` items and the remainder is dealt one by one, round-robin,
    to the parts (PyTorch's rule).
    """
    n = len(dataset)
    lengths = list(lengths)
    if lengths and math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        counts = []
        for i, frac in enumerate(lengths):
            if frac < 0 or frac > 1:
                raise ValueError(f"random_split: fraction at index {i} is {frac}; expected a "
                                 "value in [0, 1]")
            counts.append(int(math.floor(n * frac)))
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if sum(lengths) != n:
        raise ValueError(f"random_split: sum of lengths {sum(lengths)} does not equal the length "
                         f"of the dataset ({n}); give counts that sum to {n} or fractions that "
                         "sum to 1")
    perm = np_rng(resolve_generator(generator)).permutation(n).tolist()
    out, offset = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[offset:offset + length]))
        offset += length
    return out
