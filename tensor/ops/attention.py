"""Attention: scaled_dot_product_attention (a fused op) and multi_head_attention_forward.

The fused op computes softmax(q k^T * scale + bias) v with batched matmuls and keeps only the
attention probabilities for backward, whose closed form is

    gv = P^T go,   gS = P * (gP - sum(gP * P)),   gq = gS k * scale,   gk = gS^T q * scale

(gP = go v^T, times the dropout mask). The composite records five nodes; the fused op was only
5-12% faster forward + backward at (16, 4, 64, 32) float32 with a causal mask (the matmuls
dominate), and is kept for its single saved array (P) and its safe handling of masked rows.
With create_graph=True the backward is written with differentiable ops instead.
Masks become one additive float ``bias`` (-inf where a position may not attend). A query row
with every key masked gives zero output in scaled_dot_product_attention (PyTorch's "safe"
softmax) and NaN in the weights of multi_head_attention_forward with need_weights=True, both
as PyTorch does.
"""
from __future__ import annotations

import math

import numpy as np

from .._autocast import policy as _policy
from .._grad_mode import state as _grad_state
from .._tensor import Tensor, _new, from_op
from .elementwise import _xp, sum_to


def _as_bias(mask, dtype, xp, allowed_is_true: bool):
    """An additive float mask (array or Tensor) from a bool or float mask (None stays None)."""
    if mask is None:
        return None
    m = mask.array if isinstance(mask, Tensor) else xp.asarray(mask)
    if m.dtype.kind == "b":
        blocked = ~m if allowed_is_true else m
        return xp.where(blocked, -np.inf, 0.0).astype(dtype)
    if m.dtype.kind != "f":
        raise TypeError(f"attention: attn_mask must be a bool or floating-point tensor, got "
                        f"{m.dtype}")
    return mask if isinstance(mask, Tensor) and mask.requires_grad else m.astype(dtype,
                                                                                  copy=False)


