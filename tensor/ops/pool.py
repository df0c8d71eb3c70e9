"""Pooling: max_pool (with indices), avg_pool, adaptive_avg_pool, in 1-d and 2-d.

Windows are strided views of the padded input (see Note [im2col layout] in conv.py): the
reductions run over the kh*kw kernel offsets, each a whole-array op, never over pixels.
max_pool's backward is fused (a scatter of the gradient to each window's argmax, looping over
kernel offsets); under create_graph it is a differentiable scatter_add. avg_pool's backward is
built from differentiable ops (col2im of the spread gradient), so it needs no special case.
adaptive_avg_pool is separable: a constant averaging matrix on each side (P_H @ x @ P_W^T),
which handles output sizes that do not divide the input.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .._grad_mode import state as _grad_state
from .._tensor import _new, from_op
from .conv import Geom, _fold, _padded, _tuple, _windows, offset_slices, padded_hw
from .elementwise import _xp


def _pool_out(op, size, k, s, p, d, ceil_mode):
    """Output length of a pooling window (PyTorch's pooling_output_shape)."""
    if p < 0 or 2 * p > d * (k - 1) + 1:
        raise ValueError(f"{op}: pad should be at most half of effective kernel size, but got "
                         f"pad={p}, kernel_size={k} and dilation={d}.")
    num = size + 2 * p - d * (k - 1) - 1
    n = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= size + p:  # the last window must start inside the input
        n -= 1
    if n <= 0:
        raise RuntimeError(f"{op}: input size {size} (padding {p}) is too small for kernel "
                           f"{k} with dilation {d}; the output would be empty.")
    return n


def _pool_geom(op, x, kernel_size, stride, padding, dilation, ceil_mode) -> Geom:
    if x.ndim != 4:
        raise RuntimeError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got "
                           f"shape {list(x.shape)}.")
    k = _tuple(kernel_size, 2, "kernel_size", op)
    s = k if stride is None or stride == () or stride == [] else _tuple(stride, 2, "stride", op)
    p, d = _tuple(padding, 2, "padding", op), _tuple(dilation, 2, "dilation", op)
    if min(k) <= 0 or min(s) <= 0 or min(d) <= 0:
        raise ValueError(f"{op}: kernel_size, stride and dilation must be positive, got "
                         f"kernel_size={k}, stride={s}, dilation={d}.")
    _, C, H, W = x.shape
    OH = _pool_out(op, H, k[0], s[0], p[0], d[0], ceil_mode)
    OW = _pool_out(op, W, k[1], s[1], p[1], d[1], ceil_mode)
    return Geom(C, H, W, k[0], k[1], s[0], s[1], d[0], d[1], p[0], p[0], p[1], p[1], OH, OW)


