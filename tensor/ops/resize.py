"""Padding and resampling: pad (constant, reflect, replicate, circular) and interpolate.

Both are built from differentiable pieces. Constant padding's adjoint is cropping, which is
constant padding by the negated amounts, so ``pad`` is its own backward. The other modes, and
interpolation, gather along one dim at a time with integer index arrays (index_select), so
autograd's scatter-add does their backward; linear modes are separable, one dim at a time.
"""
from __future__ import annotations

import math

import numpy as np

from .._tensor import _new, from_op
from .elementwise import _xp

_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad(input, pad, mode="constant", value=None):
    """Pad the last len(pad)//2 dims, as torch.nn.functional.pad.

    pad is (left_last, right_last, left_second_last, ...); negative amounts crop.
    """
    pad = tuple(int(p) for p in pad)
    nd = input.array.ndim
    if len(pad) % 2 or len(pad) // 2 > nd:
        raise ValueError(f"pad: padding length must be even and at most 2 * input.dim() "
                         f"({2 * nd}), got {len(pad)} values {pad}.")
    if mode not in _PAD_MODES:
        raise ValueError(f"pad: mode must be one of {_PAD_MODES}, got {mode!r}")
    if mode != "constant":
        if value:
            raise ValueError(f"pad: padding mode {mode!r} doesn't take in value argument.")
        k = len(pad) // 2
        if not (1 <= k <= 3 and nd in (k + 1, k + 2)):
            raise ValueError(f"pad: {mode} padding of the last {k} dims needs a {k + 1}-D or "
                             f"{k + 2}-D input (as PyTorch), got {nd}-D; pad 2, 4 or 6 values "
                             f"for 2-3-D, 3-4-D or 4-5-D inputs.")
        return _index_pad(input, pad, mode)
    # per dim (from the last): (before, after)
    pairs = [(0, 0)] * (nd - len(pad) // 2) + [(pad[2 * i], pad[2 * i + 1])
                                              for i in reversed(range(len(pad) // 2))]
    xp = _xp(input)
    x = input.array
    shape = tuple(n + a + b for n, (a, b) in zip(x.shape, pairs))
    if min(shape, default=1) < 0:
        raise RuntimeError(f"pad: the padded shape {list(shape)} of input {list(x.shape)} with "
                           f"pad {pad} has a negative size.")
    y = xp.full(shape, 0 if value is None else value, x.dtype)
    src = tuple(slice(max(-a, 0), n - max(-b, 0)) for n, (a, b) in zip(x.shape, pairs))
    dst = tuple(slice(max(a, 0), m - max(b, 0)) for m, (a, b) in zip(shape, pairs))
    y[dst] = x[src]
    neg = tuple(-p for p in pad)
    return from_op(y, (input,), lambda gy: (_constant_pad(gy, neg),), "constant_pad_nd")


def _constant_pad(t, amounts):
    return pad(t, amounts, "constant", 0)


def _index_pad(input, amounts, mode):
    """reflect / replicate / circular padding as a gather along each padded dim."""
    xp = _xp(input)
    out = input
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    for i in range(len(amounts) // 2):
        dim = input.array.ndim - 1 - i
        a, b = amounts[2 * i], amounts[2 * i + 1]
        n = input.array.shape[dim]
        if mode in ("reflect", "circular") and (max(a, b) > n - (mode == "reflect")):
            raise ValueError(f"pad: {mode} padding ({a}, {b}) at dim {dim} must be less than "
                             f"{'' if mode == 'reflect' else 'or equal to '}the input size "
                             f"{n} there (input shape {list(input.array.shape)}).")
        if n == 0:
            raise ValueError(f"pad: {mode} padding needs a non-empty dim {dim}.")
        idx = np.pad(np.arange(n), (max(a, 0), max(b, 0)), mode=np_mode)
        idx = idx[max(-a, 0):len(idx) - max(-b, 0)]
        out = out.index_select(dim, _new(xp.asarray(idx)))
    return out


def _source_index(n_in, n_out, scale, align_corners, mode):
    """Per output index: (i0, i1, weight of i1) for linear modes, or i0 for nearest ones."""
    o = np.arange(n_out)
    if mode in ("nearest", "nearest-exact"):
        # PyTorch computes nearest indices in float32
        s = np.float32(n_in / n_out if scale is None else 1.0 / scale)
        if mode == "nearest":
            src = np.floor(o.astype(np.float32) * s)
        else:
            src = np.floor((o.astype(np.float32) + np.float32(0.5)) * s)
        return np.minimum(src.astype(np.int64), n_in - 1)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        s = n_in / n_out if scale is None else 1.0 / scale
        src = np.maximum(s * (o + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


_LINEAR = {"linear": 3, "bilinear": 4, "trilinear": 5}


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """Resample the spatial dims (N, C, *spatial), as torch.nn.functional.interpolate.

    Modes: nearest, nearest-exact, linear / bilinear / trilinear (align_corners), area.
    """
    op = "interpolate"
    x = input.array
    nsp = x.ndim - 2
    if nsp < 1:
        raise ValueError(f"{op}: expected an input (N, C, *spatial) with at least 3 dims, got "
                         f"shape {list(x.shape)}.")
    if mode in _LINEAR and x.ndim != _LINEAR[mode]:
        raise ValueError(f"{op}: mode {mode!r} expects a {_LINEAR[mode]}-D input, got "
                         f"{x.ndim}-D.")
    if mode not in ("nearest", "nearest-exact", "area") and mode not in _LINEAR:
        raise ValueError(f"{op}: mode {mode!r} is not supported by zgrad; use nearest, "
                         f"nearest-exact, linear, bilinear, trilinear or area.")
    if align_corners is not None and mode not in _LINEAR:
        raise ValueError(f"{op}: align_corners option can only be set with the interpolating "
                         f"modes: linear | bilinear | trilinear.")
    if antialias:
        raise ValueError(f"{op}: antialias=True is not supported by zgrad.")
    sizes, scales = _out_sizes(op, x.shape[2:], size, scale_factor, recompute_scale_factor)
    if mode == "area":
        from .pool import adaptive_avg_pool1d, adaptive_avg_pool2d
        if nsp > 2:
            raise ValueError(f"{op}: mode 'area' supports 3-D and 4-D inputs in zgrad.")
        return (adaptive_avg_pool1d if nsp == 1 else adaptive_avg_pool2d)(input, sizes)
    xp = _xp(input)
    out = input
    for k in range(nsp):
        dim, n_in = 2 + k, x.shape[2 + k]
        idx = _source_index(n_in, sizes[k], scales[k], bool(align_corners), mode)
        if mode in _LINEAR:
            i0, i1, lam = idx
            shape = [1] * x.ndim
            shape[dim] = -1
            w1 = _new(xp.asarray(lam.reshape(shape), dtype=x.dtype))
            w0 = _new(xp.asarray((1.0 - lam).reshape(shape), dtype=x.dtype))
            out = (out.index_select(dim, _new(xp.asarray(i0))) * w0
                   + out.index_select(dim, _new(xp.asarray(i1))) * w1)
        else:
            out = out.index_select(dim, _new(xp.asarray(idx)))
    return out


def _out_sizes(op, in_sizes, size, scale_factor, recompute_scale_factor):
    """Output sizes, and the scales used for coordinates (None: use in/out)."""
    n = len(in_sizes)
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: exactly one of size or scale_factor must be given.")
    if size is not None:
        sizes = [size] * n if isinstance(size, int) else list(size)
        if len(sizes) != n:
            raise ValueError(f"{op}: size {size} must have {n} entries for {n} spatial dims.")
        return [int(s) for s in sizes], [None] * n
    scales = [scale_factor] * n if isinstance(scale_factor, (int, float)) else list(scale_factor)
    if len(scales) != n:
        raise ValueError(f"{op}: scale_factor {scale_factor} must have {n} entries.")
    sizes = [int(math.floor(s_in * float(s))) for s_in, s in zip(in_sizes, scales)]
    if min(sizes) <= 0:
        raise ValueError(f"{op}: the output size {sizes} must be positive.")
    return sizes, ([None] * n if recompute_scale_factor else [float(s) for s in scales])