def _add_bias(a, b):
    """Sum two additive masks (arrays or Tensors; None is zero)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (a if isinstance(a, Tensor) else _new(a)) + b
    return a + b


def _softmax_rows(s, xp):
    """Softmax over the last axis; a row that is all -inf gives zeros (no NaN)."""
    if xp is not np:  # one fused launch on a GPU, see Note [Fused kernels]
        from ..cuda import kernels as _fused
        if _fused.applies_softmax(s, s.ndim - 1):
            return _fused.softmax_rows_safe(s)
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    e = xp.exp(s - m)
    d = e.sum(axis=-1, keepdims=True)
    return e / xp.where(d == 0, 1, d)


def _fused_attention(q, k, v, bias, dropout_p, scale):
    """softmax(q @ k^T * scale + bias) @ v as one node (see the module docstring)."""
    xp = _xp(q)
    qa, ka, va = q.array, k.array, v.array
    s = qa @ xp.swapaxes(ka, -1, -2)
    s *= scale
    bt = bias if isinstance(bias, Tensor) else None
    if bias is not None:
        s = s + (bias.array if bt is not None else bias)
    p = _softmax_rows(s, xp)
    pd, keep = p, None
    if dropout_p > 0:
        from .. import random as _random
        keep = (_random.uniform_array(p.shape, p.dtype, q.device, None) >= dropout_p)
        keep = keep.astype(p.dtype) * (1.0 / (1.0 - dropout_p))
        pd = p * keep
    y = pd @ va

    def backward(go):
        if _grad_state.enabled:
            return _attention_backward_graph(go, q, k, v, bt, _new(p), keep, scale)
        g = go.array
        gv = xp.swapaxes(pd, -1, -2) @ g if v.requires_grad else None
        gp = g @ xp.swapaxes(va, -1, -2)
        if keep is not None:
            gp *= keep
        gs = p * (gp - (gp * p).sum(axis=-1, keepdims=True))
        # gb may be gs itself (a bias of the scores' full shape): scale a copy, not gs
        gb = sum_to(_new(gs), bt.array.shape) if bt is not None and bt.requires_grad else None
        gs = gs * scale
        gq = _new(gs @ ka) if q.requires_grad else None
        gk = _new(xp.swapaxes(gs, -1, -2) @ qa) if k.requires_grad else None
        gv = _sum_batch(gv, va.shape)
        return (_sum_to(gq, qa.shape), _sum_to(gk, ka.shape),
                None if gv is None else _new(gv), gb)
    return from_op(y, (q, k, v, bt), backward, "scaled_dot_product_attention",
                   saved=(q, k, v))


def _sum_batch(g, shape):
    """Sum a raw gradient array over broadcast batch dims back to `shape`."""
    if g is None or g.shape == tuple(shape):
        return g
    return sum_to(_new(g), tuple(shape)).array


def _sum_to(g, shape):
    return None if g is None else sum_to(g, tuple(shape))


def _attention_backward_graph(go, q, k, v, bt, p, keep, scale):
    """The fused backward as differentiable ops (for create_graph=True)."""
    s = (q @ k.mT) * scale
    if bt is not None:
        s = s + bt
    from .nn import softmax
    p = softmax(s, -1)
    pd = p * _new(keep) if keep is not None else p
    gv = sum_to(pd.mT @ go, v.array.shape) if v.requires_grad else None
    gp = go @ v.mT
    if keep is not None:
        gp = gp * _new(keep)
    gs = p * (gp - (gp * p).sum(-1, keepdim=True))
    gb = sum_to(gs, bt.array.shape) if bt is not None and bt.requires_grad else None
    gq = sum_to((gs @ k) * scale, q.array.shape) if q.requires_grad else None
    gk = sum_to((gs.mT @ q) * scale, k.array.shape) if k.requires_grad else None
    return gq, gk, gv, gb


@_policy("scaled_dot_product_attention")  # lower precision under autocast
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale=None, enable_gqa: bool = False):
    """softmax(query @ key^T * scale + mask) @ value, as torch's.

    query (..., L, E), key (..., S, E), value (..., S, Ev) -> (..., L, Ev). attn_mask: bool
    (True = may attend) or float (added), broadcastable to (..., L, S). is_causal masks the
    future (query i attends keys j <= i). scale defaults to 1 / sqrt(E). dropout_p drops
    attention weights (pass 0 in eval, as PyTorch: this function does not know the mode).
    """
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: explicit attn_mask should not be set "
                           "when is_causal=True; pass one or the other.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"scaled_dot_product_attention: dropout_p must be in [0, 1), got "
                         f"{dropout_p}")
    _check_qkv("scaled_dot_product_attention", query, key, value)
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key = _repeat_heads(key, rep)
        value = _repeat_heads(value, rep)
    xp = _xp(query)
    dt = query.array.dtype
    L, S = query.shape[-2], key.shape[-2]
    if is_causal:
        attn_mask = xp.tril(xp.ones((L, S), bool))
    bias = _as_bias(attn_mask, dt, xp, allowed_is_true=True)
    sc = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    return _fused_attention(query, key, value, bias, dropout_p, sc)


def _repeat_heads(t, rep):
    """(..., Hk, S, E) -> (..., Hk * rep, S, E), each head repeated rep times (GQA)."""
    s = t.shape
    return t.unsqueeze(-3).expand(*s[:-3], s[-3], rep, s[-2], s[-1]).reshape(
        *s[:-3], s[-3] * rep, s[-2], s[-1])


def _check_qkv(op, q, k, v):
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise RuntimeError(f"{op}: query, key and value need at least 2 dims (..., L, E); got "
                           f"{list(q.shape)}, {list(k.shape)}, {list(v.shape)}.")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise RuntimeError(f"{op}: query {list(q.shape)}, key {list(k.shape)} and value "
                           f"{list(v.shape)} do not fit: expected query.shape[-1] == "
                           "key.shape[-1] and key.shape[-2] == value.shape[-2].")
    for t in (q, k, v):
        if t.array.dtype.kind != "f":
            raise TypeError(f"{op}: expected floating-point query/key/value, got "
                            f"{t.array.dtype}")


def _heads(t, n, L, h):
    """(N, L, E) -> (N, h, L, E // h)."""
    return t.reshape(n, L, h, -1).transpose(1, 2)


def _mha_bias(attn_mask, key_padding_mask, n, h, L, S, dt, xp):
    """One additive mask (N or 1, h or 1, L, S) from MHA's attn_mask and key_padding_mask
    (bool True = may NOT attend, the opposite of scaled_dot_product_attention's)."""
    bias = None
    if attn_mask is not None:
        bias = _as_bias(attn_mask, dt, xp, allowed_is_true=False)
        shape = tuple(bias.shape)
        if shape == (L, S):
            pass
        elif shape == (n * h, L, S):
            bias = bias.reshape(n, h, L, S)
        else:
            raise RuntimeError(f"multi_head_attention: attn_mask has shape {list(shape)}; "
                               f"expected {[L, S]} or {[n * h, L, S]}.")
    if key_padding_mask is not None:
        kp = _as_bias(key_padding_mask, dt, xp, allowed_is_true=False)
        if tuple(kp.shape) != (n, S):
            raise RuntimeError(f"multi_head_attention: key_padding_mask has shape "
                               f"{list(kp.shape)}; expected (batch, source length) = {[n, S]}.")
        bias = _add_bias(bias, kp.reshape(n, 1, 1, S))
    return bias


def _pad_last(bias, xp):
    """Append one zero column (a key that every query may attend) to an additive mask."""
    if bias is None:
        return None
    if isinstance(bias, Tensor):
        from .shape import cat
        return cat([bias, _new(xp.zeros(tuple(bias.shape[:-1]) + (1,), bias.array.dtype))], -1)
    return xp.concatenate([bias, xp.zeros(bias.shape[:-1] + (1,), bias.dtype)], -1)


def mha_batch_first(query, key, value, num_heads, w_q, w_k, w_v, b_q, b_k, b_v, out_w, out_b,
                    bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
                    key_padding_mask=None, need_weights=True, attn_mask=None,
                    average_attn_weights=True):
    """Multi-head attention on batch-first (N, L, E) inputs -> ((N, L, E), weights or None)."""
    from .nn import dropout, linear, softmax
    from .shape import cat
    n, L, E = query.shape
    S = key.shape[1]
    h = num_heads
    xp = _xp(query)
    q, k, v = linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)
    bias = _mha_bias(attn_mask, key_padding_mask, n, h, L, S, query.array.dtype, xp)
    if bias_k is not None:  # one learned extra key and value, attended by every query
        k = cat([k, bias_k.reshape(1, 1, E).expand(n, 1, E)], 1)
        v = cat([v, bias_v.reshape(1, 1, E).expand(n, 1, E)], 1)
        bias, S = _pad_last(bias, xp), S + 1
    q, k, v = _heads(q, n, L, h), _heads(k, n, S, h), _heads(v, n, S, h)
    if add_zero_attn:  # one extra all-zero key and value
        z = _new(xp.zeros((n, h, 1, E // h), query.array.dtype))
        k, v, bias, S = cat([k, z], 2), cat([v, z], 2), _pad_last(bias, xp), S + 1
    scale = 1.0 / math.sqrt(E // h)
    weights = None
    if need_weights:
        s = (q @ k.mT) * scale
        if bias is not None:
            s = s + bias
        p = softmax(s, -1)  # a fully masked row is NaN here, as PyTorch's weights path
        if dropout_p > 0:
            p = dropout(p, dropout_p, True)
        o = p @ v
        weights = p.mean(1) if average_attn_weights else p
    else:
        o = _fused_attention(q, k, v, bias, dropout_p, scale)
    o = o.transpose(1, 2).reshape(n, L, E)
    return linear(o, out_w, out_b), weights


def multi_head_attention_forward(query, key, value, embed_dim_to_check, num_heads,
                                 in_proj_weight, in_proj_bias, bias_k, bias_v, add_zero_attn,
                                 dropout_p, out_proj_weight, out_proj_bias, training=True,
                                 key_padding_mask=None, need_weights=True, attn_mask=None,
                                 use_separate_proj_weight=False, q_proj_weight=None,
                                 k_proj_weight=None, v_proj_weight=None, static_k=None,
                                 static_v=None, average_attn_weights=True, is_causal=False):
    """torch.nn.functional.multi_head_attention_forward: time-major (L, N, E) inputs (or
    unbatched (L, E)) -> (attn_output (L, N, E), attn_weights or None)."""
    if static_k is not None or static_v is not None:
        raise ValueError("multi_head_attention_forward: static_k / static_v are not supported "
                         "by zgrad; project the keys and values with the module instead.")
    if is_causal and attn_mask is None:
        raise RuntimeError("multi_head_attention_forward: need attn_mask if specifying the "
                           "is_causal hint (build it with Transformer."
                           "generate_square_subsequent_mask).")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    E = query.shape[-1]
    if E != embed_dim_to_check:
        raise RuntimeError(f"multi_head_attention_forward: query has embed dim {E}, expected "
                           f"{embed_dim_to_check}.")
    if E % num_heads:
        raise RuntimeError(f"multi_head_attention_forward: embed_dim {E} is not divisible by "
                           f"num_heads {num_heads}.")
    if use_separate_proj_weight:
        w_q, w_k, w_v = q_proj_weight, k_proj_weight, v_proj_weight
    else:
        w_q, w_k, w_v = in_proj_weight[:E], in_proj_weight[E:2 * E], in_proj_weight[2 * E:]
    b_q = b_k = b_v = None
    if in_proj_bias is not None:
        b_q, b_k, b_v = in_proj_bias[:E], in_proj_bias[E:2 * E], in_proj_bias[2 * E:]
    out, weights = mha_batch_first(
        query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), num_heads,
        w_q, w_k, w_v, b_q, b_k, b_v, out_proj_weight, out_proj_bias, bias_k, bias_v,
        add_zero_attn, dropout_p if training else 0.0, key_padding_mask, need_weights,
        attn_mask, average_attn_weights)
    out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(1)
        weights = weights.squeeze(0) if weights is not None else None
    return out, weights