def _unbatched(fn, input, *args):
    """Run a 2-d pooling function on a (C, H, W) input as a batch of one."""
    out = fn(input.unsqueeze(0), *args)
    if isinstance(out, tuple):
        return tuple(o.squeeze(0) for o in out)
    return out.squeeze(0)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over windows, as torch.nn.functional.max_pool2d (NaN propagates, as PyTorch).

    With return_indices, also the flat index (h * W + w) of each maximum in its input plane.
    """
    if input.array.ndim == 3:
        return _unbatched(max_pool2d, input, kernel_size, stride, padding, dilation,
                          ceil_mode, return_indices)
    op = "max_pool2d"
    xp = _xp(input)
    x = input.array
    g = _pool_geom(op, x, kernel_size, stride, padding, dilation, ceil_mode)
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    win = _windows(xp, _padded(xp, x, g, fill), g)
    # on a GPU the NaN-aware pass runs at once (the same result without NaNs): deciding on the
    # host would wait for the device every step
    on_host = backend.host_reads_free(xp)
    y, arg = _window_max(xp, win, g, nan_aware=not on_host and x.dtype.kind == "f")
    if on_host and x.dtype.kind == "f" and bool(xp.isnan(y).any()):
        # a NaN reached the output (max propagates it): redo the argmax the way PyTorch's CPU
        # kernel picks among NaNs; the common NaN-free case skips this check per offset
        y, arg = _window_max(xp, win, g, nan_aware=True)
    indices = _flat_indices(xp, arg, g) if return_indices else None
    # windows that tile the input exactly (stride == kernel, no padding) write each input once
    tiles = (g.sh, g.sw, g.dh, g.dw) == (g.kh, g.kw, 1, 1) and (g.pt, g.pl) == (0, 0) and \
        (g.OH * g.kh, g.OW * g.kw) == (g.H, g.W)

    def backward(gy):
        if _grad_state.enabled:  # create_graph: a differentiable scatter to the argmax
            idx = indices if indices is not None else _flat_indices(xp, arg, g)
            n, c = gy.shape[:2]
            z = _new(xp.zeros((n, c, g.H * g.W), gy.dtype))
            L = g.OH * g.OW
            return (z.scatter_add(2, idx.reshape(n, c, L), gy.reshape(n, c, L))
                    .reshape(n, c, g.H, g.W),)
        gyd = gy.array
        if tiles:
            gx = xp.empty(x.shape, gyd.dtype)
            for off in range(g.kh * g.kw):
                xp.multiply(gyd, arg == off, out=gx[offset_slices(g, off // g.kw, off % g.kw)])
            return (_new(gx),)
        acc = xp.zeros(x.shape[:2] + padded_hw(g), gyd.dtype)
        for off in range(g.kh * g.kw):
            acc[offset_slices(g, off // g.kw, off % g.kw)] += gyd * (arg == off)
        return (_new(xp.ascontiguousarray(acc[:, :, g.pt:g.pt + g.H, g.pl:g.pl + g.W])),)
    out = from_op(y, (input,), backward, "max_pool2d_with_indices")
    return (out, indices) if return_indices else out


def _window_max(xp, win, g: Geom, nan_aware: bool):
    """(max, offset of the max) over each window, looping over kernel offsets, not pixels.

    Ties keep the first offset; with nan_aware a NaN wins over numbers and a later NaN over an
    earlier one, as PyTorch's CPU kernel (``val > max || isnan(val)``).
    """
    y = win[:, :, 0, 0].copy()
    arg = xp.zeros(y.shape, np.int8 if g.kh * g.kw <= 127 else np.int32)  # int8: less traffic
    for off in range(1, g.kh * g.kw):
        v = win[:, :, off // g.kw, off % g.kw]
        better = v > y
        if nan_aware:
            better |= v != v
        # arithmetic update: several times faster than copyto(where=) or boolean assignment
        arg += better * (off - arg)
        xp.maximum(y, v, out=y)  # propagates NaN, as PyTorch
    return y, arg


def _flat_indices(xp, arg, g: Geom):
    """int64 flat positions (h * W + w) in the unpadded input plane of each window's max."""
    arg = arg.astype(np.int64)
    i, j = arg // g.kw, arg % g.kw
    h = (xp.arange(g.OH) * g.sh - g.pt)[:, None] + i * g.dh
    w = (xp.arange(g.OW) * g.sw - g.pl)[None, :] + j * g.dw
    return _new((h * g.W + w).astype(np.int64))


