"""``tensor.nn.functional`` (torch.nn.functional): PyTorch's signatures over tensor/ops.

Nothing is reimplemented here: every function forwards to the op in ``tensor.ops`` (or is a
short composition of ops). The legacy ``size_average``/``reduce`` arguments of the losses are
accepted and mapped to ``reduction`` as PyTorch does, so positional calls port unchanged.
"""
from __future__ import annotations

import warnings

from ..ops import elementwise as _E
from ..ops import index as _I
from ..ops import nn as _N
from ..ops.elementwise import sigmoid, softplus, tanh  # noqa: F401  (re-exported)
from ..ops.nn import linear, one_hot  # noqa: F401  (re-exported)

__all__ = ["linear", "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "softplus",
           "leaky_relu", "elu", "softmax", "log_softmax", "dropout", "embedding", "one_hot",
           "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "normalize"]


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
    """x * sigmoid(x); inplace=True writes into input (recorded as any in-place op)."""
    return input.silu_() if inplace else _E.silu(input)


def _leaky(input, negative_slope):
    return _E.where(input > 0, input, input * negative_slope)


def leaky_relu(input, negative_slope: float = 0.01, inplace: bool = False):
    """x where x > 0 else negative_slope * x; inplace=True writes into input."""
    if inplace:
        return _I.inplace(input, _leaky, negative_slope, op="leaky_relu_")
    return _leaky(input, negative_slope)


def elu(input, alpha: float = 1.0, inplace: bool = False):
    """x where x > 0 else alpha * (exp(x) - 1); inplace=True writes into input."""
    return input.elu_(alpha) if inplace else _E.elu(input, alpha)


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


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction: str = "mean",
                   beta: float = 1.0):
    _check_same_shape("smooth_l1_loss", input, target)
    return _N.smooth_l1_loss(input, target, _reduction(size_average, reduce, reduction), beta)


def huber_loss(input, target, reduction: str = "mean", delta: float = 1.0):
    _check_same_shape("huber_loss", input, target)
    return _N.huber_loss(input, target, reduction, delta)


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
        warnings.warn(f"{op}: target size {list(ts)} differs from input size "
                      f"{list(input.shape)}; they will broadcast, which is likely not what you "
                      "want (as PyTorch warns).", stacklevel=3)


# -- convolution, pooling, padding, resampling, feature dropout, batch norm ------------------
# (tensor/ops/conv.py, pool.py, resize.py, batchnorm.py; kept in one block)
from ..ops.batchnorm import batch_norm, instance_norm  # noqa: E402,F401
from ..ops.conv import (conv1d, conv2d, conv_transpose1d, conv_transpose2d, fold,  # noqa: E402,F401
                        unfold)
from ..ops.pool import (adaptive_avg_pool1d, adaptive_avg_pool2d, avg_pool1d,  # noqa: E402,F401
                        avg_pool2d, max_pool1d, max_pool2d)
from ..ops.resize import interpolate, pad  # noqa: E402,F401

__all__ += ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "unfold", "fold",
            "max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices",
            "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "pad",
            "interpolate", "upsample", "dropout1d", "dropout2d", "batch_norm", "instance_norm"]


def max_pool1d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, return_indices=True):
    """max_pool1d that returns (output, indices)."""
    return max_pool1d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, return_indices=True):
    """max_pool2d that returns (output, indices)."""
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, True)


def upsample(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """The deprecated alias of interpolate."""
    return interpolate(input, size, scale_factor, mode, align_corners)


def _feature_dropout(op, input, p, training, inplace, mask_shape):
    """Zero whole channels (a mask broadcast over the trailing dims), scale by 1/(1-p)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    from .. import random as _random
    from ..ops.elementwise import _wrap
    x = input.array
    keep = _random.uniform_array(mask_shape, x.dtype, input.device) >= p
    scale = keep.astype(x.dtype) * (0.0 if p == 1.0 else 1.0 / (1.0 - p))
    y = input * _wrap(scale.astype(x.dtype, copy=False))
    return input.copy_(y) if inplace else y


def dropout1d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Channel dropout for (N, C, L) or unbatched (C, L) inputs."""
    nd = input.dim()
    if nd not in (2, 3):
        raise RuntimeError(f"dropout1d: Expected 2D or 3D input, but received a {nd}D input. "
                           "Note that dropout1d exists to provide channel-wise dropout on "
                           "inputs with 1 spatial dimension.")
    shape = tuple(input.shape)
    return _feature_dropout("dropout1d", input, p, training, inplace,
                            shape[:nd - 1] + (1,))


def dropout2d(input, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Channel dropout for (N, C, H, W) or unbatched (C, H, W) inputs.

    As PyTorch, a 3-D input is taken as (N, C, L) (channel-wise 1-d dropout) with a warning.
    """
    nd = input.dim()
    if nd not in (3, 4):
        warnings.warn(f"dropout2d: Received a {nd}-D input to dropout2d, which is deprecated "
                      "and will result in an error in a future release.", stacklevel=2)
    if nd == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that "
                      "channel-wise 1D dropout behavior is desired - input is interpreted as "
                      "shape (N, C, L).", stacklevel=2)
    shape = tuple(input.shape)
    return _feature_dropout("dropout2d", input, p, training, inplace,
                            shape[:2] + (1,) * (nd - 2))


# ---------------------------------------------------------------------------------------------
# sequence models: normalization and attention (tensor/ops/norm.py, tensor/ops/attention.py)

from ..ops.norm import group_norm, layer_norm  # noqa: E402,F401  (re-exported)
from ..ops.attention import (multi_head_attention_forward,  # noqa: E402,F401  (re-exported)
                             scaled_dot_product_attention)

__all__ += ["layer_norm", "group_norm", "scaled_dot_product_attention",
            "multi_head_attention_forward"]


# -- sub-pixel shuffles (composites of reshape + permute: autograd comes from those) ----------
def pixel_shuffle(input, upscale_factor: int):
    """(*, C*r^2, H, W) -> (*, C, H*r, W*r), as torch.nn.functional.pixel_shuffle."""
    r = int(upscale_factor)
    *batch, c, h, w = input.shape
    if input.dim() < 3 or r < 1 or c % (r * r):
        raise RuntimeError(f"pixel_shuffle: expected input (*, C*r^2, H, W) with C*r^2 divisible"
                           f" by r^2 = {r * r}, got shape {list(input.shape)}")
    n = len(batch)
    x = input.reshape(*batch, c // (r * r), r, r, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*batch, c // (r * r), h * r, w * r)


def pixel_unshuffle(input, downscale_factor: int):
    """(*, C, H*r, W*r) -> (*, C*r^2, H, W), the inverse of pixel_shuffle."""
    r = int(downscale_factor)
    *batch, c, h, w = input.shape
    if input.dim() < 3 or r < 1 or h % r or w % r:
        raise RuntimeError(f"pixel_unshuffle: expected input (*, C, H, W) with H and W divisible"
                           f" by {r}, got shape {list(input.shape)}")
    n = len(batch)
    x = input.reshape(*batch, c, h // r, r, w // r, r)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*batch, c * r * r, h // r, w // r)


__all__ += ["pixel_shuffle", "pixel_unshuffle"]


from ..ops.grid import affine_grid, grid_sample  # noqa: E402,F401  (spatial transformers)

__all__ += ["affine_grid", "grid_sample"]
