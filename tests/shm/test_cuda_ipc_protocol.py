"""CUDA IPC's protocol on a CPU (shm/cuda_ipc.py): CuPy and the CUDA calls replaced by a fake
that hands out made-up device pointers and records the IPC calls. What it checks: an array
inside a pool block travels as the block's handle plus its offset, a view as a second user
of the same mapping (opened once), the lease ends when the last array on it is gone (and the
mapping is closed), the producer then lets go, and an empty array needs no handle. The real
thing runs in test_cuda_ipc.py on a GPU."""
import os
import types

import numpy as np
import pytest

from shm import cuda_ipc

BLOCK_BASE, BLOCK_SIZE = 0x7F00_0000_0000, 2 << 20   # the producer's cudaMalloc block
OPENED_BASE = 0x7E00_0000_0000                       # where the consumer maps it


class _Mem:
    def __init__(self, ptr, size=0, owner=None, device_id=-1):
        self.ptr, self.size, self.owner = ptr, size, owner


class _MemPtr:
    def __init__(self, mem, offset=0):
        self.mem, self.ptr = mem, mem.ptr + offset


class _Array:
    def __init__(self, shape, dtype, memptr=None, strides=None):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.data = memptr if memptr is not None else _MemPtr(_Mem(0))
        self.strides = strides if strides is not None else \
            np.empty(self.shape, self.dtype).strides
        self.device = types.SimpleNamespace(id=0)


class _Device:
    def __init__(self, i=0):
        self.id = i

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def fake(monkeypatch):
    calls = []

    def address_range(ptr, device):
        if not BLOCK_BASE <= ptr < BLOCK_BASE + BLOCK_SIZE:
            raise RuntimeError(f"cuMemGetAddressRange({ptr:#x}): not a device pointer")
        return BLOCK_BASE, BLOCK_SIZE

    def open_mem(handle):
        calls.append(("open", handle))
        return OPENED_BASE

    runtime = types.SimpleNamespace(
        ipcGetMemHandle=lambda base: b"handle-%x" % base,
        ipcOpenMemHandle=open_mem,
        ipcCloseMemHandle=lambda ptr: calls.append(("close", ptr)),
        ipcOpenEventHandle=lambda h: calls.append(("event", h)) or 1,
        streamWaitEvent=lambda stream, ev: calls.append(("wait", stream)),
        eventDestroy=lambda ev: None,
        deviceSynchronize=lambda: calls.append(("sync",)))
    cuda = types.SimpleNamespace(Device=_Device, runtime=runtime, MemoryPointer=_MemPtr,
                                 UnownedMemory=_Mem,
                                 get_current_stream=lambda: types.SimpleNamespace(ptr=42))
    cp = types.SimpleNamespace(ndarray=_Array, cuda=cuda,
                               empty=lambda shape, dtype: _Array(shape, dtype))
    monkeypatch.setattr(cuda_ipc, "cupy", cp)
    monkeypatch.setattr(cuda_ipc, "_address_range", address_range)
    monkeypatch.setattr(cuda_ipc, "_producer_event", lambda device: (object(), b"event"))
    monkeypatch.setattr(cuda_ipc, "_exported", {})
    monkeypatch.setattr(cuda_ipc, "_opened", {})
    return calls


def _as_other_process(reduced):
    fn, args = reduced
    args = list(args)
    args[7] = os.getpid() + 1   # the producer's pid: not this process
    return fn(*args)


def test_a_pool_sub_allocation_travels_as_its_blocks_handle_plus_offset(fake):
    chunk = _Mem(BLOCK_BASE + 8192)             # the pool's piece of the cudaMalloc block
    x = _Array((4, 8), np.float32, _MemPtr(chunk, 512))
    view = _Array((2, 2), np.float32, _MemPtr(chunk, 512 + 2 * 32 + 3 * 4), (32, 4))
    rx = cuda_ipc.reduce_cupy(x)
    rv = cuda_ipc.reduce_cupy(view)
    assert rx[1][0] == rv[1][0] == b"handle-%x" % BLOCK_BASE
    y, w = _as_other_process(rx), _as_other_process(rv)
    assert y.data.ptr == OPENED_BASE + 8192 + 512
    assert w.data.ptr == OPENED_BASE + 8192 + 512 + 76 and w.strides == (32, 4)
    assert y.shape == (4, 8) and y.dtype == np.float32
    assert [c for c in fake if c[0] == "open"] == [("open", b"handle-%x" % BLOCK_BASE)], \
        "one handle is opened once per process"
    assert ("wait", 42) in fake, "the consumer's stream waits for the producer's event"
    lease_x, lease_v = rx[1][10], rv[1][10]
    assert lease_x[0] == lease_v[0] == 1 and cuda_ipc.ipc_collect() == 0
    del y
    assert lease_x[0] == 0 and lease_v[0] == 1
    assert not any(c[0] == "close" for c in fake), "the view still uses the mapping"
    assert cuda_ipc.ipc_collect() == 0, "the block is still leased to the view"
    del w
    assert ("close", OPENED_BASE) in fake and lease_v[0] == 0
    assert cuda_ipc.ipc_collect() == 1 and not cuda_ipc._exported


def test_rebuilt_in_the_producer_itself_shares_its_memory(fake):
    chunk = _Mem(BLOCK_BASE)
    x = _Array((6,), np.int64, _MemPtr(chunk, 16))
    fn, args = cuda_ipc.reduce_cupy(x)
    y = fn(*args)
    assert y.data.mem is chunk and y.data.ptr == x.data.ptr
    assert not any(c[0] == "open" for c in fake)
    assert cuda_ipc.ipc_collect() == 1


def test_an_empty_array_needs_no_handle(fake):
    x = _Array((0, 3), np.float32)   # CuPy: no memory, data.ptr == 0
    fn, args = cuda_ipc.reduce_cupy(x)
    y = fn(*args)
    assert y.shape == (0, 3) and y.dtype == np.float32 and not cuda_ipc._exported
