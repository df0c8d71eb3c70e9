"""Grad mode: whether ops record the graph. Thread-local, as in PyTorch."""
from __future__ import annotations

import functools
import threading


class _State(threading.local):
    enabled = True


state = _State()


def is_grad_enabled() -> bool:
    """True when ops record the autograd graph in this thread."""
    return state.enabled


class _Mode:
    """Base of the grad-mode context managers; also usable as decorators."""

    _value: bool = True

    def __enter__(self):
        self._prev = state.enabled
        state.enabled = self._value
        return self

    def __exit__(self, *exc):
        state.enabled = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__() if not isinstance(self, set_grad_enabled) else set_grad_enabled(self._value):
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_Mode):
    """Context manager / decorator: ops inside record no graph (as torch.no_grad)."""

    _value = False


class enable_grad(_Mode):
    """Context manager / decorator: re-enables recording inside a no_grad block."""

    _value = True


class set_grad_enabled(_Mode):
    """set_grad_enabled(mode): a context manager, and also sets the mode right away when
    called as a plain function (as torch.set_grad_enabled)."""

    def __init__(self, mode: bool):
        self._value = bool(mode)
        self._prev = state.enabled
        state.enabled = self._value

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        state.enabled = self._prev
        return False
