"""``tensor.nn.functional`` (torch.nn.functional): PyTorch's signatures over tensor/ops.

Nothing is reimplemented here: every function forwards to the op in ``tensor.ops`` (or is a
short composition of ops). The legacy ``size_average``/``reduce`` arguments of the losses are
accepted and mapped to ``reduction`` as PyTorch does, so positional calls port unchanged.
"""
from __future__ import annotations

from ..ops import elementwise as _E
from ..ops import nn as _N
from .._grad_mode import is_grad_enabled
from ..ops.elementwise import sigmoid, softplus, tanh  # noqa: F401  (re-exported)
from ..ops.nn import linear, one_hot  # noqa: F401  (re-exported)

__all__ = ["linear", "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "softplus",
           "leaky_relu", "softmax", "log_softmax", "dropout", "embedding", "one_hot",
           "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "binary_cross_entropy",
           "binary_cross_entropy_with_logits", "normalize"]


def _reduction(size_average, reduce, reduction: str) -> str:
    """PyTorch's mapping of the deprecated size_average/reduce flags to reduction."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if not reduce:
        return "none"
    return "mean" if size_average else "sum"


def relu(input, inplace: bool = False):
    return input.relu_() if inplace else _E.relu(input)


def relu_(input):
    return input.relu_()


def gelu(input, approximate: str = "none"):
    return _E.gelu(input, approximate=approximate)


def silu(input, inplace: bool = False):
    """x * sigmoid(x).

    inplace=True writes the result into input when autograd is not recording through it;
    while it is, the result is returned out of place (zgrad has no fused silu_, and the
    product's backward needs the original input).
    """
    y = _E.silu(input)
    if inplace and not (is_grad_enabled() and input.requires_grad):
        return input.copy_(y)
    return y


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False):
    """x where x > 0 else negative_slope * x."""
    y = _E.where(input > 0, input, input * negative_slope)
    return input.copy_(y) if inplace else y


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    return _N.softmax(input, dim, dtype)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    return _N.log_softmax(input, dim, dtype)


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False,
            generator=None):
    """Zero elements with probability p, scale the rest by 1/(1-p); identity when not training.

    zgrad adds ``generator=`` (torch draws from the global generator only).
    """
    y = _N.dropout(input, p, training, generator)
    return input.copy_(y) if inplace and y is not input else y


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
              scale_grad_by_freq=False, sparse=False):
    if scale_grad_by_freq or sparse:
        raise ValueError("embedding: scale_grad_by_freq and sparse gradients are not supported "
                         "by zgrad; use the defaults (dense gradients).")
    return _N.embedding(input, weight, padding_idx, max_norm, norm_type)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index: int = -100,
                  reduce=None, reduction: str = "mean", label_smoothing: float = 0.0):
    """Cross-entropy of logits (N, C, ...) with class indices (N, ...) or probabilities."""
    return _N.cross_entropy(input, target, weight, ignore_index,
                            _reduction(size_average, reduce, reduction), label_smoothing)


def nll_loss(input, target, weight=None, size_average=None, ignore_index: int = -100,
             reduce=None, reduction: str = "mean"):
    return _N.nll_loss(input, target, weight, ignore_index,
                       _reduction(size_average, reduce, reduction))


def mse_loss(input, target, size_average=None, reduce=None, reduction: str = "mean"):
    _check_same_shape("mse_loss", input, target)
    return _N.mse_loss(input, target, _reduction(size_average, reduce, reduction))


def l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean"):
    _check_same_shape("l1_loss", input, target)
    return _N.l1_loss(input, target, _reduction(size_average, reduce, reduction))


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction: str = "mean"):
    _check_same_shape("binary_cross_entropy", input, target, strict=True)
    return _N.binary_cross_entropy(input, target, weight,
                                   _reduction(size_average, reduce, reduction))


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None,
                                     reduce=None, reduction: str = "mean", pos_weight=None):
    return _N.binary_cross_entropy_with_logits(input, target, weight,
                                               _reduction(size_average, reduce, reduction),
                                               pos_weight)


def normalize(input, p: float = 2.0, dim: int = 1, eps: float = 1e-12):
    """input / max(||input||_p along dim, eps)."""
    return input / input.norm(p, dim, keepdim=True).clamp(min=eps)


def _check_same_shape(op, input, target, strict=False):
    ts = getattr(target, "shape", None)
    if ts is not None and tuple(ts) != tuple(input.shape):
        if strict:
            raise ValueError(f"{op}: target size {list(ts)} must be the same as input size "
                             f"{list(input.shape)}")
        import warnings
        warnings.warn(f"{op}: target size {list(ts)} differs from input size "
                      f"{list(input.shape)}; they will broadcast, which is likely not what you "
                      "want (as PyTorch warns).", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# sequence models: normalization and attention (tensor/ops/norm.py, tensor/ops/attention.py)

from ..ops.norm import group_norm, layer_norm  # noqa: E402,F401  (re-exported)
from ..ops.attention import (multi_head_attention_forward,  # noqa: E402,F401  (re-exported)
                             scaled_dot_product_attention)

__all__ += ["layer_norm", "group_norm", "scaled_dot_product_attention",
            "multi_head_attention_forward"]
