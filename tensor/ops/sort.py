"""Ordering ops: sort, argsort, topk (values differentiable through gather), and diag."""
from __future__ import annotations

import numpy as np

from .. import backend
from .._tensor import _new, from_op
from .elementwise import _xp
from .reduce import _dims, values_indices


def _order(xp, x, axis, descending, stable):
    """Indices that sort x along axis; NaN sorts as the largest value, as in PyTorch."""
    if not descending:
        return backend.argsort_stable(xp, x, axis) if stable else xp.argsort(x, axis=axis)
    # flip-sort-flip keeps equal elements in their original order (a stable descending sort)
    n = x.shape[axis]
    rev = xp.flip(x, axis)
    idx = xp.flip(backend.argsort_stable(xp, rev, axis), axis)
    return (n - 1) - idx


def _pick(a, axis, idx, name):
    """Values of a at idx along axis, differentiable (the gradient scatters back)."""
    xp = _xp(a)
    y = xp.take_along_axis(a.array, idx, axis)
    shape = a.array.shape
    it = _new(idx)  # captured: version-checked like any saved index

    def backward(gy):
        z = _new(xp.zeros(shape, gy.array.dtype))
        return (z.scatter_add(axis, it, gy),)
    return from_op(y, (a,), backward, name)


def sort(a, dim=-1, descending=False, stable=False):
    """(values, indices) sorted along dim, as torch.sort."""
    x = a.array
    if x.ndim == 0:
        return values_indices(a, _new(_xp(a).zeros((), np.int64)))  # on a's device
    (axis,) = _dims(dim, x.ndim, "sort")
    idx = _order(_xp(a), x, axis, descending, stable).astype(np.int64, copy=False)
    return values_indices(_pick(a, axis, idx, "sort"), _new(idx))


def argsort(a, dim=-1, descending=False, stable=False):
    """The indices of sort(a, dim, descending)."""
    return sort(a, dim, descending, stable).indices


def topk(a, k, dim=-1, largest=True, sorted=True):
    """(values, indices) of the k largest (or smallest) elements along dim, as torch.topk."""
    x = a.array
    nd = max(x.ndim, 1)
    (axis,) = _dims(dim, nd, "topk")
    n = x.shape[axis] if x.ndim else 1
    if not 0 <= k <= n:
        raise RuntimeError(f"topk: k ({k}) is out of range for dimension {dim} of size {n}; "
                           f"expected 0 <= k <= {n}.")
    xp = _xp(a)
    if x.ndim == 0:
        return values_indices(a, _new(_xp(a).zeros((), np.int64)))  # on a's device
    # a full stable sort: ties resolve to the lower index, like PyTorch's CPU topk
    idx = _order(xp, x, axis, largest, True)
    sl = [slice(None)] * x.ndim
    sl[axis] = slice(0, k)
    idx = xp.ascontiguousarray(idx[tuple(sl)]).astype(np.int64, copy=False)
    return values_indices(_pick(a, axis, idx, "topk"), _new(idx))


def diag(a, diagonal=0):
    """1-D input: a square matrix with it on the `diagonal`; 2-D input: that diagonal."""
    x = a.array
    xp = _xp(a)
    if x.ndim == 1:
        n = x.shape[0] + abs(diagonal)
        y = xp.zeros((n, n), x.dtype)
        rows = xp.arange(x.shape[0]) + max(-diagonal, 0)
        cols = xp.arange(x.shape[0]) + max(diagonal, 0)
        y[rows, cols] = x
        return from_op(y, (a,), lambda gy: (gy[rows, cols],), "diag")
    if x.ndim == 2:
        y = xp.diagonal(x, diagonal).copy()
        shape = x.shape
        k = y.shape[0]
        rows = xp.arange(k) + max(-diagonal, 0)
        cols = xp.arange(k) + max(diagonal, 0)

        def backward(gy):
            z = _new(xp.zeros(shape, gy.array.dtype))
            z[rows, cols] = gy  # recorded when create_graph: setitem is differentiable
            return (z,)
        return from_op(y, (a,), backward, "diag")
    raise RuntimeError(f"diag: expected a 1-D or 2-D tensor, got {x.ndim} dims.")
