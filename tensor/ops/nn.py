"""Neural-network ops with fused forward/backward where speed or numerics need it.

linear (one matmul each way, no transposed copies), softmax / log_softmax (stable, with the
closed-form backward), nll_loss (a sparse gradient with no scatter), dropout, embedding.
Losses that are cheap compositions (mse, l1, bce-with-logits) are built from primitives.
"""
from __future__ import annotations

import math

import numpy as np

from .._autocast import policy as _policy
from .. import backend, dtypes
from .._grad_mode import state as _grad_state
from .._tensor import Tensor, _new, from_op
from .elementwise import _operands, _wrap, _xp
from .index import getitem
from .reduce import _dims

_REDUCTIONS = ("mean", "sum", "none")


@_policy("linear")
def linear(x, weight, bias=None):
    """y = x @ weight.T + bias.   x: (..., n_in), weight: (n_out, n_in) -> y: (..., n_out)."""
    xd, wd, _ = _operands("linear", x, weight)
    if xd.shape[-1] != wd.shape[-1]:
        raise RuntimeError(f"linear: input has {xd.shape[-1]} features (shape {list(xd.shape)}) "
                           f"but weight is {list(wd.shape)}; expected input.shape[-1] == "
                           f"weight.shape[1]. Check the layer sizes.")
    n_in, n_out = wd.shape[1], wd.shape[0]
    # (..., n_in) as one 2-D GEMM: numpy's matmul on a 3-D x runs one small GEMM per leading
    # index (an LSTM's (T, B, I) input: T GEMMs of B rows), several times slower in OpenBLAS
    rows = math.prod(xd.shape[:-1])
    xr = xd.reshape(rows, n_in)
    y = (xr @ wd.T).reshape(xd.shape[:-1] + (n_out,))
    if bias is not None:
        y += bias.array
    bias_grad = bias is not None and bias.requires_grad  # a flag: bias values aren't read

    def backward(gy):
        if not _grad_state.enabled:
            # first-order fast path on raw arrays: the hottest backward in training
            g2 = gy.array.reshape(rows, n_out)
            gx = _new((g2 @ wd).reshape(xd.shape)) if x.requires_grad else None
            gw = _new(g2.T @ xr) if weight.requires_grad else None
            gb = _new(g2.sum(0)) if bias_grad else None
            return gx, gw, gb
        gx = gy @ weight if x.requires_grad else None
        gw = gb = None
        if weight.requires_grad or bias_grad:
            g2 = gy.reshape(-1, n_out) if gy.array.ndim != 2 else gy
            if weight.requires_grad:
                x2 = x.reshape(-1, n_in) if x.array.ndim != 2 else x
                gw = g2.mT @ x2
            if bias_grad:
                gb = g2.sum(0)
        return gx, gw, gb
    return from_op(y, (x, weight, bias), backward, "linear")


def _softmax_input(x, dim, dtype, op):
    """The (floating) input array and the axis of a softmax-like op."""
    d = x.array if dtype is None else x.array.astype(dtypes.as_dtype(dtype))
    if d.dtype.kind != "f":
        d = d.astype(dtypes.get_default_dtype())
    if dim is None:  # PyTorch's legacy implicit dim
        dim = 0 if d.ndim in (0, 1, 3) else 1
    return d, (_dims(dim, d.ndim, op)[0] if d.ndim else 0)


@_policy("log_softmax")
def log_softmax(x, dim=None, dtype=None):
    """log(softmax(x)) computed stably as (x - max) - log(sum(exp(x - max)))."""
    xp = _xp(x)
    d, axis = _softmax_input(x, dim, dtype, "log_softmax")
    if d.__class__ is not np.ndarray:  # fused CUDA kernel, see Note [Fused kernels]
        from ..cuda import kernels as _fused
        if _fused.applies_softmax(d, axis):
            return _fused.softmax(x, d, log=True)
    if d.ndim == 0:
        y = xp.zeros_like(d)
    else:
        s = d - d.max(axis=axis, keepdims=True)
        y = s - xp.log(xp.exp(s).sum(axis=axis, keepdims=True))

    def backward(gy, out):
        if not _grad_state.enabled:
            g = gy.array
            return (_new(g - xp.exp(out.array) * g.sum(axis=axis, keepdims=True)),)
        return (gy - out.exp() * gy.sum(axis, keepdim=True),)
    return from_op(y, (x,), backward, "log_softmax", save_output=True)


