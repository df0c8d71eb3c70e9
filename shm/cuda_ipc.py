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

_exported: dict[int, object] = {}      # block base pointer -> the MemoryPointer keeping it alive
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


def _address_range(ptr: int) -> tuple[int, int]:
    """(base, size) of the cudaMalloc block containing device pointer `ptr`."""
    global _libcuda
    if _libcuda is None:
        _libcuda = ctypes.CDLL("libcuda.so.1")
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    rc = _libcuda.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                          ctypes.c_uint64(ptr))
    if rc != 0:
        raise RuntimeError(f"shm.cuda_ipc: cuMemGetAddressRange({ptr:#x}) failed with CUDA "
                           f"error {rc}; is the array's device current?")
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


def _rebuild_cupy(handle, block_size, offset, shape, dtype, strides, device, pid):
    if pid == os.getpid():  # same process: CUDA cannot open our own handle; use the block
        with _lock:
            base_mem = _exported.get(_handle_key(handle))
        if base_mem is None:
            raise RuntimeError("shm.cuda_ipc: this process exported the array but released it")
        mem = base_mem
        ptr = cupy.cuda.MemoryPointer(mem.mem, mem.ptr - mem.mem.ptr + offset) \
            if hasattr(mem, "mem") else None
        return cupy.ndarray(shape, dtype, ptr, strides)
    with _lock:
        ref = _opened.get(handle)
        opened = ref() if ref is not None else None
        if opened is None:
            opened = _Opened(handle, device)
            _opened[handle] = weakref.ref(opened)
    mem = cupy.cuda.UnownedMemory(opened.ptr, block_size, opened, device)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(mem, offset), strides)


def _handle_key(handle: bytes) -> int:
    return hash(handle)


def reduce_cupy(a):
    """ForkingPickler reducer for cupy.ndarray: an IPC handle plus offset, shape, dtype, strides."""
    device = a.device.id
    with cupy.cuda.Device(device):
        base, block_size = _address_range(a.data.ptr)
        handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(base))
        with _lock:
            # keep the block alive for consumers (module docstring); for a same-process
            # rebuild, a pointer at the block's base
            _exported[_handle_key(handle)] = cupy.cuda.MemoryPointer(
                a.data.mem, base - a.data.mem.ptr) if a.data.mem.ptr <= base else a.data
    return _rebuild_cupy, (handle, block_size, a.data.ptr - base, a.shape, a.dtype.str,
                           a.strides, device, os.getpid())


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