def _avg_counts(n_out, size, k, s, p, count_include_pad):
    """Each window's element count along one dim (PyTorch's avg_pool divisor rules)."""
    start = np.arange(n_out) * s - p
    end = np.minimum(start + k, size + p)  # padding counts, ceil_mode's overhang does not
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """Mean over windows, as torch.nn.functional.avg_pool2d."""
    if input.array.ndim == 3:
        return _unbatched(avg_pool2d, input, kernel_size, stride, padding, ceil_mode,
                          count_include_pad, divisor_override)
    op = "avg_pool2d"
    xp = _xp(input)
    x = input.array
    g = _pool_geom(op, x, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and divisor_override == 0:
        raise ValueError(f"{op}: divisor_override must be non-zero.")

    def inverse_divisors():
        if divisor_override is not None:
            return np.full((g.OH, g.OW), 1.0 / float(divisor_override))
        return 1.0 / np.outer(_avg_counts(g.OH, g.H, g.kh, g.sh, g.pt, count_include_pad),
                              _avg_counts(g.OW, g.W, g.kw, g.sw, g.pl, count_include_pad))
    inv = _constant(xp, x, ("avg", g.OH, g.OW, g.H, g.W, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl,
                            count_include_pad, divisor_override), inverse_divisors)
    y = _windows(xp, _padded(xp, x, g), g).sum(axis=(2, 3)) * inv
    N = x.shape[0]

    def backward(gy):
        # linear: spread gy * inv over every window position, then col2im (differentiable)
        gs = (gy * _new(inv)).permute(1, 0, 2, 3).unsqueeze(1)
        cols = gs.expand(g.C, g.kh * g.kw, N, g.OH, g.OW).reshape(g.C * g.kh * g.kw,
                                                                 N * g.OH * g.OW)
        return (_fold(cols, g, N),)
    return from_op(y, (input,), backward, "avg_pool2d")


_constants: dict = {}   # (device, dtype, geometry) -> a read-only constant array on that GPU


def _constant(xp, x, key, make):
    """make()'s numpy array in x's dtype on x's device. On a GPU it is copied there once per
    device, dtype and key, and reused: no host-to-device copy per call (which a CUDA graph
    capture refuses). Callers never write to it."""
    if xp is np:
        return make().astype(x.dtype, copy=False)
    k = (backend.device_of(x).index, x.dtype.str) + key
    a = _constants.get(k)
    if a is None:
        a = _constants[k] = xp.asarray(make(), dtype=x.dtype)
    return a


def _adaptive_matrix(xp, x, n_in, n_out):
    """(n_out, n_in) averaging matrix: row o averages [floor(o*n/m), ceil((o+1)*n/m))."""
    def make():
        o = np.arange(n_out)
        start = (o * n_in) // n_out
        end = -((-(o + 1) * n_in) // n_out)
        i = np.arange(n_in)
        return ((i >= start[:, None]) & (i < end[:, None])) / (end - start)[:, None]
    return _new(_constant(xp, x, ("adaptive", n_in, n_out), make))


def adaptive_avg_pool2d(input, output_size):
    """Mean over adaptive windows to a fixed (OH, OW), as torch.nn.functional.adaptive_avg_pool2d.

    Separable: P_H @ x @ P_W^T with constant averaging matrices (exact for sizes that don't
    divide); autograd goes through matmul.
    """
    op = "adaptive_avg_pool2d"
    x = input.array
    if x.ndim not in (3, 4):
        raise RuntimeError(f"{op}: expected a 3-D or 4-D input, got shape {list(x.shape)}.")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2:
        raise ValueError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
    H, W = x.shape[-2:]
    OH, OW = (H if size[0] is None else size[0]), (W if size[1] is None else size[1])
    if OH <= 0 or OW <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {output_size!r}")
    xp = _xp(input)
    y = input
    if OW != W:
        y = y @ _adaptive_matrix(xp, x, W, OW).mT
    if OH != H:
        y = _adaptive_matrix(xp, x, H, OH) @ y
    return y if y is not input else input.clone()


def _as_2d(op, v, fill, name):
    if v is None:
        return None
    (a,) = _tuple(v, 1, name, op)
    return (fill, a)


def _pool1d(op, fn, input, kernel_size, stride, padding, *rest):
    if input.array.ndim not in (2, 3):
        raise RuntimeError(f"{op}: expected a 2-D (C, L) or 3-D (N, C, L) input, got shape "
                           f"{list(input.array.shape)}.")
    out = fn(input.unsqueeze(-2), _as_2d(op, kernel_size, 1, "kernel_size"),
             _as_2d(op, stride, 1, "stride"), _as_2d(op, padding, 0, "padding"), *rest)
    if isinstance(out, tuple):
        return tuple(o.squeeze(-2) for o in out)
    return out.squeeze(-2)


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """Max over windows of (N, C, L), as torch.nn.functional.max_pool1d."""
    return _pool1d("max_pool1d", max_pool2d, input, kernel_size, stride, padding,
                   _as_2d("max_pool1d", dilation, 1, "dilation"), ceil_mode, return_indices)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    """Mean over windows of (N, C, L), as torch.nn.functional.avg_pool1d."""
    return _pool1d("avg_pool1d", avg_pool2d, input, kernel_size, stride, padding, ceil_mode,
                   count_include_pad)


def adaptive_avg_pool1d(input, output_size):
    """Mean over adaptive windows of (N, C, L) to length output_size."""
    (n,) = _tuple(output_size, 1, "output_size", "adaptive_avg_pool1d")
    return adaptive_avg_pool2d(input.unsqueeze(-2), (1, n)).squeeze(-2)


__all__ = ["max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
           "adaptive_avg_pool2d"]
