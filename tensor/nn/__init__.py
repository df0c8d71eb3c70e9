"""``tensor.nn`` (torch.nn): Module, Parameter, layers, losses, functional, init, utils."""
from . import functional, init, utils  # noqa: F401
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _modules_all
from .parameter import Parameter

__all__ = ["Parameter", "functional", "init", "utils"] + list(_modules_all)
