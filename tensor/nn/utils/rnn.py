"""``nn.utils.rnn`` (torch.nn.utils.rnn): PackedSequence, packing and padding of sequences.

A PackedSequence holds PyTorch's layout: ``data`` is every existing step of every sequence,
time-major (all sequences' step 0, then all step 1 of those that are long enough, ...), with the
sequences sorted by decreasing length; ``batch_sizes[t]`` is how many sequences have step t;
``sorted_indices`` / ``unsorted_indices`` map between the caller's batch order and the sorted
one (None when the caller's batch was already sorted). All conversions are gathers through
differentiable indexing, so gradients flow through packing and unpacking.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ... import backend
from ..._tensor import Tensor, _new
from ...ops.shape import cat

__all__ = ["PackedSequence", "pack_padded_sequence", "pad_packed_sequence", "pad_sequence",
           "pack_sequence", "unpad_sequence", "unpack_sequence"]

_PackedBase = namedtuple("PackedSequence",
                         ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])


class PackedSequence(_PackedBase):
    """Sequences of unequal lengths packed time-major (see the module docstring).

    Build it with pack_padded_sequence or pack_sequence, not by hand.
    """

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if unsorted_indices is None and sorted_indices is not None:
            unsorted_indices = _invert(sorted_indices)
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs):
        return type(self)(self.data.to(*args, **kwargs), self.batch_sizes, self.sorted_indices,
                          self.unsorted_indices)

    @property
    def is_cuda(self) -> bool:
        return self.data.is_cuda

    def _lengths(self) -> np.ndarray:
        """Lengths of the sorted sequences (decreasing), from batch_sizes."""
        bs = self.batch_sizes.array
        return (bs[None, :] > np.arange(int(bs[0]))[:, None]).sum(1)


def _as_int_array(x, op) -> np.ndarray:
    a = backend.to_numpy(x.array) if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise ValueError(f"{op}: lengths must be a 1-D list or tensor of integers, got "
                         f"{a.dtype} with shape {list(a.shape)}")
    return a.astype(np.int64)


def _invert(perm: Tensor) -> Tensor:
    p = backend.to_numpy(perm.array)
    inv = np.empty_like(p)
    inv[p] = np.arange(p.size, dtype=p.dtype)
    return _new(inv)


def _step_index(lengths: np.ndarray):
    """(t, b) of every existing step, time-major: the order of PackedSequence.data."""
    T = int(lengths.max()) if lengths.size else 0
    exists = np.arange(T)[:, None] < lengths[None, :]
    return np.nonzero(exists)


def pack_padded_sequence(input, lengths, batch_first: bool = False,
                         enforce_sorted: bool = True) -> PackedSequence:
    """Pack a padded batch (T, B, *) (or (B, T, *) with batch_first) of sequences of `lengths`.

    With enforce_sorted=True the lengths must be decreasing; with False the batch is sorted
    here and the permutation kept in the PackedSequence.
    """
    lengths = _as_int_array(lengths, "pack_padded_sequence")
    B = input.shape[0 if batch_first else 1]
    if lengths.size != B:
        raise ValueError(f"pack_padded_sequence: got {lengths.size} lengths for a batch of {B} "
                         "sequences; expected one length per sequence.")
    if lengths.size and lengths.min() <= 0:
        raise RuntimeError("pack_padded_sequence: length of all samples has to be greater "
                           f"than 0, but found an element in 'lengths' that is <= 0: {lengths}")
    T = input.shape[1 if batch_first else 0]
    if lengths.size and lengths.max() > T:
        raise ValueError(f"pack_padded_sequence: a length of {lengths.max()} is longer than the "
                         f"padded sequence dimension ({T}).")
    if enforce_sorted:
        if np.any(np.diff(lengths) > 0):
            raise RuntimeError("`lengths` array must be sorted in decreasing order when "
                               "`enforce_sorted` is True. You can pass `enforce_sorted=False` "
                               "to pack_padded_sequence and/or pack_sequence to sidestep this "
                               "requirement.")
        sorted_indices = None
        order = np.arange(B)
    else:
        order = np.argsort(-lengths, kind="stable")
        sorted_indices = _new(order.astype(np.int64))
        lengths = lengths[order]
    t_idx, b_idx = _step_index(lengths)
    xp = backend.get_array_module(input.array)
    b_src = xp.asarray(order[b_idx])
    t_idx = xp.asarray(t_idx)
    data = input[b_src, t_idx] if batch_first else input[t_idx, b_src]
    steps = np.arange(int(lengths.max()))
    batch_sizes = _new((lengths[None, :] > steps[:, None]).sum(1).astype(np.int64))
    return PackedSequence(data, batch_sizes, sorted_indices)


def pad_packed_sequence(sequence: PackedSequence, batch_first: bool = False,
                        padding_value: float = 0.0, total_length=None):
    """The inverse of pack_padded_sequence: (padded (T, B, *) or (B, T, *), lengths int64).

    The batch comes back in the caller's original order; lengths is a CPU int64 tensor.
    """
    data = sequence.data
    lengths = sequence._lengths()
    T = int(lengths.max())
    if total_length is not None:
        if total_length < T:
            raise ValueError(f"pad_packed_sequence: expected total_length to be at least the "
                             f"length of the longest sequence ({T}), got {total_length}.")
        T = total_length
    B = lengths.size
    t_idx, b_idx = _step_index(lengths)
    # every padded slot points at its step in data, or at one extra row of padding_value
    where = np.full((T, B), data.shape[0], np.int64)
    where[t_idx, b_idx] = np.arange(t_idx.size)
    if sequence.unsorted_indices is not None:
        unsorted = backend.to_numpy(sequence.unsorted_indices.array)
        where, lengths = where[:, unsorted], lengths[unsorted]
    if batch_first:
        where = where.T
    xp = backend.get_array_module(data.array)
    pad = _new(xp.full((1,) + tuple(data.shape[1:]), padding_value, data.array.dtype))
    padded = cat([data, pad], 0)[xp.asarray(where)]
    return padded, _new(lengths.astype(np.int64))


def pad_sequence(sequences, batch_first: bool = False, padding_value: float = 0.0,
                 padding_side: str = "right"):
    """Stack sequences of shape (L_i, *) into (T, B, *) (or (B, T, *)), padded."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"pad_sequence: padding_side must be 'left' or 'right', got "
                         f"{padding_side!r}")
    sequences = list(sequences)
    lengths = np.array([s.shape[0] for s in sequences], np.int64)
    T = int(lengths.max())
    data = cat(sequences, 0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    t = np.arange(T)[:, None]
    off = t - (T - lengths[None, :]) if padding_side == "left" else t
    exists = (off >= 0) & (off < lengths[None, :])
    where = np.where(exists, starts[None, :] + off, data.shape[0])
    if batch_first:
        where = where.T
    xp = backend.get_array_module(data.array)
    pad = _new(xp.full((1,) + tuple(data.shape[1:]), padding_value, data.array.dtype))
    return cat([data, pad], 0)[xp.asarray(where)]


def pack_sequence(sequences, enforce_sorted: bool = True) -> PackedSequence:
    """Pack a list of sequences (L_i, *) (decreasing lengths unless enforce_sorted=False)."""
    lengths = [s.shape[0] for s in sequences]
    return pack_padded_sequence(pad_sequence(sequences), lengths, enforce_sorted=enforce_sorted)


def unpad_sequence(padded_sequences, lengths, batch_first: bool = False):
    """The list of sequences (L_i, *) in a padded batch."""
    lengths = _as_int_array(lengths, "unpad_sequence")
    x = padded_sequences if batch_first else padded_sequences.transpose(0, 1)
    return [x[i, :int(n)] for i, n in enumerate(lengths)]


def unpack_sequence(packed_sequences: PackedSequence):
    """The list of sequences (L_i, *) in a PackedSequence, in the caller's order."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
