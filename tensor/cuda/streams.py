"""CUDA streams and events (torch.cuda.Stream, Event, stream(), current_stream()), on CuPy.

A ``Stream`` wraps a ``cupy.cuda.Stream`` (``s.cupy_stream``); making it current with
``with tensor.cuda.stream(s):`` makes every CuPy kernel, and so every zgrad op, queue on it.
As in PyTorch, ``Stream()`` makes a non-blocking stream (no implicit ordering with the legacy
default stream): order work across streams with ``wait_stream`` / ``wait_event``, and keep an
array alive until the streams that use it are done with it.
"""
from __future__ import annotations

from .. import backend
from ._util import device_index, require


class Stream:
    """A CUDA stream on `device` (the current GPU by default), as torch.cuda.Stream.

    Args:
        device: the GPU (int, 'cuda:N', tensor.device); None means the current one.
        priority: lower is more urgent (-1 is high priority), 0 the default.
    """

    def __init__(self, device=None, priority: int = 0, *, _cupy_stream=None):
        cp = require("Stream")
        if _cupy_stream is not None:
            self.cupy_stream = _cupy_stream
            did = getattr(_cupy_stream, "device_id", -1)
            self._device = did if did is not None and did >= 0 else cp.cuda.runtime.getDevice()
            return
        self._device = device_index(device, "Stream")
        with cp.cuda.Device(self._device):
            self.cupy_stream = cp.cuda.Stream(non_blocking=True,
                                              priority=int(priority) if priority else None)

    @classmethod
    def _wrap(cls, cupy_stream) -> "Stream":
        return cls(_cupy_stream=cupy_stream)

    @property
    def device(self):
        return backend.device("cuda", self._device)

    @property
    def cuda_stream(self) -> int:
        """The raw cudaStream_t, as an int (0 is the legacy default stream)."""
        return self.cupy_stream.ptr

    def __cuda_stream__(self):
        # the CUDA stream protocol: cupy.cuda.Stream.from_external(s) and other libraries take it
        return (0, self.cuda_stream)

    def wait_event(self, event: "Event") -> None:
        """Make future work on this stream wait until `event` (an Event, or a cupy.cuda.Event)
        completes, without a host wait."""
        ev = event._event if isinstance(event, Event) else event
        if ev is not None:   # waiting on a never-recorded event is a no-op, as in CUDA
            self.cupy_stream.wait_event(ev)

    def wait_stream(self, stream: "Stream") -> None:
        """Make future work on this stream wait for all work queued on `stream` so far."""
        if stream.cuda_stream != self.cuda_stream:
            self.wait_event(stream.record_event())

    def record_event(self, event: "Event" = None) -> "Event":
        """Record `event` (a new one when None) on this stream and return it."""
        event = Event() if event is None else event
        event.record(self)
        return event

    def query(self) -> bool:
        """True when all work queued on this stream has finished."""
        return bool(self.cupy_stream.done)

    def synchronize(self) -> None:
        """Block the host until all work queued on this stream has finished."""
        self.cupy_stream.synchronize()

    def __enter__(self):
        self._ctx = StreamContext(self)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    def __eq__(self, other):
        if not isinstance(other, Stream):
            return NotImplemented
        return self.cuda_stream == other.cuda_stream and self._device == other._device

    def __hash__(self):
        return hash((self.cuda_stream, self._device))

    def __repr__(self):
        return f"<tensor.cuda.Stream device=cuda:{self._device} cuda_stream={self.cuda_stream:#x}>"


