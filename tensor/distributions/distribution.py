"""The Distribution base class: batch/event shapes and the sample-shape bookkeeping."""
from __future__ import annotations

import numpy as np

from .._tensor import Size, Tensor


class Distribution:
    """Base of the distributions: ``batch_shape``, ``event_shape``, ``sample``, ``log_prob``."""

    has_rsample = False

    def __init__(self, batch_shape=Size(), event_shape=Size(), validate_args=None):
        self._batch_shape = Size(batch_shape)
        self._event_shape = Size(event_shape)

    @property
    def batch_shape(self) -> Size:
        return self._batch_shape

    @property
    def event_shape(self) -> Size:
        return self._event_shape

    def _extended_shape(self, sample_shape=Size()) -> tuple:
        if isinstance(sample_shape, int):
            sample_shape = (sample_shape,)
        return tuple(sample_shape) + tuple(self._batch_shape) + tuple(self._event_shape)

    def sample(self, sample_shape=Size()) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement sample")

    def rsample(self, sample_shape=Size()) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no reparameterised sample "
                                  "(has_rsample is False); use sample()")

    def log_prob(self, value) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement log_prob")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}: {getattr(self, k).shape if isinstance(getattr(self, k), Tensor) else getattr(self, k)}"
                           for k in self._param_names)
        return f"{type(self).__name__}({params})"

    _param_names: tuple = ()


def broadcast_shape(*shapes) -> tuple:
    """numpy's broadcast of `shapes`, with PyTorch's error wording on a mismatch."""
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ValueError(f"distributions: shapes {[tuple(s) for s in shapes]} do not broadcast "
                         "together") from None
