"""CuPy arrays between processes through CUDA IPC handles, on the same pickling path as numpy.

A CuPy array needs no copy to be shared: its device allocation is exported with
``cudaIpcGetMemHandle`` and opened in the receiver with ``cudaIpcOpenMemHandle`` (once per
process and handle: CUDA refuses a second open, so opened handles are cached). CuPy's memory
pool hands out pieces of bigger cudaMalloc blocks, so the handle names the block and the
pickle carries the array's byte offset inside it (found with the driver's
cuMemGetAddressRange).

Lifetime differs from CPU segments, as in torch: the *producer* must keep the array alive while
consumers use it; CUDA frees the block when its owner frees it. Here the producer keeps every
block it exported alive until the process exits or ``release_exported()`` is called, so a
consumer can never read freed memory; call ``release_exported()`` once consumers are done
(a trainer at the end of an epoch, say).
"""
from __future__ import annotations

import ctypes
import os
import threading
import weakref

try:  # shm sits under tensor and may not import tensor.backend; same lookup as backend.py
    import cupy  # type: ignore
except Exception:  # ImportError, or a CUDA runtime that fails to load
    cupy = None

_exported: dict[tuple, object] = {}    # (handle, memory ptr) -> the cupy Memory kept alive
_opened: dict[bytes, weakref.ref] = {}  # handle -> this process's _Opened mapping
_lock = threading.Lock()
_libcuda = None


def is_cupy_array(a) -> bool:
    return cupy is not None and isinstance(a, cupy.ndarray)


def is_shared(a) -> bool:
    """Every CuPy array can be exported through CUDA IPC (torch: CUDA tensors are shared)."""
    return is_cupy_array(a)


def share(a):
    """CuPy arrays are shareable as they are: returns `a`."""
    return a


def _address_range(ptr: int, device: int) -> tuple[int, int]:
    """(base, size) of the cudaMalloc block containing device pointer `ptr`.

    Runs in whatever thread pickles (a Queue's feeder thread, which has no current CUDA
    context), so the device's primary context (the one CuPy's runtime calls use) is pushed
    around the driver call.
    """
    global _libcuda
    if _libcuda is None:
        _libcuda = ctypes.CDLL("libcuda.so.1")
    ctx, base, size = ctypes.c_void_p(), ctypes.c_uint64(), ctypes.c_size_t()
    rc = _libcuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), ctypes.c_int(device))
    if rc == 0:
        rc = _libcuda.cuCtxPushCurrent_v2(ctx)
        if rc == 0:
            rc = _libcuda.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                                  ctypes.c_uint64(ptr))
            _libcuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        _libcuda.cuDevicePrimaryCtxRelease_v2(ctypes.c_int(device))
    if rc != 0:
        raise RuntimeError(f"shm.cuda_ipc: cuMemGetAddressRange({ptr:#x}) on device {device} "
                           f"failed with CUDA driver error {rc}")
    return base.value, size.value


class _Opened:
    """This process's opening of one IPC handle; closed when the last array on it is gone."""

    def __init__(self, handle: bytes, device: int):
        self.device = device
        with cupy.cuda.Device(device):
            self.ptr = cupy.cuda.runtime.ipcOpenMemHandle(handle)

    def __del__(self):
        try:
            with cupy.cuda.Device(self.device):
                cupy.cuda.runtime.ipcCloseMemHandle(self.ptr)
        except Exception:
            pass


def _rebuild_cupy(handle, block_size, offset, shape, dtype, strides, device, pid, mem_ptr,
                  offset_in_mem):
    if pid == os.getpid():  # CUDA cannot open our own handle: use the exported memory itself
        with _lock:
            mem = _exported.get((handle, mem_ptr))
        if mem is None:
            raise RuntimeError("shm.cuda_ipc: this process exported the array, then released "
                               "it with release_exported(); it cannot be rebuilt here")
        return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(mem, offset_in_mem), strides)
    with _lock:
        ref = _opened.get(handle)
        opened = ref() if ref is not None else None
        if opened is None:
            opened = _Opened(handle, device)
            _opened[handle] = weakref.ref(opened)
    mem = cupy.cuda.UnownedMemory(opened.ptr, block_size, opened, device)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(mem, offset), strides)


def reduce_cupy(a):
    """ForkingPickler reducer for cupy.ndarray: an IPC handle plus offset, shape, dtype, strides."""
    device = a.device.id
    mem = a.data.mem
    with cupy.cuda.Device(device):
        base, block_size = _address_range(a.data.ptr, device)
        handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(base))
    with _lock:  # keeps the memory alive for consumers (module docstring)
        _exported[(handle, mem.ptr)] = mem
    return _rebuild_cupy, (handle, block_size, a.data.ptr - base, a.shape, a.dtype.str,
                           a.strides, device, os.getpid(), mem.ptr, a.data.ptr - mem.ptr)


def release_exported() -> int:
    """Let go of the device blocks this process exported; returns how many. See the docstring."""
    with _lock:
        n = len(_exported)
        _exported.clear()
    return n


def init_reductions() -> None:
    if cupy is None:
        return
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(cupy.ndarray, reduce_cupy)
