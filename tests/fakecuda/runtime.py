"""``cupy.cuda`` of the fake: devices, streams, events, stream capture, memory pools, allocators,
pinned memory and runtime copies.

It models ordering, not speed: every kernel and copy runs at once. A stream capture records
as well (Note [Fake graph capture]). Streams record what they
were told to do (``log``: ("record", event), ("wait", event), ("launch", graph)), so tests
check that the right stream waited and that the host was not blocked. What CUDA refuses in a
stream capture fails here too: a host synchronize or read, a pinned allocation, and (CuPy 14)
MemoryPointer.copy_from_host_async; runtime.memcpyAsync is allowed. The current stream and
the allocator are per thread, as in CuPy; so is the null stream (``Stream.null``), so that a
thread sees only its own waits, and so is the current device, as in CUDA (a new thread starts
on device 0). What a test reads back lives in ``log`` (reset by install): ``calls`` (RawKernel
launches by name), ``checks`` (ElementwiseKernel launches: name, host copies of the
arguments), ``events_synchronized`` (host waits: thread name, event), ``pinned_allocations``
(the device current at each), ``devices_used`` (Device.use()), ``syncs``
(Device.synchronize()).
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import threading
import types

_ptrs = itertools.count(0x1000, 0x10)

# Note [Fake graph capture]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# CUDA runs nothing while a stream captures: the kernels and copies become graph nodes, and
# Graph.launch runs them all, on whatever the captured buffers then hold. The fake needs the
# results' shapes during capture, so it does run each op, and also records it (``record``: a
# closure that reruns the op into the very buffer it produced, or reruns an in-place write,
# a kernel, a copy). end_capture then undoes what the capture wrote: every device buffer
# alive at begin_capture gets its contents back (arrays.snapshot/restore), and float buffers
# made during the capture are filled with NaN, as uninitialised device memory they are until
# a replay. launch() runs the closures in order. A stream that waits on an event recorded in
# a capturing stream joins that capture, as in CUDA. Allocations (empty) are no nodes.


class Log:
    def __init__(self, device_count=1):
        self.device_count = device_count
        self.calls, self.checks, self.events_synchronized = [], [], []
        self.pinned_allocations, self.devices_used, self.syncs = [], [], 0
        self.pinned = []          # the pinned host buffers (kept alive), for is_memory_pinned
        self.default_pool = MemoryPool()


class _Local(threading.local):
    def __init__(self):
        self.stack = []           # streams made current by `with stream` / use()
        self.allocator = None
        self.null = None
        self.device = 0           # the current device
        self.quiet = 0            # > 0: inside a recorded op or a replay (nothing records)
        self.sync_allowed = True  # cupyx.allow_synchronize


state = _Local()


def reset(device_count=1):
    """A fresh log (install() also gives this thread fresh streams)."""
    global log
    log = Log(device_count)


def _check_device(i):
    if not 0 <= i < log.device_count:
        raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {i} (the fake has "
                           f"{log.device_count} device(s))")


class Device:
    def __init__(self, device=None):
        self.id = state.device if device is None else int(device)
        self.pci_bus_id = f"0000:{self.id:02x}:00.0"
        self._prev = []

    def __enter__(self):
        _check_device(self.id)
        self._prev.append(state.device)
        state.device = self.id
        return self

    def __exit__(self, *exc):
        state.device = self._prev.pop()

    def use(self):
        _check_device(self.id)
        log.devices_used.append(self.id)
        state.device = self.id

    def synchronize(self):
        _no_sync_in_capture(get_current_stream())
        log.syncs += 1


class _StreamType(type):
    @property
    def null(cls):  # one per thread (see the module docstring)
        if state.null is None:
            state.null = Stream(null=True)
        return state.null


class Stream(metaclass=_StreamType):
    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else next(_ptrs)
        self.device_id = -1 if null else state.device
        self.non_blocking, self.priority = non_blocking, priority
        self.capturing = None       # the capture mode while capturing
        self._nodes = None          # the capture's recorded ops (shared with joined streams)
        self._joined, self._snap, self._root = [], None, None
        self.log = []

    @property
    def waited(self):
        return [e for kind, e in self.log if kind == "wait"]

    def __enter__(self):
        state.stack.append(self)
        return self

    def __exit__(self, *exc):
        assert state.stack.pop() is self

    def use(self):
        state.stack[:] = [self]
        return self

    def begin_capture(self, mode=None):
        assert self.ptr != 0, "CUDA can't capture the legacy default stream"
        assert self.capturing is None, "capture already running"
        self.capturing = 0 if mode is None else mode   # CuPy's default: global (0)
        from .arrays import snapshot
        self._nodes, self._joined, self._snap, self._root = [], [], snapshot(), self

    def end_capture(self):
        assert self.capturing is not None, "no capture running"
        assert self._snap is not None, "end_capture on a stream that only joined a capture"
        from .arrays import restore
        nodes, snap = self._nodes, self._snap
        for s in [self] + self._joined:
            s.capturing, s._nodes, s._root = None, None, None
        self._joined, self._snap = [], None
        restore(snap)   # Note [Fake graph capture]: the capture ran nothing on the device
        return Graph(nodes)

    def is_capturing(self):
        return self.capturing is not None

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        self.log.append(("wait", event))
        origin = event.recorded_on
        if origin is not None and origin._nodes is not None and self._nodes is None:
            self.capturing, self._nodes = origin.capturing, origin._nodes   # joins the capture
            self._root = origin._root
            self._root._joined.append(self)

    @property
    def done(self):
        return True

    def synchronize(self):
        _no_sync_in_capture(self)


class DeviceSynchronized(RuntimeError):
    """cupyx.DeviceSynchronized: a host synchronization under allow_synchronize(False)."""

    def __init__(self, message=None):
        super().__init__(message or "Device synchronization was detected while disallowed.")


@contextlib.contextmanager
def allow_synchronize(allow):
    """cupyx.allow_synchronize (deprecated in CuPy, which warns): the fake detects the host
    reads of device arrays (get, item, bool, float, ...), as CuPy's ndarray.get does."""
    import warnings
    warnings.warn("cupyx.allow_synchronize will be removed in future releases as it is not "
                  "possible to reliably detect synchronizations.")
    old = state.sync_allowed
    state.sync_allowed = allow
    try:
        yield
    finally:
        state.sync_allowed = old


