"""``amp.autocast``: mixed precision for a region (see Note [Autocast] in tensor/_autocast.py)."""
from __future__ import annotations

import functools

import numpy as np

from .. import _autocast, backend, dtypes


def is_autocast_available(device_type: str) -> bool:
    return device_type in ("cpu", "cuda")


def _target(device_type, dtype):
    if dtype is None:  # PyTorch's defaults: bfloat16 on the CPU, float16 on CUDA
        return _autocast.BFLOAT16 if device_type == "cpu" else np.dtype(np.float16)
    if dtype is dtypes.bfloat16 or dtype == "bfloat16":
        return _autocast.BFLOAT16
    dt = dtypes.as_dtype(dtype)
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"autocast: dtype must be tensor.bfloat16 or tensor.float16, got {dt}")
    return dt


class autocast:
    """``with tensor.amp.autocast("cpu", dtype=tensor.bfloat16):`` matmul/linear run in the
    lower precision and softmax, reductions and losses in float32, as torch.amp.autocast.
    Also usable as a decorator. bfloat16 is emulated by rounding (Note [Autocast])."""

    def __init__(self, device_type: str, dtype=None, enabled: bool = True, cache_enabled=None):
        if not isinstance(device_type, str):
            raise ValueError(f"autocast: expected device_type of type str, got "
                             f"{type(device_type).__name__}")
        backend.device(device_type)  # a clear error for an unknown device
        self.device_type = device_type.split(":")[0]
        self.fast_dtype = dtype if dtype is not None else (
            dtypes.bfloat16 if self.device_type == "cpu" else dtypes.float16)
        self._target = _target(self.device_type, dtype)
        self._enabled = bool(enabled)

    def __enter__(self):
        self._prev = (_autocast.state.dtype, _autocast.state.device_type)
        if self._enabled:
            _autocast.state.dtype = self._target
            _autocast.state.device_type = self.device_type
        else:
            _autocast.state.dtype = None
        return self

    def __exit__(self, *exc):
        _autocast.state.dtype, _autocast.state.device_type = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with autocast(self.device_type, self.fast_dtype, self._enabled):
                return fn(*args, **kwargs)
        return wrapper
