"""``tensor.accelerator`` (torch.accelerator): the one accelerator zgrad drives, CUDA via CuPy."""
from __future__ import annotations

from . import backend


def is_available() -> bool:
    """True when a CUDA GPU is usable (CuPy installed and a device visible)."""
    return backend.cuda_is_available()


def device_count() -> int:
    if not is_available():
        return 0
    return backend.cupy.cuda.runtime.getDeviceCount()


def current_accelerator(check_available: bool = False):
    """``device('cuda')`` when CuPy is installed (and, with check_available, a GPU is visible);
    None otherwise, as torch.accelerator.current_accelerator()."""
    if backend.cupy is None or (check_available and not is_available()):
        return None
    return backend.device("cuda")


def current_device_index() -> int:
    return backend.cupy.cuda.runtime.getDevice() if is_available() else -1


def set_device_index(index: int) -> None:
    if not is_available():
        raise RuntimeError("accelerator.set_device_index: no CUDA device is available.")
    backend.cupy.cuda.Device(int(index)).use()


def synchronize(device=None) -> None:
    if is_available():
        backend.cupy.cuda.Device().synchronize()
