"""Reductions with PyTorch's ``dim``/``keepdim``: sum, mean, prod, max/min, var/std, norm, ..."""
from __future__ import annotations

import builtins
import collections

import numpy as np

from .._autocast import policy as _policy
from .. import dtypes
from .._tensor import Tensor, _new, from_op
from .elementwise import _xp

values_indices = collections.namedtuple("return_types", ["values", "indices"])


def _dims(dim, ndim, op="reduce"):
    """Normalise dim (None, int, or sequence) to a sorted tuple of non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    if isinstance(dim, (int, np.integer)):
        dim = (int(dim),)
    out = []
    n = builtins.max(ndim, 1)
    for d in dim:
        if not -n <= d < n:
            raise IndexError(f"{op}: dim {d} is out of range for a tensor with {ndim} dims; "
                             f"expected a dim in [{-n}, {n - 1}].")
        out.append(d % n if ndim else 0)
    if len(set(out)) != len(out):
        raise RuntimeError(f"{op}: dim {tuple(dim)} names a dimension twice")
    return tuple(sorted(out)) if ndim else ()


def _kept_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _expand_back(g: Tensor, shape, axes, keepdim) -> Tensor:
    """Broadcast a reduced gradient back over the reduced axes (differentiable)."""
    if not keepdim and axes:
        g = g.reshape(_kept_shape(shape, axes))
    return g.expand(shape)


def _prep(a, dim, dtype, op):
    """The input array of an accumulating reduction (ints accumulate as int64, as PyTorch),
    its shape and the reduced axes."""
    x = a.array
    if dtype is not None:
        x = x.astype(dtypes.as_dtype(dtype))
    elif x.dtype.kind in "biu":
        x = x.astype(np.int64)
    return x, x.shape, _dims(dim, x.ndim, op)


def sum(a, dim=None, keepdim=False, dtype=None):
    """Sum over `dim` (all dims when None). Integer and bool inputs sum as int64, as PyTorch."""
    x, shape, axes = _prep(a, dim, dtype, "sum")
    y = x.sum(axis=axes, keepdims=keepdim)

    def backward(gy):
        return (_expand_back(gy, shape, axes, keepdim),)
    return from_op(y, (a,), backward, "sum")


def mean(a, dim=None, keepdim=False, dtype=None):
    """Mean over `dim`; floating inputs only, as PyTorch."""
    x = a.array
    if dtype is not None:
        x = x.astype(dtypes.as_dtype(dtype))
    if x.dtype.kind != "f":
        raise RuntimeError(f"mean(): could not infer output dtype. Input dtype must be a floating "
                           f"point dtype, got {x.dtype}; use .float() first.")
    shape = x.shape
    axes = _dims(dim, x.ndim, "mean")
    y = x.mean(axis=axes, keepdims=keepdim)
    n = 1
    for i in axes:
        n *= shape[i]
    scale = 1.0 / n if n else float("nan")

    def backward(gy):
        return (_expand_back(gy * scale, shape, axes, keepdim),)
    return from_op(y, (a,), backward, "mean")


def prod(a, dim=None, keepdim=False, dtype=None):
    """Product over `dim`; the gradient is exact where inputs contain zeros, too."""
    x, shape, axes = _prep(a, dim, dtype, "prod")
    y = x.prod(axis=axes, keepdims=keepdim)

    def backward(gy, out):
        xp = _xp(a)
        if not bool((a.array == 0).any()):
            return (_expand_back(gy, shape, axes, keepdim) *
                    _expand_back(out, shape, axes, keepdim) / a,)
        # exclusive products along the flattened reduced axes (first-order only)
        rest = [i for i in range(len(shape)) if i not in axes]
        perm = rest + list(axes)
        xt = xp.transpose(a.array, perm).reshape([shape[i] for i in rest] + [-1])
        ones = xp.ones(xt.shape[:-1] + (1,), xt.dtype)
        left = xp.cumprod(xp.concatenate([ones, xt[..., :-1]], -1), -1)
        right = xp.flip(xp.cumprod(xp.concatenate([ones, xp.flip(xt, -1)[..., :-1]], -1), -1), -1)
        excl = (left * right).reshape([shape[i] for i in perm])
        inv = tuple(np.argsort(perm).tolist())  # axes as ints: CuPy takes no numpy array here
        excl = xp.transpose(excl, inv)
        return (_expand_back(gy, shape, axes, keepdim) * _new(excl),)
    return from_op(y, (a,), backward, "prod", save_output=True)


def _extreme(a, dim, keepdim, is_max):
    name = "max" if is_max else "min"
    x = a.array
    xp = _xp(a)
    if dim is None:
        if x.size == 0:
            raise RuntimeError(f"{name}(): expected a non-empty tensor; reduce over a dim "
                               "or check the input.")
        y = x.max() if is_max else x.min()
        y = xp.asarray(y)

        def backward(gy):
            # ties share the gradient evenly, as PyTorch
            mask = (a.array == y)
            return (gy * _new((mask / mask.sum()).astype(x.dtype, copy=False)),)
        return from_op(y, (a,), backward, name)
    (axis,) = _dims(dim, x.ndim, name)
    idx = (xp.argmax(x, axis=axis) if is_max else xp.argmin(x, axis=axis))
    idx_k = xp.expand_dims(idx, axis) if x.ndim else idx
    vals = xp.take_along_axis(x, idx_k, axis) if x.ndim else x.copy()
    shape = x.shape
    if not keepdim and x.ndim:
        vals = xp.squeeze(vals, axis)
    idx_out = idx_k if keepdim else idx

    nd = x.ndim

    def backward(gy):
        if nd == 0:
            return (gy,)
        g = gy if keepdim else gy.unsqueeze(axis)
        z = _new(xp.zeros(shape, g.array.dtype))
        return (z.scatter_add(axis, _new(idx_k), g),)
    v = from_op(vals, (a,), backward, name)
    return values_indices(v, _new(idx_out.astype(np.int64, copy=False)))


def max(a, dim=None, keepdim=False):
    """max(a) -> value; max(a, dim) -> (values, indices); max(a, b) -> elementwise maximum."""
    if isinstance(dim, Tensor):
        from .elementwise import maximum
        return maximum(a, dim)
    r = _extreme(a, dim, keepdim, True)
    return r


def min(a, dim=None, keepdim=False):
    """min(a) -> value; min(a, dim) -> (values, indices); min(a, b) -> elementwise minimum."""
    if isinstance(dim, Tensor):
        from .elementwise import minimum
        return minimum(a, dim)
    return _extreme(a, dim, keepdim, False)


def _amax(a, dim, keepdim, is_max):
    x = a.array
    axes = _dims(dim, x.ndim, "amax")
    y = x.max(axis=axes, keepdims=True) if is_max else x.min(axis=axes, keepdims=True)
    shape = x.shape
    yk = y
    if not keepdim:
        y = y.reshape(tuple(s for i, s in enumerate(shape) if i not in axes))

    def backward(gy):
        mask = (a.array == yk)
        w = (mask / mask.sum(axis=axes, keepdims=True)).astype(x.dtype, copy=False)
        return (_expand_back(gy, shape, axes, keepdim) * _new(w),)
    return from_op(y, (a,), backward, "amax" if is_max else "amin")


def amax(a, dim=None, keepdim=False):
    """Max over dims; ties split the gradient evenly."""
    return _amax(a, dim, keepdim, True)


def amin(a, dim=None, keepdim=False):
    """Min over dims; ties split the gradient evenly."""
    return _amax(a, dim, keepdim, False)


def _arg(a, dim, keepdim, is_max):
    xp = _xp(a)
    fn = xp.argmax if is_max else xp.argmin
    if dim is None:
        return _new(xp.asarray(fn(a.array)).astype(np.int64))
    (axis,) = _dims(dim, a.array.ndim, "argmax" if is_max else "argmin")
    r = fn(a.array, axis=axis)
    return _new((xp.expand_dims(r, axis) if keepdim else r).astype(np.int64, copy=False))


def argmax(a, dim=None, keepdim=False):
    """Index of the max (of the flattened tensor when dim is None), int64."""
    return _arg(a, dim, keepdim, True)


def argmin(a, dim=None, keepdim=False):
    """Index of the min (of the flattened tensor when dim is None), int64."""
    return _arg(a, dim, keepdim, False)


def var(a, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """Variance with Bessel's `correction` (default 1), as torch.var."""
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    axes = _dims(dim, a.array.ndim, "var")
    n = 1
    for i in axes:
        n *= a.array.shape[i]
    d = a - mean(a, axes, keepdim=True)
    return sum(d * d, axes, keepdim=keepdim) / (n - correction if n > correction else float("nan"))


