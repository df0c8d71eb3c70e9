"""Categorical: a distribution over {0, ..., K-1} given by probs or logits on the last dim."""
from __future__ import annotations

import numpy as np

from .. import random
from .._grad_mode import no_grad
from .._tensor import Size, Tensor
from ..creation import as_tensor
from ..ops.nn import softmax
from .distribution import Distribution, broadcast_shape


class Categorical(Distribution):
    """As torch.distributions.Categorical: ``probs`` (non-negative, normalised along the last
    dim) or ``logits`` (normalised by logsumexp), exactly one of them; batch_shape is their
    shape without the last dim. ``sample`` gives int64 indices; ``log_prob`` and ``entropy``
    are differentiable in the parameters."""

    _param_names = ("probs",)

    def __init__(self, probs=None, logits=None, validate_args=None):
        if (probs is None) == (logits is None):
            raise ValueError("Categorical: pass either probs or logits, not both (nor neither)")
        if probs is not None:
            probs = as_tensor(probs)
            if probs.dim() < 1:
                raise ValueError("Categorical: probs must have at least one dimension")
            self._probs = probs / probs.sum(-1, keepdim=True)
            self._logits = None
            param = probs
        else:
            logits = as_tensor(logits)
            if logits.dim() < 1:
                raise ValueError("Categorical: logits must have at least one dimension")
            self._logits = logits - logits.logsumexp(-1, keepdim=True)
            self._probs = None
            param = logits
        self._num_events = param.shape[-1]
        super().__init__(batch_shape=param.shape[:-1], validate_args=validate_args)

    @property
    def probs(self) -> Tensor:
        if self._probs is None:
            self._probs = softmax(self._logits, -1)
        return self._probs

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            eps = float(np.finfo(self._probs.array.dtype).eps)
            self._logits = self._probs.clamp(eps, 1 - eps).log()
        return self._logits

    @property
    def param_shape(self) -> Size:
        return (self._probs if self._probs is not None else self._logits).shape

    @property
    def mean(self) -> Tensor:
        return self.probs * float("nan")   # as PyTorch: a categorical has no mean

    def sample(self, sample_shape=Size()) -> Tensor:
        """Indices of shape ``sample_shape + batch_shape`` (int64), drawn by inverse CDF."""
        shape = self._extended_shape(sample_shape)
        with no_grad():
            p = self.probs.array.reshape(-1, self._num_events)
            cdf = p.cumsum(-1)
            n = int(np.prod(shape[:len(shape) - len(self.batch_shape)], dtype=np.int64))
            u = random.uniform_array((n, p.shape[0], 1), cdf.dtype, self.probs.device)
            # the index is the number of CDF entries below u (clipped: rounding at the top)
            idx = (cdf[None] < u * cdf[None, :, -1:]).sum(-1)
            idx = idx.clip(0, self._num_events - 1).astype(np.int64)
        return Tensor(idx.reshape(shape))

    def log_prob(self, value) -> Tensor:
        value = as_tensor(value).long()
        logits = self.logits
        shape = broadcast_shape(value.shape, logits.shape[:-1])
        value = value.broadcast_to(shape).unsqueeze(-1)
        logits = logits.broadcast_to(shape + (self._num_events,))
        return logits.gather(-1, value).squeeze(-1)

    def entropy(self) -> Tensor:
        eps = float(np.finfo(self.logits.array.dtype).min)
        return -(self.logits.clamp(min=eps) * self.probs).sum(-1)

    def enumerate_support(self, expand=True) -> Tensor:
        from ..creation import arange
        param = self._probs if self._probs is not None else self._logits
        values = arange(self._num_events, device=param.device).reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + tuple(self.batch_shape)) if expand else values
