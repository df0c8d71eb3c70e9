"""Normal: the Gaussian N(loc, scale^2), batched over broadcast loc and scale."""
from __future__ import annotations

import math

from .. import random
from .._grad_mode import no_grad
from .._tensor import Size, Tensor
from ..creation import as_tensor
from .distribution import Distribution, broadcast_shape


class Normal(Distribution):
    """As torch.distributions.Normal(loc, scale): ``sample`` (no gradient), ``rsample``
    (loc + eps * scale, differentiable: the reparameterisation trick), ``log_prob``,
    ``entropy``, ``mean``, ``stddev``, ``variance``."""

    has_rsample = True
    _param_names = ("loc", "scale")

    def __init__(self, loc, scale, validate_args=None):
        loc, scale = _float(loc), _float(scale)
        shape = broadcast_shape(loc.shape, scale.shape)
        self.loc, self.scale = loc.broadcast_to(shape), scale.broadcast_to(shape)
        super().__init__(batch_shape=shape, validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def variance(self) -> Tensor:
        return self.scale.pow(2)

    def _eps(self, sample_shape):
        shape = self._extended_shape(sample_shape)
        return Tensor(random.normal_array(shape, self.loc.array.dtype, self.loc.device))

    def sample(self, sample_shape=Size()) -> Tensor:
        with no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape=Size()) -> Tensor:
        return self.loc + self._eps(sample_shape) * self.scale

    def log_prob(self, value) -> Tensor:
        value = as_tensor(value)
        var = self.scale ** 2
        return (-((value - self.loc) ** 2) / (2 * var) - self.scale.log()
                - math.log(math.sqrt(2 * math.pi)))

    def entropy(self) -> Tensor:
        return 0.5 + 0.5 * math.log(2 * math.pi) + self.scale.log()

    def cdf(self, value) -> Tensor:
        value = as_tensor(value)
        return 0.5 * (1 + ((value - self.loc) / (self.scale * math.sqrt(2))).erf())


def _float(x) -> Tensor:
    t = as_tensor(x)
    return t if t.is_floating_point() else t.float()
