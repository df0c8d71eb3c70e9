"""pin_memory for loader batches: copies CPU arrays into page-locked host memory.

Page-locked (pinned) memory lets a host-to-GPU copy run asynchronously at full PCIe speed. It
only exists with a CUDA device; zgrad reaches it through CuPy (``tensor.backend.cupy``), the one
place that knows CuPy.
"""
from __future__ import annotations

import collections.abc as cabc
import warnings

import numpy as np

_warned = False


def _pinned_copy(arr: np.ndarray, cupy) -> np.ndarray:
    mem = cupy.cuda.alloc_pinned_memory(max(arr.nbytes, 1))
    out = np.frombuffer(mem, arr.dtype, arr.size).reshape(arr.shape)
    np.copyto(out, arr)
    return out


def _walk(obj, fn):
    import tensor
    if isinstance(obj, tensor.Tensor):
        if isinstance(obj.array, np.ndarray):
            return tensor.from_numpy(fn(obj.array)).requires_grad_(obj.requires_grad)
        return obj
    if isinstance(obj, np.ndarray):
        return fn(obj)
    if isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, cabc.Mapping):
        out = {k: _walk(v, fn) for k, v in obj.items()}
        try:
            return out if type(obj) is dict else type(obj)(out)
        except TypeError:
            return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_walk(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v, fn) for v in obj)
    pin = getattr(obj, "pin_memory", None)   # custom batch types, as PyTorch allows
    return pin() if callable(pin) else obj


def pin_batch(batch):
    """`batch` with every CPU array copied into pinned memory (unchanged without CUDA)."""
    global _warned
    from tensor import backend
    if not backend.cuda_is_available():
        if not _warned:
            _warned = True
            warnings.warn("DataLoader: pin_memory=True but no CUDA device is available (CuPy "
                          "missing or no GPU); batches stay in ordinary memory.", stacklevel=3)
        return batch
    cupy = backend.cupy
    return _walk(batch, lambda a: _pinned_copy(a, cupy))