@_policy("softmax")
def softmax(x, dim=None, dtype=None):
    """exp(x) / sum(exp(x)) along dim, stably."""
    xp = _xp(x)
    d, axis = _softmax_input(x, dim, dtype, "softmax")
    if d.__class__ is not np.ndarray:  # fused CUDA kernel, see Note [Fused kernels]
        from ..cuda import kernels as _fused
        if _fused.applies_softmax(d, axis):
            return _fused.softmax(x, d, log=False)
    if d.ndim == 0:
        y = xp.ones_like(d)
    else:
        e = xp.exp(d - d.max(axis=axis, keepdims=True))
        y = e / e.sum(axis=axis, keepdims=True)

    def backward(gy, out):
        return (out * (gy - (gy * out).sum(axis, keepdim=True)),)
    return from_op(y, (x,), backward, "softmax", save_output=True)


def _reduce(loss, reduction, op):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _class_target(op, logits, target):
    if not isinstance(target, Tensor):
        target = _wrap(target)
    t = target.array
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: class-index target must be an integer tensor, got {t.dtype}; "
                        "for class probabilities pass a float target of the input's shape.")
    n_dim = logits.array.ndim
    if n_dim < 1 or t.shape != (logits.array.shape[:1] + logits.array.shape[2:] if n_dim > 1 else ()):
        expect = list(logits.array.shape[:1] + logits.array.shape[2:]) if n_dim > 1 else []
        raise ValueError(f"{op}: input is {list(logits.array.shape)} (N, C, ...), target is "
                         f"{list(t.shape)}; expected target shape {expect}.")
    return target


