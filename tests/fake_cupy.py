"""A recording stand-in for the parts of CuPy that tensor.cuda drives (streams, events, stream
capture, memory pools, allocators), so that its bookkeeping (which stream captures, which
allocator is installed, what is restored after an error) is tested on machines without a GPU.

It checks protocol, not CUDA: the GPU tests (requires_cupy) check the real thing.
"""
from __future__ import annotations

import contextlib
import itertools
import threading
import types

_ptrs = itertools.count(0x1000, 0x10)


class FakeStream:
    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else next(_ptrs)
        self.device_id = -1 if null else 0
        self.non_blocking, self.priority = non_blocking, priority
        self.capturing = None       # the mode while capturing
        self.log = []               # ("wait", event) / ("record", event) / ("launch", graph)

    def __enter__(self):
        _state.stack.append(self)
        return self

    def __exit__(self, *exc):
        assert _state.stack.pop() is self

    def use(self):
        _state.stack[:] = [self]

    def begin_capture(self, mode=None):
        assert self.ptr != 0, "CUDA can't capture the legacy default stream"
        assert self.capturing is None, "capture already running"
        self.capturing = mode

    def end_capture(self):
        assert self.capturing is not None, "no capture running"
        self.capturing = None
        return FakeGraph()

    def is_capturing(self):
        return self.capturing is not None

    def record(self, event=None):
        event = FakeEvent() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        self.log.append(("wait", event))

    @property
    def done(self):
        return True

    def synchronize(self):
        pass


class FakeEvent:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.ptr = next(_ptrs)
        self.block, self.disable_timing = block, disable_timing
        self.recorded_on = None

    def record(self, stream=None):
        self.recorded_on = stream
        (stream or get_current_stream()).log.append(("record", self))

    @property
    def done(self):
        return True

    def synchronize(self):
        pass


class FakeGraph:
    def launch(self, stream=None):
        (stream or get_current_stream()).log.append(("launch", self))


class FakeMemoryPool:
    __slots__ = ("used", "total", "mallocs")   # no __weakref__, like cupy.cuda.MemoryPool

    def __init__(self):
        self.used = self.total = 0
        self.mallocs = []

    def malloc(self, size):
        self.mallocs.append(size)
        self.used += size
        self.total = max(self.total, self.used)
        return ("ptr", size)

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total

    def free_all_blocks(self, stream=None):
        self.total = self.used


class FakeDevice:
    def __init__(self, idx=None):
        self.id = 0 if idx is None else idx

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def use(self):
        pass

    def synchronize(self):
        _state.syncs += 1


class _State(threading.local):
    def __init__(self):
        self.stack = []
        self.allocator = None
        self.syncs = 0


class _FakeArrayBase:
    def __matmul__(self, other):
        return "cupy"


class FakeArray(_FakeArrayBase):
    """Stands for cupy.ndarray: a Python class inheriting __matmul__ from its (Cython) base."""


def _fake_matmul(a, b, *args, **kwargs):
    return "cupy"


_state = _State()
_null = FakeStream(null=True)
_default_pool = FakeMemoryPool()


def get_current_stream(device_id=-1):
    return _state.stack[-1] if _state.stack else _null


@contextlib.contextmanager
def using_allocator(allocator=None):
    old = _state.allocator
    _state.allocator = allocator
    try:
        yield
    finally:
        _state.allocator = old


def make_fake_cupy():
    """A module-like object with the cupy attributes tensor.cuda uses."""
    FakeStream.null = _null
    runtime = types.SimpleNamespace(
        getDevice=lambda: 0, getDeviceCount=lambda: 1, memGetInfo=lambda: (6, 8),
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 8, "major": 9,
                                       "minor": 0, "multiProcessorCount": 132})
    cuda = types.SimpleNamespace(
        Stream=FakeStream, Event=FakeEvent, Device=FakeDevice, MemoryPool=FakeMemoryPool,
        runtime=runtime, get_current_stream=get_current_stream, using_allocator=using_allocator,
        get_elapsed_time=lambda a, b: 1.5)
    return types.SimpleNamespace(cuda=cuda, get_default_memory_pool=lambda: _default_pool,
                                 ndarray=FakeArray, matmul=_fake_matmul,
                                 state=_state, default_pool=_default_pool)