def _declare_synchronize():
    if not state.sync_allowed:
        raise DeviceSynchronized()


def _no_sync_in_capture(stream):
    if stream.is_capturing():
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when "
                           "stream is capturing (a host synchronization or read)")


def get_current_stream(device_id=-1):
    return state.stack[-1] if state.stack else Stream.null


def record(op):
    """Keep op (a closure that redoes a device op) for the current stream's capture, if one
    runs (Note [Fake graph capture])."""
    if state.quiet:
        return
    nodes = get_current_stream()._nodes
    if nodes is not None:
        nodes.append(op)


@contextlib.contextmanager
def quiet():
    """Nothing records inside (an op recorded as a whole, or a replay)."""
    state.quiet += 1
    try:
        yield
    finally:
        state.quiet -= 1


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.ptr = next(_ptrs)
        self.block, self.disable_timing = block, disable_timing
        self.recorded_on = None

    def record(self, stream=None):
        self.recorded_on = get_current_stream() if stream is None else stream
        self.recorded_on.log.append(("record", self))

    @property
    def done(self):
        return True

    def synchronize(self):
        # CUDA returns at once for an event never recorded: a wait on nothing is a bug here
        assert self.recorded_on is not None, "synchronize() of an event never recorded"
        log.events_synchronized.append((threading.current_thread().name, self))


class Graph:
    def __init__(self, nodes=()):
        self._nodes = list(nodes)

    def launch(self, stream=None):
        (stream or get_current_stream()).log.append(("launch", self))
        with quiet():
            for op in self._nodes:
                op()


class MemoryPool:
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


