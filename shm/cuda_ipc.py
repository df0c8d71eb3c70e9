"""CuPy arrays between processes through CUDA IPC handles, on the same pickling path as numpy.

A CuPy array needs no copy to be shared: its device allocation is exported with
``cudaIpcGetMemHandle`` and opened in the receiver with ``cudaIpcOpenMemHandle`` (once per
process and handle: CUDA refuses a second open, so opened handles are cached). CuPy's memory
pool hands out pieces of bigger cudaMalloc blocks, so the handle names the block and the
pickle carries the array's byte offset inside it (found with the driver's
cuMemGetAddressRange).

Lifetime, as torch's CUDA IPC: device memory belongs to the producer's process, so the producer
keeps every block it sent alive until each consumer is done with it. Every send carries a
one-int64 *lease* in CPU shared memory, set to 1 by the producer; the consumer sets it to 0 when
its array (and every view) is gone, after a device synchronize so no queued kernel still reads
it. The producer drops blocks whose leases are all 0 on each send and in ``ipc_collect()``
(torch.cuda.ipc_collect). A consumer that dies without letting go keeps the block until the
producer exits (the memory cannot be proven unused); ``release_exported()`` drops every block
regardless, for a producer that knows its consumers are gone.
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

_exported: dict[tuple, list] = {}      # (handle, memory ptr) -> [cupy memory, leases...]
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


class _Lease:
    """A consumer's use of one sent array; ends (lease set to 0) when its memory is unused."""

    def __init__(self, opened: _Opened, lease):
        self.opened, self.lease = opened, lease

    def __del__(self):
        try:
            with cupy.cuda.Device(self.opened.device):
                cupy.cuda.runtime.deviceSynchronize()  # kernels queued on it have finished
        except Exception:
            pass
        self.lease[0] = 0


def _rebuild_cupy(handle, block_size, offset, shape, dtype, strides, device, pid, mem_ptr,
                  offset_in_mem, lease):
    if pid == os.getpid():  # CUDA cannot open our own handle: use the exported memory itself
        with _lock:
            entry = _exported.get((handle, mem_ptr))
        if entry is None:
            raise RuntimeError("shm.cuda_ipc: this process exported the array, then released "
                               "it with release_exported(); it cannot be rebuilt here")
        lease[0] = 0  # the rebuilt array holds the memory itself
        return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(entry[0], offset_in_mem),
                            strides)
    with _lock:
        ref = _opened.get(handle)
        opened = ref() if ref is not None else None
        if opened is None:
            opened = _Opened(handle, device)
            _opened[handle] = weakref.ref(opened)
    mem = cupy.cuda.UnownedMemory(opened.ptr, block_size, _Lease(opened, lease), device)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(mem, offset), strides)


def reduce_cupy(a):
    """ForkingPickler reducer for cupy.ndarray: an IPC handle plus offset, shape, dtype, strides."""
    device = a.device.id
    mem = a.data.mem
    with cupy.cuda.Device(device):
        base, block_size = _address_range(a.data.ptr, device)
        handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(base))
    from .arrays import zeros

    ipc_collect()
    lease = zeros((1,), "int64")  # pickled by handle with the rest (see the module docstring)
    lease[0] = 1
    with _lock:  # keeps the memory alive for consumers
        _exported.setdefault((handle, mem.ptr), [mem]).append(lease)
    return _rebuild_cupy, (handle, block_size, a.data.ptr - base, a.shape, a.dtype.str,
                           a.strides, device, os.getpid(), mem.ptr, a.data.ptr - mem.ptr, lease)


def ipc_collect() -> int:
    """Let go of exported blocks no consumer uses any more; returns how many (torch name)."""
    freed = 0
    with _lock:
        for key, entry in list(_exported.items()):
            entry[1:] = [lease for lease in entry[1:] if lease[0] != 0]
            if len(entry) == 1:
                del _exported[key]
                freed += 1
    return freed


def release_exported() -> int:
    """Let go of every exported block, used or not; returns how many. See the docstring."""
    with _lock:
        n = len(_exported)
        _exported.clear()
    return n


def init_reductions() -> None:
    if cupy is None:
        return
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(cupy.ndarray, reduce_cupy)
