"""A small stand-in for CuPy (arrays, devices, streams, events, pinned memory, runtime copies,
and an NCCL communicator of one rank) so the GPU plumbing of runtime.distributed runs on a
CPU-only machine. It models ordering, not speed: every "kernel" and copy runs at once, and
streams only record what they were told to wait for, so tests can check that the caller's
current stream was made to wait (and that the host was not blocked) without a GPU.

Install in a (forked) rank with ``install()``; never in the test process itself.
"""
from __future__ import annotations

import ctypes
import sys
import threading
import types

import numpy as np

events_synchronized: list = []   # (thread name, event) of every host wait on an event


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous


class _Ptr:
    def __init__(self, a):
        self.ptr = a.ctypes.data


class _Dev:
    def __init__(self, i):
        self.id = i


class ndarray:
    """A numpy array that claims to live on GPU 0."""

    def __init__(self, a):
        self._a = a

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: _Ptr(self._a))
    device = property(lambda self: _Dev(0))

    def reshape(self, *shape):
        return ndarray(self._a.reshape(*shape))

    def __getitem__(self, k):
        return ndarray(self._a[k])

    def __setitem__(self, k, v):
        self._a[k] = v._a if isinstance(v, ndarray) else v

    def __iter__(self):
        return (ndarray(r) for r in self._a)

    def __itruediv__(self, v):
        self._a /= v
        return self

    def get(self):
        return self._a.copy()


def get_array_module(*arrays):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in arrays) else np


def asnumpy(a):
    return a._a.copy() if isinstance(a, ndarray) else np.asarray(a)


def asarray(a):
    return a if isinstance(a, ndarray) else ndarray(np.array(a))


def ascontiguousarray(a):
    return ndarray(np.ascontiguousarray(a._a))


def empty(shape, dtype=np.float32):
    return ndarray(np.empty(shape, dtype))


def ones(shape, dtype=np.float32):
    return ndarray(np.ones(shape, dtype))


def zeros(shape, dtype=np.float32):
    return ndarray(np.zeros(shape, dtype))


def stack(arrays):
    return ndarray(np.stack([a._a for a in arrays]))


def divide(a, b, out):
    np.divide(a._a, b, out=out._a)


float32 = np.float32


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded_on = None
        self.ptr = id(self)

    def record(self, stream=None):
        self.recorded_on = stream

    @property
    def done(self):
        return True

    def synchronize(self):
        events_synchronized.append((threading.current_thread().name, self))


_tls = threading.local()


class Stream:
    def __init__(self, non_blocking=False):
        self.waited: list = []
        self.ptr = id(self)

    def wait_event(self, ev):
        self.waited.append(ev)

    def synchronize(self):
        pass

    def record(self, ev=None):
        ev = Event() if ev is None else ev
        ev.record(self)
        return ev

    def __enter__(self):
        _tls.stack = getattr(_tls, "stack", []) + [self]
        return self

    def __exit__(self, *exc):
        _tls.stack.pop()


_null = Stream()


def get_current_stream(device_id=-1):
    stack = getattr(_tls, "stack", None)
    if stack:
        return stack[-1]
    s = getattr(_tls, "null", None)
    if s is None:
        s = _tls.null = Stream()   # per thread, so tests see what *their* stream waited on
    return s


class Device:
    def __init__(self, i=0):
        self.id = i
        self.pci_bus_id = f"0000:{i:02x}:00.0"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def use(self):
        pass

    def synchronize(self):
        pass


pinned_allocations = [0]


def alloc_pinned_memory(size):
    pinned_allocations[0] += 1
    return bytearray(size)


def _memcpy(dst, src, size, kind, stream):
    ctypes.memmove(dst, src, size)


runtime = types.SimpleNamespace(memcpyAsync=_memcpy, memcpyDeviceToHost=2, memcpyHostToDevice=1,
                                getDeviceCount=lambda: 1)

# -- NCCL of one rank: every collective is a copy; grouped send/recv to self pair up -------------

_NBYTES = {}


class NcclCommunicator:
    def __init__(self, ndev, uid, rank):
        assert ndev == 1 and rank == 0 and isinstance(uid, bytes) and len(uid) == 128
        self.sends: list = []
        self.calls: list = []

    def _copy(self, dst, src, count, t):
        if dst != src:
            ctypes.memmove(dst, src, count * _NBYTES[t])

    def allReduce(self, s, r, count, t, op, stream):
        self.calls.append(("allReduce", op))
        self._copy(r, s, count, t)

    def bcast(self, p, count, t, root, stream):
        assert root == 0
        self.calls.append(("bcast",))

    def reduce(self, s, r, count, t, op, root, stream):
        self.calls.append(("reduce", op))
        self._copy(r, s, count, t)

    def allGather(self, s, r, count, t, stream):
        self.calls.append(("allGather",))
        self._copy(r, s, count, t)

    def reduceScatter(self, s, r, count, t, op, stream):
        self.calls.append(("reduceScatter", op))
        self._copy(r, s, count, t)

    def send(self, p, count, t, peer, stream):
        assert peer == 0
        self.sends.append((p, count, t))

    def recv(self, p, count, t, peer, stream):
        sp, sc, st = self.sends.pop(0)
        assert (sc, st) == (count, t), "send/recv sizes differ"
        self._copy(p, sp, count, t)

    def check_async_error(self):
        pass

    def destroy(self):
        pass


def _nccl_module():
    m = types.ModuleType("cupy.cuda.nccl")
    for k, (name, size) in enumerate([("FLOAT16", 2), ("FLOAT32", 4), ("FLOAT64", 8),
                                      ("BFLOAT16", 2), ("INT8", 1), ("UINT8", 1),
                                      ("INT32", 4), ("UINT32", 4), ("INT64", 8),
                                      ("UINT64", 8)]):
        setattr(m, "NCCL_" + name, k)
        _NBYTES[k] = size
    for k, op in enumerate(["SUM", "PROD", "MAX", "MIN", "AVG"]):
        setattr(m, "NCCL_" + op, 100 + k)
    m.NcclCommunicator = NcclCommunicator
    m.get_unique_id = lambda: bytes(range(128))
    m.get_version = lambda: 22703
    m.groups = [0]

    def group_start():
        m.groups[0] += 1

    def group_end():
        m.groups[0] -= 1
    m.groupStart, m.groupEnd = group_start, group_end
    return m


def install():
    """Make this process see the fake as CuPy (tensor.backend and `import cupy`)."""
    from tensor import backend
    me = sys.modules[__name__]
    cuda = types.SimpleNamespace(Event=Event, Stream=Stream, Device=Device,
                                 get_current_stream=get_current_stream,
                                 alloc_pinned_memory=alloc_pinned_memory, runtime=runtime,
                                 nccl=_nccl_module())
    me.cuda = cuda
    sys.modules["cupy"] = me
    sys.modules["cupy.cuda"] = cuda
    sys.modules["cupy.cuda.nccl"] = cuda.nccl
    backend.cupy = me
    return me