@contextlib.contextmanager
def using_allocator(allocator=None):
    old = state.allocator
    state.allocator = allocator
    try:
        yield
    finally:
        state.allocator = old


def set_capturing(on: bool):
    """Test hook: make this thread's current stream a side stream under capture (on) or end
    that capture (off) and return its Graph (None if none ran), for code that only asks
    ``get_current_stream().is_capturing()``. The capture's work happens at Graph.launch()."""
    if on:
        s = Stream(non_blocking=True)
        s.begin_capture()
        state.stack.append(s)
    elif state.stack and state.stack[-1].is_capturing():
        return state.stack.pop().end_capture()
    return None


def alloc_pinned_memory(size):
    if get_current_stream().is_capturing():  # as CUDA (and tensor.cuda.graphs' guard) refuse
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: pinned allocation during a "
                           "stream capture")
    log.pinned_allocations.append(state.device)
    buf = bytearray(size)
    log.pinned.append(buf)
    return buf


def _is_memory_pinned(ptr):
    for b in log.pinned:
        start = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)) if len(b) else -1
        if start <= ptr < start + len(b):
            return True
    return False


class PointerAttributes:
    """cupy.cuda.runtime.PointerAttributes: device, devicePointer, hostPointer, type."""

    def __init__(self, device, devicePointer, hostPointer, type=-1):  # noqa: A002 (CuPy's)
        self.device, self.devicePointer, self.hostPointer, self.type = \
            device, devicePointer, hostPointer, type


def _pointer_attributes(ptr):
    """cupy.cuda.runtime.pointerGetAttributes: pinned host memory is memoryTypeHost (1), a
    fake device array's memory memoryTypeDevice (2), anything else unregistered (0)."""
    from .arrays import BY_PTR
    if _is_memory_pinned(ptr):
        return PointerAttributes(state.device, ptr, ptr, 1)
    for base, arr in list(BY_PTR.items()):
        if base <= ptr < base + max(arr.nbytes, 1):
            return PointerAttributes(arr._dev, ptr, 0, 2)
    return PointerAttributes(-2, 0, 0, 0)


def memcpy(dst, src, size):
    ctypes.memmove(dst, src, size)
    record(lambda: ctypes.memmove(dst, src, size))


def _memcpy_async(dst, src, size, kind, stream):
    """cupy.cuda.runtime.memcpyAsync: a binding of intptr_t arguments (a stream's .ptr, not
    the Stream) and a cudaMemcpyKind."""
    for name, v in (("dst", dst), ("src", src), ("size", size), ("stream", stream)):
        if isinstance(v, bool) or not hasattr(type(v), "__index__"):
            raise TypeError(f"memcpyAsync: {name} must be an integer, got {type(v).__name__}")
    assert kind in (0, 1, 2, 3, 4), f"memcpyAsync: {kind!r} is not a cudaMemcpyKind"
    memcpy(dst, src, size)


runtime = types.SimpleNamespace(
    getDevice=lambda: state.device, getDeviceCount=lambda: log.device_count,
    memGetInfo=lambda: (6, 8), memcpyAsync=_memcpy_async,
    pointerGetAttributes=_pointer_attributes, PointerAttributes=PointerAttributes,
    memoryTypeUnregistered=0, memoryTypeHost=1, memoryTypeDevice=2, memoryTypeManaged=3,
    memcpyHostToHost=0, memcpyHostToDevice=1, memcpyDeviceToHost=2, memcpyDeviceToDevice=3, memcpyDefault=4,
    getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 8, "major": 9,
                                   "minor": 0, "multiProcessorCount": 132})

cuda = types.ModuleType("cupy.cuda")
cuda.__dict__.update(
    Stream=Stream, Event=Event, Device=Device, MemoryPool=MemoryPool, Graph=Graph,
    runtime=runtime, get_current_stream=get_current_stream, using_allocator=using_allocator,
    alloc_pinned_memory=alloc_pinned_memory, get_elapsed_time=lambda a, b: 1.5,
    pinned_memory=types.SimpleNamespace(is_memory_pinned=_is_memory_pinned))

log = Log()
