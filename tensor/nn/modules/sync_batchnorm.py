"""SyncBatchNorm: batch normalization with statistics over every rank of a process group, as
torch.nn.SyncBatchNorm.

Note [SyncBatchNorm reduction]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
tensor never imports runtime (ARCHITECTURE.md), so the cross-process sum is injected:
``runtime.distributed`` registers its all_reduce here when it is imported (``tensor.nn._dist``,
as c10d registers its backends with torch). In training, with a process group of more than
one rank, the per-channel statistics are computed in two all-reduces over the group: the sums
and counts (-> the global mean), then the sums of squared deviations from that mean (-> the
global biased variance: two passes, so no cancellation as with E[x^2] - E[x]^2). Each
all-reduce is a differentiable op whose backward all-reduces the incoming gradient, so every
rank's backward gets the gradient of the sum of all ranks' losses through the shared
statistics, as PyTorch's SyncBatchNorm backward does. Ranks therefore must run the same
SyncBatchNorm layers in the same order, forward and backward (they do in data parallelism).
Without an initialised process group, or with one rank, it is plain BatchNorm, as in PyTorch.
"""
from __future__ import annotations

from ..._tensor import Tensor, from_op
from ...ops.shape import cat
from .. import _dist
from .batchnorm import _BatchNorm, _InstanceNorm


def _all_reduce_sum(t: Tensor, group) -> Tensor:
    """Sum of `t` over the ranks of `group`, differentiable (backward sums the gradients)."""
    y = t.array.copy()
    _dist.all_reduce_sum(y, group)

    def backward(gy):
        g = gy.array.copy()
        _dist.all_reduce_sum(g, group)
        return (Tensor(g),)
    return from_op(y, parents=(t,), backward=backward, name="sync_bn_all_reduce")


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over (N, C, ...) whose batch statistics span all ranks of `process_group`
    (the world by default); see Note [SyncBatchNorm reduction]."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None,
                 dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
        if input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: expected {self.num_features} channels in dim 1, "
                             f"got input of shape {list(input.shape)}.")

    def _batch_stats(self, input: Tensor, dims: tuple):
        """(mean, biased var, count) per channel over `dims` on every rank of the group."""
        if _dist.world_size(self.process_group) <= 1:
            return super()._batch_stats(input, dims)
        group = self.process_group
        count = 1
        for d in dims:
            count *= input.array.shape[d]
        s = input.sum(dims)
        n = Tensor(s.array[:1] * 0 + count)   # the count travels with the sums, no gradient
        total = _all_reduce_sum(cat([s, n]), group)
        n_all = int(round(float(total.array[-1])))
        mean = total[:-1] / n_all
        shape = (1, -1) + (1,) * (input.dim() - 2)
        dev = input - mean.reshape(shape)
        var = _all_reduce_sum((dev * dev).sum(dims), group) / n_all
        return mean, var, n_all

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """`module` with every BatchNorm*D replaced by a SyncBatchNorm sharing its parameters
        and buffers (as torch.nn.SyncBatchNorm.convert_sync_batchnorm)."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, (SyncBatchNorm,
                                                                      _InstanceNorm)):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group)
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out
