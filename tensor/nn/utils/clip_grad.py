"""Gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_), in place on .grad."""
from __future__ import annotations

import math

from ... import backend
from ..._tensor import Tensor, _new


def _grads(parameters):
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach=None) -> Tensor:
    """Scale all gradients together so their joint norm is at most max_norm.

    The norm is taken over all gradients as if concatenated into one vector. Returns that
    total norm (before clipping) as a 0-d tensor of the gradients' dtype, as PyTorch does.
    Gradients are multiplied by min(1, max_norm / (total + 1e-6)), a coefficient that stays
    on the gradients' device: as PyTorch's, this does not wait for the GPU (unless
    error_if_nonfinite asks for the norm's value).

    Raises:
        RuntimeError: error_if_nonfinite and the total norm is nan or inf.
    """
    grads = _grads(parameters)
    max_norm, norm_type = float(max_norm), float(norm_type)
    if not grads:
        return _new(backend.get_array_module().zeros((), "float32"))
    g0 = grads[0].array
    xp = backend.get_array_module(g0)
    if math.isinf(norm_type):
        norms = [xp.abs(g.array).max() if g.array.size else xp.zeros((), g.array.dtype)
                 for g in grads]
        total = xp.max(xp.stack(norms)).astype("float64")
    else:
        # accumulate in float64: a sum of squares over many float32 gradients loses digits
        acc = xp.zeros((), "float64")
        for g in grads:
            a = xp.abs(g.array.astype("float64", copy=False).ravel())
            acc = acc + (a @ a if norm_type == 2.0 else (a ** norm_type).sum())
        total = acc ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(float(backend.to_numpy(total))):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients from "
                           "`parameters` is non-finite, so it cannot be clipped. To disable this "
                           "error and scale the gradients by the non-finite norm anyway, set "
                           "`error_if_nonfinite=False`")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)  # NaN propagates, as in PyTorch
    for g in grads:
        d = g.array
        d *= coef.astype(d.dtype)
        g._vbox[0] += 1
    return _new(total.astype(g0.dtype))


def clip_grad_value_(parameters, clip_value: float, foreach=None) -> None:
    """Clamp every gradient element into [-clip_value, clip_value], in place."""
    clip_value = float(clip_value)
    for g in _grads(parameters):
        g.array.clip(-clip_value, clip_value, out=g.array)
        g._vbox[0] += 1
