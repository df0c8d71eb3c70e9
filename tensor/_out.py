"""PyTorch's ``out=`` keyword for the module-level functions (``torch.matmul(a, b, out=y)``).

As in PyTorch: the result is written into `out` (same storage; resized first when its shape
differs, as PyTorch does for an ``out`` of the wrong size) and `out` is returned; its dtype is
kept (the result is cast to it). ``out=`` functions do not support autograd: with grad mode on
and an input or `out` requiring grad, PyTorch's error is raised.
"""
from __future__ import annotations

import functools

from ._grad_mode import is_grad_enabled, no_grad
from ._tensor import Tensor


def _needs_grad(args, kwargs) -> bool:
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor) and a.requires_grad:
            return True
        if isinstance(a, (list, tuple)) and any(isinstance(t, Tensor) and t.requires_grad
                                                for t in a):
            return True
    return False


def with_out(fn):
    """Wrap `fn` so that it takes ``out=`` (a Tensor to write the result into)."""
    @functools.wraps(fn)
    def wrapper(*args, out=None, **kwargs):
        if out is None:
            return fn(*args, **kwargs)
        name = fn.__name__
        if not isinstance(out, Tensor):
            raise TypeError(f"{name}(): out must be a Tensor, got {type(out).__name__}")
        if is_grad_enabled() and (out.requires_grad or _needs_grad(args, kwargs)):
            raise RuntimeError(f"{name}(): functions with out=... arguments don't support "
                               "automatic differentiation, but one of the arguments requires "
                               "grad. Call it without out= (or under tensor.no_grad()).")
        with no_grad():
            y = fn(*args, **kwargs)
            if tuple(out.shape) != tuple(y.shape):
                # PyTorch resizes an out of the wrong shape; here it gets a fresh array of the
                # result's shape in its own dtype (a resize cannot keep the old storage either).
                xp_array = y.array.astype(out.array.dtype, copy=True)
                out.array = xp_array
                out._vbox[0] += 1
            else:
                out.copy_(y)
        return out

    return wrapper
