"""``tensor.distributions`` (torch.distributions): Categorical and Normal, with PyTorch's
names and semantics (batch shapes, ``sample(sample_shape)``, ``log_prob``, ``entropy``,
reparameterised ``Normal.rsample``), for policy-gradient and VAE-style code."""
from .categorical import Categorical
from .distribution import Distribution
from .normal import Normal

__all__ = ["Distribution", "Categorical", "Normal"]