@_policy("nll_loss")
def nll_loss(logp, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of class indices. logp: (N, C, ...) or (C,); target: (N, ...)."""
    xp = _xp(logp)
    target = _class_target("nll_loss", logp, target)
    lp = logp.array
    t = target.array
    squeeze = lp.ndim == 1
    if squeeze:
        lp, t = lp[None], t[None]
    C = lp.shape[1]
    valid = t != ignore_index
    tc = xp.where(valid, t, 0)
    # checked on the device, no host sync (Note [Device asserts] in tensor/_device_checks.py)
    backend.assert_in_range(
        xp, tc, 0, C, f"nll_loss: a target is out of bounds for {C} classes; expected targets "
        f"in [0, {C - 1}] or ignore_index={ignore_index}.",
        host_message=lambda: f"nll_loss: target {int(tc[(tc < 0) | (tc >= C)][0])} is out of "
        f"bounds for {C} classes; expected targets in [0, {C - 1}] or "
        f"ignore_index={ignore_index}.")
    if lp.ndim == 2:  # (N, C): plain fancy indexing, the common case
        rows = xp.arange(lp.shape[0])
        picked = lp[rows, tc]
    else:
        picked = xp.take_along_axis(xp.moveaxis(lp, 1, -1), tc[..., None], -1)[..., 0]
    wt = valid.astype(lp.dtype) if weight is None else weight.array.astype(lp.dtype)[tc] * valid
    loss = -picked * wt
    if reduction == "none":
        y = loss
        scale = wt
    elif reduction == "sum":
        y = loss.sum()
        scale = wt
    elif reduction == "mean":
        den = wt.sum()
        with np.errstate(invalid="ignore", divide="ignore"):  # all ignored: nan, as PyTorch
            y = loss.sum() / den
            scale = wt / den
    else:
        raise ValueError(f"nll_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    shape, ldt = lp.shape, lp.dtype

    def backward(gy):
        # d loss / d logp is -scale at the target class and 0 elsewhere: linear in gy
        if len(shape) == 2:
            g = xp.zeros(shape, ldt)
            g[rows, tc] = -scale
        else:
            g = xp.zeros(shape[:1] + shape[2:] + (C,), ldt)
            xp.put_along_axis(g, tc[..., None], (-scale)[..., None].astype(ldt), -1)
            g = xp.moveaxis(g, -1, 1)
        gt = _new(g)
        if squeeze:
            gt = gt.squeeze(0)
        if reduction == "none":
            gyb = gy.unsqueeze(1) if not squeeze else gy
            return gyb * gt, None
        return gy * gt, None
    if squeeze and reduction == "none":
        y = y[0]
    # target is saved (checked) as in PyTorch, though the gradient uses a copy of it
    return from_op(xp.asarray(y), (logp, target), backward, "nll_loss", saved=(target,))


@_policy("cross_entropy")  # cast before log_softmax, not after (PyTorch's order)
def cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0):
    """Cross-entropy of logits (N, C, ...) against class indices or class probabilities."""
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.array.__class__ is not np.ndarray:  # fused CUDA kernels, see Note [Fused kernels]
        from ..cuda import kernels as _fused
        if _fused.applies_cross_entropy(input, target, weight, reduction):
            return _fused.cross_entropy(input, target, weight, ignore_index, reduction,
                                        label_smoothing)
    cdim = 1 if input.array.ndim > 1 else 0
    logp = log_softmax(input, cdim)
    if isinstance(target, Tensor) and target.array.dtype.kind == "f":
        if tuple(target.array.shape) != tuple(input.array.shape):
            raise ValueError(f"cross_entropy: probability target is {list(target.array.shape)} "
                             f"but input is {list(input.array.shape)}; they must match.")
        C = input.array.shape[cdim]
        tgt = target * (1 - label_smoothing) + label_smoothing / C if label_smoothing else target
        wl = logp if weight is None else logp * weight.reshape([-1] + [1] * (logp.ndim - cdim - 1))
        loss = -(wl * tgt).sum(cdim)
        if reduction == "mean":
            return loss.sum() / (loss.numel() if loss.numel() else float("nan"))
        return _reduce(loss, reduction, "cross_entropy")
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    C = input.array.shape[cdim]
    target = _class_target("cross_entropy", input, target)
    valid = _new(target.array != ignore_index)
    wl = logp if weight is None else logp * weight.reshape([-1] + [1] * (logp.ndim - cdim - 1))
    smooth = -wl.sum(cdim) * valid
    if reduction == "none":
        smooth_r = smooth
    elif reduction == "sum":
        smooth_r = smooth.sum()
    else:
        xp = _xp(input)
        if weight is None:
            den = valid.array.sum()
        else:
            tc = xp.where(target.array != ignore_index, target.array, 0)
            den = (weight.array[tc] * valid.array).sum()
        smooth_r = smooth.sum() / _new(xp.asarray(den, dtype=logp.array.dtype))
    return nll * (1 - label_smoothing) + smooth_r * (label_smoothing / C)


def dropout(x, p=0.5, training=True, generator=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    from .. import random as _random
    keep = _random.uniform_array(x.array.shape, x.array.dtype, x.device, generator) >= p
    scale = (keep * (1.0 / (1.0 - p))).astype(x.array.dtype)
    y = x.array * scale
    return from_op(y, (x,), lambda gy: (gy * _new(scale),), "dropout")


def _embedding_renorm_(weight, idx, max_norm, norm_type):
    """Rescale, in place, each row of weight that idx picks whose norm exceeds max_norm to norm
    max_norm (torch.embedding_renorm_: not differentiated, the weight's version is bumped)."""
    xp = _xp(weight)
    rows = xp.unique(idx.reshape(-1))
    w = weight.array
    norms = (xp.abs(w[rows]) ** norm_type).sum(1) ** (1.0 / norm_type)
    big = norms > max_norm
    if bool(big.any()):
        r = rows[big]
        w[r] *= (max_norm / (norms[big] + 1e-7)).astype(w.dtype)[:, None]
        weight._vbox[0] += 1


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0):
    """Rows of weight picked by integer indices; padding_idx gets no gradient; with max_norm,
    the picked rows are first renormalised in place to norm <= max_norm (as PyTorch)."""
    if input.array.dtype.kind not in "iu":
        raise TypeError(f"embedding: indices must be an integer tensor, got {input.array.dtype}")
    n = weight.array.shape[0]
    ix = input.array
    backend.assert_in_range(
        _xp(input), ix, 0, n, f"embedding: index out of range; the table has {n} rows.",
        host_message=lambda: f"embedding: index out of range; indices span "
        f"[{int(ix.min())}, {int(ix.max())}] but the table has {n} rows.")
    if max_norm is not None:
        _embedding_renorm_(weight, input.array, max_norm, norm_type)
    if padding_idx is None:
        return getitem(weight, input)
    y = weight.array[input.array]
    pad = padding_idx % n
    keep = (input.array != pad)[..., None]
    wshape = weight.array.shape

    def backward(gy):  # captures the index Tensor, so its version is checked
        from .index import _index_backward
        return (_index_backward(gy * _new(keep.astype(gy.array.dtype)), (input.array,),
                                wshape, True),)
    return from_op(y, (weight,), backward, "embedding")


def one_hot(t, num_classes=-1):
    """Integer tensor -> int64 one-hot tensor with a new last dim of num_classes."""
    xp = _xp(t)
    d = t.array
    if d.dtype.kind not in "iu":
        raise TypeError(f"one_hot: expected an integer tensor, got {d.dtype}")
    if num_classes < 0:
        num_classes = int(d.max()) + 1 if d.size else 0
    backend.assert_in_range(
        xp, d, 0, num_classes, f"one_hot: class values must be in [0, {num_classes - 1}]",
        RuntimeError, host_message=lambda: f"one_hot: class values must be in "
        f"[0, {num_classes - 1}], got [{int(d.min())}, {int(d.max())}]")
    return _new((d[..., None] == xp.arange(num_classes)).astype(np.int64))


@_policy("mse_loss")
def mse_loss(input, target, reduction="mean"):
    d = input - target
    return _reduce(d * d, reduction, "mse_loss")


@_policy("l1_loss")
def l1_loss(input, target, reduction="mean"):
    return _reduce((input - target).abs(), reduction, "l1_loss")


@_policy("binary_cross_entropy_with_logits")
def binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean",
                                     pos_weight=None):
    """Stable BCE on logits: max(x,0) - x*t + log(1 + exp(-|x|)) (with pos_weight as torch)."""
    if tuple(input.array.shape) != tuple(_wrap(target).array.shape):
        raise ValueError(f"binary_cross_entropy_with_logits: target size "
                         f"{list(_wrap(target).array.shape)} must be the same as input size "
                         f"{list(input.array.shape)}")
    from .elementwise import softplus
    if pos_weight is None:
        loss = softplus(input) - input * target
    else:
        # (1 - t) x + (1 + (pw - 1) t) softplus(-x)
        lw = (pos_weight - 1) * target + 1
        loss = (1 - target) * input + lw * softplus(-input)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy_with_logits")


@_policy("binary_cross_entropy")
def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """BCE on probabilities, with logs clamped at -100 as PyTorch."""
    lp = input.log().clamp(min=-100.0)
    l1p = (1 - input).log().clamp(min=-100.0)
    loss = -(target * lp + (1 - target) * l1p)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction, "binary_cross_entropy")


@_policy("smooth_l1_loss")
def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta (d = input - target); L1 at beta=0."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    d = input - target
    ad = d.abs()
    if beta == 0:
        return _reduce(ad, reduction, "smooth_l1_loss")
    from .elementwise import where
    loss = where(ad < beta, d * d * (0.5 / beta), ad - 0.5 * beta)
    return _reduce(loss, reduction, "smooth_l1_loss")


@_policy("huber_loss")
def huber_loss(input, target, reduction="mean", delta=1.0):
    """0.5 d^2 where |d| < delta, else delta (|d| - 0.5 delta) (d = input - target)."""
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be > 0, got {delta}")
    d = input - target
    ad = d.abs()
    from .elementwise import where
    loss = where(ad < delta, d * d * 0.5, (ad - 0.5 * delta) * delta)
    return _reduce(loss, reduction, "huber_loss")