def std(a, dim=None, unbiased=None, keepdim=False, *, correction=None):
    """Standard deviation (sqrt of var)."""
    return var(a, dim, unbiased, keepdim, correction=correction).sqrt()


def var_mean(a, dim=None, unbiased=None, keepdim=False, *, correction=None):
    return var(a, dim, unbiased, keepdim, correction=correction), mean(a, dim, keepdim)


@_policy("logsumexp")
def logsumexp(a, dim, keepdim=False):
    """log(sum(exp(a))) over `dim`, stable for large inputs."""
    axes = _dims(dim, a.array.ndim, "logsumexp")
    xp = _xp(a)
    m = a.array.max(axis=axes, keepdims=True) if a.array.size else xp.zeros(
        _kept_shape(a.array.shape, axes), a.array.dtype)
    m = xp.where(xp.isfinite(m), m, 0)
    mt = _new(m)
    s = (a - mt).exp().sum(axes, keepdim=True).log() + mt
    if not keepdim:
        s = s.reshape(tuple(d for i, d in enumerate(a.array.shape) if i not in axes))
    return s


def norm(a, p="fro", dim=None, keepdim=False):
    """Vector p-norm over dims (p = 2 / 'fro', 1, inf, -inf, 0 or any float)."""
    if p in ("fro", 2, 2.0):
        return (a * a).sum(dim, keepdim=keepdim).sqrt()
    if p == 1:
        return a.abs().sum(dim, keepdim=keepdim)
    if p == float("inf"):
        return a.abs().amax(dim, keepdim=keepdim)
    if p == float("-inf"):
        return a.abs().amin(dim, keepdim=keepdim)
    if p == 0:
        return (a != 0).sum(dim, keepdim=keepdim).to(a.dtype)
    if isinstance(p, (int, float)):
        return (a.abs() ** p).sum(dim, keepdim=keepdim) ** (1.0 / p)
    raise ValueError(f"norm: unsupported p={p!r}; expected a number, inf or 'fro'")


