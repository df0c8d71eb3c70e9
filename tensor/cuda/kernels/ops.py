"""Fused GELU, LayerNorm and softmax + cross-entropy (see Note [Fused kernels]).

Each ``applies_*`` is the whole dispatch test the op asks (cheap: attribute checks, no device
work); each op returns a Tensor built with ``from_op`` exactly as its eager twin would, with
the same node name and saved tensors.
"""
from __future__ import annotations

import math

import numpy as np

from ... import backend
from ..._grad_mode import state as _grad_state
from ..._tensor import Tensor, _new, from_op
from . import _graph_backward, fusable, grid_1d, kernel, row_block

_INT32_MAX = 2 ** 31 - 1


def _grad_array(gy, like):
    """gy's array as a C-contiguous array of like's dtype (gradients may arrive broadcast)."""
    g = gy.array
    if g.dtype != like.dtype:
        g = g.astype(like.dtype)
    return backend.cupy.ascontiguousarray(g)


# -- GELU ------------------------------------------------------------------------------------
def applies_gelu(a, approximate) -> bool:
    return approximate in ("none", "tanh") and fusable(a.array)


def gelu(a, approximate: str = "none"):
    """GELU forward and backward as one elementwise kernel each."""
    cp = backend.cupy
    x = a.array
    n, approx = x.size, np.int32(approximate == "tanh")
    y = cp.empty_like(x)
    kernel("gelu", "gelu_fwd", x.dtype)(grid_1d(n), (256,), (x, y, np.int64(n), approx))

    def backward(gy):
        if _grad_state.enabled:  # create_graph: see Note [Fused kernels]
            from ...ops.elementwise import gelu as eager
            return _graph_backward(lambda: eager(a, approximate), (a,), gy)
        gx = cp.empty_like(x)
        kernel("gelu", "gelu_bwd", x.dtype)(grid_1d(n), (256,),
                                            (x, _grad_array(gy, x), gx, np.int64(n), approx))
        return (_new(gx),)
    return from_op(y, (a,), backward, "gelu")


# -- LayerNorm -------------------------------------------------------------------------------
def _same(p, x) -> bool:
    a = p.array
    return (isinstance(a, backend.cupy.ndarray) and a.dtype == x.dtype and a.flags.c_contiguous
            and a.device.id == x.device.id)


def applies_layer_norm(input, weight, bias) -> bool:
    """Called after layer_norm checked the shapes; float32/64 contiguous x, weight, bias."""
    x = input.array
    if not fusable(x) or x.size > _INT32_MAX * 1024:
        return False
    return all(p is None or _same(p, x) for p in (weight, bias))


def layer_norm(input, shape, weight, bias, eps):
    """LayerNorm over the trailing `shape`: one block per row each way, saving mean and rstd;
    dweight / dbias as a two-stage column reduction."""
    cp = backend.cupy
    x = input.array
    n = math.prod(shape)
    rows = x.size // n
    dt = x.dtype.type
    block = row_block(n)
    w = weight.array if weight is not None else x  # a placeholder when absent (flag says so)
    b = bias.array if bias is not None else x
    has_w, has_b = np.int32(weight is not None), np.int32(bias is not None)
    y = cp.empty_like(x)
    mean = cp.empty(rows, x.dtype)
    rstd = cp.empty(rows, x.dtype)
    kernel("layer_norm", "ln_fwd", x.dtype)((rows,), (block,),
                                            (x, w, b, y, mean, rstd, np.int32(n), dt(eps),
                                             has_w, has_b))

    def backward(gy):
        if _grad_state.enabled:  # create_graph: see Note [Fused kernels]
            from ...ops.norm import layer_norm as eager
            return _graph_backward(lambda: eager(input, shape, weight, bias, eps),
                                   (input, weight, bias), gy)
        g = _grad_array(gy, x)
        gx = gw = gb = None
        if input.requires_grad:
            gx = cp.empty_like(x)
            kernel("layer_norm", "ln_bwd_dx", x.dtype)((rows,), (block,),
                                                       (x, w, g, mean, rstd, gx, np.int32(n),
                                                        has_w))
            gx = _new(gx)
        need_w = weight is not None and weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        if need_w or need_b:
            gw, gb = _layer_norm_dwdb(x, g, mean, rstd, rows, n)
            gw = _new(gw.reshape(shape)) if need_w else None
            gb = _new(gb.reshape(shape)) if need_b else None
        return gx, gw, gb
    return from_op(y, (input, weight, bias), backward, "native_layer_norm",
                   saved=tuple(p for p in (input, weight) if p is not None))


