"""``tensor.cuda``: the torch.cuda namespace, on CuPy.

Device queries and selection, streams and events, memory statistics, CUDA graphs
(``tensor.cuda.graphs``) and the fused kernels (``tensor.cuda.kernels``) live here; everything
that touches CuPy directly goes through ``tensor.backend.cupy``. Without CuPy or a GPU the
queries answer as torch.cuda does on a CPU-only build (is_available() is False,
device_count() is 0) and anything that needs a device raises a clear error.
"""
from __future__ import annotations

from .. import backend


def is_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    return backend.cuda_is_available()


def device_count() -> int:
    if not backend.cuda_is_available():
        return 0
    return backend.cupy.cuda.runtime.getDeviceCount()


def synchronize(device=None) -> None:
    """Wait for all work queued on the (current) GPU."""
    if backend.cuda_is_available():
        backend.cupy.cuda.Device().synchronize()


def manual_seed(seed: int) -> None:
    from .. import random as _random
    _random.manual_seed(seed)


manual_seed_all = manual_seed