def all(a, dim=None, keepdim=False):
    axes = _dims(dim, a.array.ndim, "all")
    return _new(_xp(a).asarray(a.array.astype(bool).all(axis=axes, keepdims=keepdim)))


def any(a, dim=None, keepdim=False):
    axes = _dims(dim, a.array.ndim, "any")
    return _new(_xp(a).asarray(a.array.astype(bool).any(axis=axes, keepdims=keepdim)))


def count_nonzero(a, dim=None):
    axes = _dims(dim, a.array.ndim, "count_nonzero")
    return _new(_xp(a).asarray((a.array != 0).sum(axis=axes)).astype(np.int64))


def cumsum(a, dim, dtype=None):
    """Cumulative sum along dim."""
    (axis,) = _dims(dim, a.array.ndim, "cumsum")
    x = a.array if dtype is None else a.array.astype(dtypes.as_dtype(dtype))
    if dtype is None and x.dtype.kind in "biu":
        x = x.astype(np.int64)
    y = _xp(a).cumsum(x, axis=axis)
    return from_op(y, (a,), lambda gy: (gy.flip(axis).cumsum(axis).flip(axis),), "cumsum")


def cumprod(a, dim):
    (axis,) = _dims(dim, a.array.ndim, "cumprod")
    y = _xp(a).cumprod(a.array, axis=axis)

    def backward(gy, out):
        # d out_j / d x_i = out_j / x_i for j >= i (inputs without zeros)
        return ((gy * out).flip(axis).cumsum(axis).flip(axis) / a,)
    return from_op(y, (a,), backward, "cumprod", save_output=True)

