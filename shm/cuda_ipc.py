"""CuPy arrays between processes through CUDA IPC handles, on the same pickling path as numpy.

A CuPy array needs no copy to be shared: its device allocation is exported with
``cudaIpcGetMemHandle`` and opened in the receiver with ``cudaIpcOpenMemHandle`` (once per
process and handle: CUDA refuses a second open, so opened handles are cached). CuPy's memory
pool hands out pieces of bigger cudaMalloc blocks, so the handle names the block and the
pickle carries the array's byte offset inside it (found with the driver's
cuMemGetAddressRange).

Note [CUDA IPC lifetime]
~~~~~~~~~~~~~~~~~~~~~~~
As torch's CUDA IPC: device memory belongs to the producer's process, so the producer keeps
every block it sent alive until each consumer is done with it. Every send carries a one-int64
*lease* in CPU shared memory (an shm array, pickled by handle under Note [Shm lifetime]), set
to 1 by the producer; the consumer sets it to 0 when its array (and every view) is gone: after
a device synchronize (no queued kernel still touches the block) and after closing its mapping
when it was the last array on it. The producer drops blocks whose leases are all 0 on each
send and in ``ipc_collect()`` (torch.cuda.ipc_collect); a block sent and never received stays
alive (its lease is 1). A consumer that dies without letting go keeps the block until the
producer exits (the memory cannot be proven unused); ``release_exported()`` drops every block
regardless, for a producer that knows its consumers are gone.

Ordering, as torch's ``event_sync_required``: the producer's writes may still be queued when
the array is pickled, so each send records an interprocess CUDA event on the pickling thread's
current stream (the legacy default stream in a Queue's feeder thread, which waits for every
blocking stream) and sends its handle; the consumer's current stream waits on it before the
array is handed out. The producer keeps the event with the block until the lease ends.

A consumer opens each handle once (CUDA refuses a second open in one process): the mappings
are counted per handle under one lock, and closed when the last array on one is gone.
"""
from __future__ import annotations

import ctypes
import os
import threading

try:  # shm sits under tensor and may not import tensor.backend; same lookup as backend.py
    import cupy  # type: ignore
except Exception:  # ImportError, or a CUDA runtime that fails to load
    cupy = None

_exported: dict[tuple, list] = {}   # (handle, memory ptr) -> [(memory, events), leases...]
_opened: dict[bytes, list] = {}      # handle -> [device pointer, device, arrays using it]
_lock = threading.RLock()   # reentrant: a _Lease may be collected (and close) under it
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


def _open(handle: bytes, device: int) -> int:
    """This process's mapping of `handle` (opened once, counted; see _close)."""
    with _lock:
        entry = _opened.get(handle)
        if entry is None:
            with cupy.cuda.Device(device):
                entry = _opened[handle] = [cupy.cuda.runtime.ipcOpenMemHandle(handle),
                                           device, 0]
        entry[2] += 1
        return entry[0]


def _close(handle: bytes) -> None:
    with _lock:
        entry = _opened[handle]
        entry[2] -= 1
        if entry[2]:
            return
        del _opened[handle]
        with cupy.cuda.Device(entry[1]):
            cupy.cuda.runtime.ipcCloseMemHandle(entry[0])


class _Lease:
    """A consumer's use of one sent array; ends (lease set to 0) when its memory is unused."""

    def __init__(self, handle: bytes, device: int, lease):
        self.handle, self.device, self.lease = handle, device, lease

    def __del__(self):
        try:
            with cupy.cuda.Device(self.device):
                cupy.cuda.runtime.deviceSynchronize()  # kernels queued on it have finished
            _close(self.handle)
        except Exception:
            pass
        self.lease[0] = 0


def _wait_producer(event_handle: bytes | None, device: int) -> None:
    """The current stream waits for the producer's writes (its interprocess event)."""
    if event_handle is None:
        return
    runtime = cupy.cuda.runtime
    with cupy.cuda.Device(device):
        ev = runtime.ipcOpenEventHandle(event_handle)
        try:
            runtime.streamWaitEvent(cupy.cuda.get_current_stream().ptr, ev)
        finally:
            runtime.eventDestroy(ev)


def _rebuild_cupy(handle, block_size, offset, shape, dtype, strides, device, pid, mem_ptr,
                  offset_in_mem, lease, event_handle=None):
    if pid == os.getpid():  # CUDA cannot open our own handle: use the exported memory itself
        with _lock:
            entry = _exported.get((handle, mem_ptr))
        if entry is None:
            raise RuntimeError("shm.cuda_ipc: this process exported the array, then released "
                               "it with release_exported(); it cannot be rebuilt here")
        lease[0] = 0  # the rebuilt array holds the memory itself
        return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(entry[0][0], offset_in_mem),
                            strides)
    ptr = _open(handle, device)
    try:
        _wait_producer(event_handle, device)
    except BaseException:
        _close(handle)
        raise
    mem = cupy.cuda.UnownedMemory(ptr, block_size, _Lease(handle, device, lease), device)
    return cupy.ndarray(shape, dtype, cupy.cuda.MemoryPointer(mem, offset), strides)


def _producer_event(device: int):
    """An interprocess event after the pickling thread's queued work, and its handle."""
    with cupy.cuda.Device(device):
        ev = cupy.cuda.Event(block=False, disable_timing=True, interprocess=True)
        ev.record(cupy.cuda.get_current_stream())
        return ev, bytes(cupy.cuda.runtime.ipcGetEventHandle(ev.ptr))


def _rebuild_empty(shape, dtype, device):
    with cupy.cuda.Device(device):
        return cupy.empty(shape, dtype)


def reduce_cupy(a):
    """ForkingPickler reducer for cupy.ndarray: an IPC handle plus offset, shape, dtype, strides."""
    device = a.device.id
    if a.size == 0:   # CuPy gives an empty array no memory (pointer 0): nothing to export
        return _rebuild_empty, (a.shape, a.dtype.str, device)
    mem = a.data.mem
    with cupy.cuda.Device(device):
        base, block_size = _address_range(a.data.ptr, device)
        handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(base))
    event, event_handle = _producer_event(device)
    from .arrays import zeros

    ipc_collect()
    lease = zeros((1,), "int64")  # pickled by handle (see Note [CUDA IPC lifetime])
    lease[0] = 1
    with _lock:  # keeps the memory (and the event the consumer opens) alive for consumers
        entry = _exported.setdefault((handle, mem.ptr), [(mem, [])])
        entry[0][1].append(event)
        entry.append(lease)
    return _rebuild_cupy, (handle, block_size, a.data.ptr - base, a.shape, a.dtype.str,
                           a.strides, device, os.getpid(), mem.ptr, a.data.ptr - mem.ptr, lease,
                           event_handle)


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