def _layer_norm_dwdb(x, g, mean, rstd, rows, n):
    """Column sums of g * xhat and g: partials over R row slices, then one pass over them."""
    cp = backend.cupy
    col_blocks = (n + 31) // 32
    R = max(1, min((rows + 63) // 64, max(1, 1024 // col_blocks)))
    gw = cp.empty(n, x.dtype)
    gb = cp.empty(n, x.dtype)
    pw, pb = (gw, gb) if R == 1 else (cp.empty((R, n), x.dtype), cp.empty((R, n), x.dtype))
    kernel("layer_norm", "ln_bwd_dwdb_partial", x.dtype)((col_blocks, R), (32, 8),
                                                         (x, g, mean, rstd, pw, pb,
                                                          np.int64(rows), np.int32(n)))
    if R > 1:
        kernel("layer_norm", "ln_bwd_dwdb_final", x.dtype)(grid_1d(n, cap=1 << 20), (256,),
                                                           (pw, pb, gw, gb, np.int32(R),
                                                            np.int32(n)))
    return gw, gb


# -- softmax / log_softmax ---------------------------------------------------------------------
def applies_softmax(d, axis) -> bool:
    """d: the (cast) input array of softmax / log_softmax; fused over a contiguous last axis."""
    return (d.ndim >= 1 and axis == d.ndim - 1 and fusable(d)
            and d.size // d.shape[-1] <= _INT32_MAX)


def softmax(x, d, log: bool):
    """softmax or log_softmax of d (x's array, maybe cast by dtype=) over its last axis: one row
    kernel each way, the backward from the saved output as the eager op's."""
    cp = backend.cupy
    C = d.shape[-1]
    rows, block, mode = d.size // C, row_block(C), np.int32(1 if log else 0)
    y = cp.empty_like(d)
    kernel("softmax_xent", "softmax_fwd", d.dtype)((rows,), (block,), (d, y, np.int32(C), mode))

    def backward(gy, out):
        if _grad_state.enabled:  # create_graph: the eager op's differentiable formulas
            if log:
                return (gy - out.exp() * gy.sum(-1, keepdim=True),)
            return (out * (gy - (gy * out).sum(-1, keepdim=True)),)
        gx = cp.empty_like(d)
        kernel("softmax_xent", "softmax_bwd", d.dtype)((rows,), (block,),
                                                       (out.array, _grad_array(gy, d), gx,
                                                        np.int32(C), mode))
        return (_new(gx),)
    return from_op(y, (x,), backward, "log_softmax" if log else "softmax", save_output=True)


# -- softmax + cross-entropy -----------------------------------------------------------------
_MODES = {"none": 0, "sum": 1, "mean": 2}


def applies_cross_entropy(input, target, weight, reduction) -> bool:
    """(N, C) logits against (N,) integer class indices on the same GPU, optional (C,) class
    weights; probability targets, (N, C, d...) inputs and the rest stay eager."""
    x = input.array
    if x.ndim != 2 or reduction not in _MODES or not fusable(x) or x.shape[0] > _INT32_MAX:
        return False
    if not isinstance(target, Tensor):
        return False
    t = target.array
    if (not isinstance(t, backend.cupy.ndarray) or t.dtype.kind not in "iu"
            or t.shape != x.shape[:1] or t.device.id != x.device.id):
        return False
    if weight is not None:
        wa = weight.array
        if (not isinstance(wa, backend.cupy.ndarray) or wa.shape != x.shape[1:]
                or wa.dtype.kind != "f" or wa.device.id != x.device.id):
            return False
    return True


def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """log-softmax + nll (+ label smoothing) in one row kernel, and a one-block reduction for
    'mean' / 'sum'; backward (softmax - onehot) * scale in one row kernel. Nothing syncs
    the host: an out-of-range target makes the loss NaN and, where tensor.backend has
    device_assert, raises IndexError at the next host sync, as the eager nll_loss does."""
    cp = backend.cupy
    x = input.array
    N, C = x.shape
    dt = x.dtype.type
    t = cp.ascontiguousarray(target.array, dtype=np.int64)
    has_w = np.int32(weight is not None)
    w = cp.ascontiguousarray(weight.array, dtype=x.dtype) if weight is not None else x
    block = row_block(C)
    loss, wt, lse = (cp.empty(N, x.dtype) for _ in range(3))
    bad = cp.empty(N, np.bool_)
    common = (np.int32(C), np.int64(ignore_index), dt(label_smoothing), has_w)
    kernel("softmax_xent", "xent_fwd", x.dtype)((N,), (block,),
                                                (x, t, w, loss, wt, lse, bad) + common)
    device_assert = getattr(backend, "device_assert", None)  # the deferred check, when present
    if device_assert is not None:
        device_assert(cp, bad, f"cross_entropy: a target is out of bounds for {C} classes; "
                               f"expected targets in [0, {C - 1}] or ignore_index={ignore_index}.")
    mode = _MODES[reduction]
    if mode == 0:
        y, den = loss, lse  # den: unread placeholder
    else:
        y, den = cp.empty((), x.dtype), cp.empty(1, x.dtype)
        kernel("softmax_xent", "xent_reduce", x.dtype)((1,), (1024,),
                                                       (loss, wt, y, den, np.int64(N),
                                                        np.int32(mode)))

    def backward(gy):
        if _grad_state.enabled:  # create_graph: see Note [Fused kernels]
            from ...ops.nn import cross_entropy as eager
            return _graph_backward(lambda: eager(input, target, weight, ignore_index, reduction,
                                                 label_smoothing), (input, None), gy)
        gx = cp.empty_like(x)
        kernel("softmax_xent", "xent_bwd", x.dtype)(
            (N,), (block,), (x, t, w, lse, _grad_array(gy, x), den, gx) + common
            + (np.int32(mode),))
        return _new(gx), None
    # target is saved (checked) as in the eager nll_loss
    return from_op(y, (input, target), backward, "nll_loss", saved=(target,))  # torch: NllLossBackward0
