"""Shared helpers of tensor.cuda: the "is there a GPU" check and device-argument parsing."""
from __future__ import annotations

from .. import backend

_available = []   # [True] once a GPU was seen: it does not go away within a process


def available() -> bool:
    """True when CuPy imports and sees at least one GPU (cached once true)."""
    if _available:
        return True
    if backend.cuda_is_available():
        _available.append(True)
        return True
    return False


def require(what: str):
    """The cupy module, or a RuntimeError saying why `what` needs a GPU and what to do."""
    if available():
        return backend.cupy
    if backend.cupy is None:
        why = "CuPy is not installed"
        fix = "install it with pip install 'zgrad[gpu]' on a machine with an NVIDIA GPU"
    else:
        why = ("CuPy is installed but sees no CUDA GPU (no driver, or CUDA_VISIBLE_DEVICES "
               "hides them)")
        fix = "run on a machine with a visible NVIDIA GPU"
    raise RuntimeError(f"tensor.cuda.{what}: expected a CUDA device, but {why}. To use it, {fix}; "
                       "to run anywhere, check tensor.cuda.is_available() first.")


def device_index(device, what: str) -> int:
    """The GPU index of `device` (None, an int, 'cuda', 'cuda:N' or a tensor.device);
    None and 'cuda' mean the current device."""
    cp = require(what)
    if device is None:
        return cp.cuda.runtime.getDevice()
    if isinstance(device, int) and not isinstance(device, bool):
        idx = device
    else:
        dev = backend.device(device)
        if dev.type != "cuda":
            raise ValueError(f"tensor.cuda.{what}: expected a CUDA device, got {dev!r}.")
        idx = dev.index
    if idx is None or idx < 0:
        return cp.cuda.runtime.getDevice()
    n = cp.cuda.runtime.getDeviceCount()
    if idx >= n:
        raise ValueError(f"tensor.cuda.{what}: device index {idx} is out of range; "
                         f"this machine has {n} GPU(s) (indices 0..{n - 1}).")
    return idx
