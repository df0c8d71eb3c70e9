"""Batch normalization layers: BatchNorm1d/2d/3d, and InstanceNorm1d/2d/3d built on them.

PyTorch's arguments, defaults and state_dict keys (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``). momentum=None keeps a cumulative average
(factor 1 / num_batches_tracked); the running variance is the unbiased one.

Subclassing for cross-process statistics (SyncBatchNorm): override ``_batch_stats(input,
dims) -> (mean, var, count)`` only (see Note [Batch statistics] in tensor/ops/batchnorm.py).
The rest (running statistics, eval mode, affine transform) is inherited unchanged.
"""
from __future__ import annotations

from ... import creation
from ..._tensor import Tensor
from ...ops import batchnorm as _B
from .. import init
from ..parameter import Parameter
from .module import Module


class _BatchNorm(Module):
    """Normalize each channel over the batch (and spatial dims); see the module docstring."""

    _dims_ok = ()  # the input ndims this layer accepts

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *,
                 bias: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter.empty((num_features,), dtype, device)
            if bias:  # bias=False: scale only (PyTorch 2.x's keyword)
                self.bias = Parameter.empty((num_features,), dtype, device)
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", creation.zeros(num_features, dtype=dtype,
                                                                device=device))
            self.register_buffer("running_var", creation.ones(num_features, dtype=dtype,
                                                              device=device))
            self.register_buffer("num_batches_tracked",
                                 creation.tensor(0, dtype="int64", device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            for t, v in ((self.running_mean, 0), (self.running_var, 1),
                         (self.num_batches_tracked, 0)):
                t.array[...] = v
                t._vbox[0] += 1

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_ndim(self, input: Tensor) -> None:
        if input.dim() not in self._dims_ok:
            want = " or ".join(f"{d}D" for d in self._dims_ok)
            raise ValueError(f"{type(self).__name__}: expected {want} input (got "
                             f"{input.dim()}D input)")

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_ndim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels in "
                             f"dim 1, got input of shape {list(input.shape)}.")

    def _batch_stats(self, input: Tensor, dims: tuple):
        """(mean, biased var, count) per channel over `dims`: the hook SyncBatchNorm overrides."""
        return _B.batch_stats(input, dims)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.array += 1
            self.num_batches_tracked._vbox[0] += 1
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked.array)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return _B.batch_norm(input, self.running_mean if track else None,
                             self.running_var if track else None, self.weight, self.bias,
                             use_batch, factor, self.eps, stats=self._batch_stats)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L): statistics per channel C."""
    _dims_ok = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W): statistics per channel C over N, H and W."""
    _dims_ok = (4,)


class BatchNorm3d(_BatchNorm):
    """BatchNorm over (N, C, D, H, W)."""
    _dims_ok = (5,)


class _InstanceNorm(_BatchNorm):
    """Per-sample, per-channel normalization (PyTorch's defaults: affine=False,
    track_running_stats=False). Batch statistics are used in training, or always when there
    are no running statistics; an unbatched input (C, *spatial) is accepted."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = False, track_running_stats: bool = False, device=None,
                 dtype=None, *, bias: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, bias=bias)

    def forward(self, input: Tensor) -> Tensor:
        self._check_ndim(input)  # the channel count matters only with affine, checked below
        unbatched = input.dim() == self._dims_ok[0]
        if unbatched:
            input = input.unsqueeze(0)
        if self.affine and input.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected input's size at dim=1 to match "
                             f"num_features ({self.num_features}), but got: {input.shape[1]}.")
        y = _B.instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training or not self.track_running_stats,
                             0.1 if self.momentum is None else self.momentum, self.eps)
        return y.squeeze(0) if unbatched else y


class InstanceNorm1d(_InstanceNorm):
    """InstanceNorm over (N, C, L) or unbatched (C, L)."""
    _dims_ok = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    """InstanceNorm over (N, C, H, W) or unbatched (C, H, W)."""
    _dims_ok = (3, 4)


class InstanceNorm3d(_InstanceNorm):
    """InstanceNorm over (N, C, D, H, W) or unbatched (C, D, H, W)."""
    _dims_ok = (4, 5)