class Event:
    """A CUDA event, as torch.cuda.Event: a marker in a stream's work that other streams can
    wait on, the host can wait on, and (with enable_timing) time.

    The CuPy event is created at the first record(), on the current device, as PyTorch does.
    """

    def __init__(self, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False):
        require("Event")
        self.enable_timing = bool(enable_timing)
        self.blocking = bool(blocking)
        self.interprocess = bool(interprocess)
        self._event = None

    @property
    def cupy_event(self):
        """The underlying cupy.cuda.Event (None before the first record())."""
        return self._event

    @property
    def cuda_event(self) -> int:
        return 0 if self._event is None else self._event.ptr

    def record(self, stream: Stream = None) -> None:
        """Record the event on `stream` (the current stream by default)."""
        cp = backend.cupy
        if self._event is None:
            self._event = cp.cuda.Event(block=self.blocking, disable_timing=not self.enable_timing,
                                        interprocess=self.interprocess)
        s = cp.cuda.get_current_stream() if stream is None else _cupy_stream_of(stream)
        self._event.record(s)

    def wait(self, stream: Stream = None) -> None:
        """Make `stream` (the current stream by default) wait for this event."""
        if stream is None:
            stream = current_stream()
        if self._event is not None:
            _cupy_stream_of(stream).wait_event(self._event)

    def query(self) -> bool:
        """True when the work recorded before this event has finished (or it was never recorded)."""
        return True if self._event is None else bool(self._event.done)

    def synchronize(self) -> None:
        """Block the host until the recorded work has finished."""
        if self._event is not None:
            self._event.synchronize()

    def elapsed_time(self, end_event: "Event") -> float:
        """Milliseconds between this event and `end_event` (both recorded, both with
        enable_timing=True, and end_event completed)."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Event.elapsed_time: both events must be created with "
                               "enable_timing=True; got enable_timing="
                               f"{self.enable_timing} and {end_event.enable_timing}.")
        if self._event is None or end_event._event is None:
            raise RuntimeError("Event.elapsed_time: both events must be recorded first "
                               "(event.record()); at least one was never recorded.")
        return float(backend.cupy.cuda.get_elapsed_time(self._event, end_event._event))

    def __repr__(self):
        return (f"<tensor.cuda.Event enable_timing={self.enable_timing} "
                f"cuda_event={self.cuda_event:#x}>")


def _cupy_stream_of(stream):
    """The cupy.cuda.Stream behind a Stream (or a cupy stream itself)."""
    return stream.cupy_stream if isinstance(stream, Stream) else stream


class StreamContext:
    """``with tensor.cuda.stream(s):`` — make `s` the current stream (and its GPU the current
    device) inside the block; None does nothing, as in PyTorch."""

    def __init__(self, stream: Stream = None):
        self.stream = stream
        self._device_ctx = None

    def __enter__(self):
        s = self.stream
        if s is None:
            return None
        cp = backend.cupy
        if s._device != cp.cuda.runtime.getDevice():
            self._device_ctx = cp.cuda.Device(s._device)
            self._device_ctx.__enter__()
        s.cupy_stream.__enter__()   # CuPy keeps a per-thread stack of current streams
        return s

    def __exit__(self, *exc):
        s = self.stream
        if s is None:
            return
        s.cupy_stream.__exit__(*exc)
        if self._device_ctx is not None:
            self._device_ctx.__exit__(*exc)
            self._device_ctx = None


def stream(stream: Stream = None) -> StreamContext:
    """Context manager that makes `stream` current (torch.cuda.stream)."""
    return StreamContext(stream)


def current_stream(device=None) -> Stream:
    """The stream kernels queue on now, on `device` (the current GPU by default)."""
    cp = require("current_stream")
    idx = device_index(device, "current_stream")
    return Stream._wrap(cp.cuda.get_current_stream(idx))


def default_stream(device=None) -> Stream:
    """The (legacy) default stream, as torch.cuda.default_stream."""
    cp = require("default_stream")
    s = Stream._wrap(cp.cuda.Stream.null)
    s._device = device_index(device, "default_stream")
    return s


def set_stream(stream: Stream) -> None:
    """Make `stream` the current stream (outside any with-block), as torch.cuda.set_stream."""
    if stream is None:
        return
    require("set_stream")
    stream.cupy_stream.use()
