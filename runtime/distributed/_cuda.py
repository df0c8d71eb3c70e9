"""CUDA streams, events and pinned host staging for the distributed package.

Note [CUDA work]
~~~~~~~~~~~~~~~~
As PyTorch's NCCL process group: a collective on CuPy arrays is queued on the communicator's
own stream, after the caller's *current* stream (the comm stream waits on an event recorded
there, so it sees what produced the inputs); ``Work.wait()`` then makes the caller's current
stream wait on the comm stream's completion event and returns at once: the host never blocks,
and kernels queued afterwards on the current stream see the result. ``is_completed()``
queries the event; ``synchronize()`` (and ``get_future().wait()``) block the host until the
event fired. A synchronous call is the async one followed by ``wait()``. The Work keeps the
call's arrays alive until it is waited on or seen complete, so memory the caller drops is
not reused (by CuPy's pool, on the caller's stream) while the comm stream still reads it.

Note [GPU staging]
~~~~~~~~~~~~~~~~~~
The zmq backend moves host bytes; a CuPy array bound for it is staged through *pinned* host
memory, reused across calls (one free list per power-of-two size; a buffer is handed out
again only once the copy that last used it has finished, as its event says):
  1. at launch, in the caller's thread: an event on the current stream (what produced x);
  2. on the communication thread: a side stream waits on it and copies device to host
     asynchronously; the thread waits for that copy's event (the caller's thread does not);
  3. the route runs on the host buffer; results are copied back host to device on the side
     stream, and the Work carries that copy's event: ``wait()`` waits for the host part,
     then makes the caller's current stream wait on the event (no device-wide sync).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from tensor import backend

_side: dict = {}          # device id -> side stream for staging copies
_side_lock = threading.Lock()


def is_cuda(a) -> bool:
    return not isinstance(a, np.ndarray) and backend.device_of(a).type == "cuda"


def event_done(ev) -> bool:
    """Whether a cupy.cuda.Event has fired (``done`` is a property in CuPy; a method in
    some forks)."""
    d = ev.done
    return bool(d() if callable(d) else d)


def record(stream=None):
    """A fresh timing-free event recorded on `stream` (default: the current stream)."""
    cupy = backend.cupy
    ev = cupy.cuda.Event(disable_timing=True)
    ev.record(cupy.cuda.get_current_stream() if stream is None else stream)
    return ev


def wait_event_host(ev, timeout_s: float | None, what: str, check=None):
    """Block the host until `ev` fired; TimeoutError naming `what` after timeout_s.

    check() (an NCCL communicator's async-error check) runs while waiting, so a collective
    that failed on the device raises instead of timing out."""
    if timeout_s is None:
        ev.synchronize()
        return
    end, nap = time.monotonic() + timeout_s, 1e-5
    while not event_done(ev):
        if check is not None:
            check()
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: the GPU did not finish within {timeout_s:.0f}s. A peer "
                               "may have died or called a different collective (see its log).")
        time.sleep(nap)
        nap = min(nap * 2, 2e-3)
    ev.synchronize()   # fired: returns at once, and raises a sticky CUDA error if there is one


def side_stream(device_id: int):
    """This process's staging stream on device `device_id` (made once)."""
    s = _side.get(device_id)
    if s is None:
        with _side_lock:
            s = _side.get(device_id)
            if s is None:
                with backend.cupy.cuda.Device(device_id):
                    s = _side[device_id] = backend.cupy.cuda.Stream(non_blocking=True)
    return s


class _PinnedPool:
    """Pinned host buffers by power-of-two size, reused once their last copy has finished."""

    MAX_PER_SIZE = 8

    def __init__(self):
        self._free: dict = {}     # size class -> [(PinnedMemoryPointer, event or None)]
        self._lock = threading.Lock()

    def take(self, nbytes: int):
        """(pinned memory, its size class) holding at least nbytes."""
        size = 1 << max(12, (max(nbytes, 1) - 1).bit_length())
        with self._lock:
            free = self._free.get(size, [])
            for k, (mem, ev) in enumerate(free):
                if ev is None or event_done(ev):
                    del free[k]
                    return mem, size
        return backend.cupy.cuda.alloc_pinned_memory(size), size

    def give(self, mem, size: int, event=None):
        """Return `mem` (of size class `size`); reused once `event` (the copy reading it) has
        fired.

        With MAX_PER_SIZE buffers of the class already kept, one whose copy has finished is
        let go instead; a buffer a copy may still read is never dropped: CuPy's pinned pool
        hands freed memory out again at once, to the next staging or a loader's pin, while
        the DMA would still be reading it."""
        with self._lock:
            free = self._free.setdefault(size, [])
            if len(free) >= self.MAX_PER_SIZE:
                for k, (_, ev) in enumerate(free):
                    if ev is None or event_done(ev):
                        del free[k]
                        break
                else:
                    if event is None or event_done(event):
                        return
            free.append((mem, event))


pinned = _PinnedPool()


class GpuStaging:
    """One call's staging of CuPy arrays (Note [GPU staging]); made at launch, in the caller's
    thread, when any array of the call is on a GPU."""

    def __init__(self, arrays):
        self.device_id = next(a.device.id for a in arrays if is_cuda(a))
        with backend.cupy.cuda.Device(self.device_id):
            self.ready = record()
        self.work = None          # the call's Work, set when the call starts to run
        self.inputs: list = []    # staged inputs whose pinned buffers go back at the end

    def stage(self, a, read: bool = True) -> "GpuStaged":
        s = GpuStaged(self, a, read)
        self.inputs.append(s)
        return s

    def finish(self):
        """The call's host part is over: input buffers may be reused at once (their copies to
        the host were waited for)."""
        for s in self.inputs:
            s.release()
        self.inputs = []


class GpuStaged:
    """A CuPy array's flat host copy in pinned memory (the ``Staged`` of a GPU array)."""

    def __init__(self, ctx: GpuStaging, a, read: bool):
        cupy = backend.cupy
        self.ctx, self.a = ctx, a
        nbytes = a.size * a.dtype.itemsize
        # with the array's GPU current: this runs on the communication thread, whose current
        # device is GPU 0, and cudaHostAlloc there would give every rank of a multi-GPU host
        # a CUDA context (hundreds of MiB) on GPU 0
        with cupy.cuda.Device(ctx.device_id):
            self.mem, self.size = pinned.take(nbytes)
        self.flat = np.frombuffer(self.mem, np.uint8, nbytes).view(a.dtype)
        self.copied = True
        if not read or nbytes == 0:
            return
        with cupy.cuda.Device(ctx.device_id):
            side = side_stream(ctx.device_id)
            side.wait_event(ctx.ready)
            src = a
            if not a.flags.c_contiguous:
                with side:
                    src = cupy.ascontiguousarray(a)
            cupy.cuda.runtime.memcpyAsync(self.flat.ctypes.data, src.data.ptr, nbytes,
                                          cupy.cuda.runtime.memcpyDeviceToHost, side.ptr)
            record(side).synchronize()   # on the comm thread; the caller is not blocked

    def write_back(self):
        """Copy the host result into the array on the side stream; the Work waits for it."""
        cupy = backend.cupy
        a, nbytes = self.a, self.flat.nbytes
        with cupy.cuda.Device(self.ctx.device_id):
            side = side_stream(self.ctx.device_id)
            side.wait_event(self.ctx.ready)   # after the producer, even for outputs not read
            if nbytes:
                dst = a if a.flags.c_contiguous else None
                if dst is None:
                    with side:
                        dst = cupy.empty(a.shape, a.dtype)
                cupy.cuda.runtime.memcpyAsync(dst.data.ptr, self.flat.ctypes.data, nbytes,
                                              cupy.cuda.runtime.memcpyHostToDevice, side.ptr)
                if dst is not a:
                    with side:
                        a[...] = dst
            ev = record(side)
        if self.ctx.work is not None:   # one side stream: the last event covers every copy
            self.ctx.work._after = (ev, self.ctx.device_id)
        if self in self.ctx.inputs:
            self.ctx.inputs.remove(self)
        pinned.give(self.mem, self.size, ev)
        self.mem = None

    def release(self):
        if self.mem is not None:
            pinned.give(self.mem, self.size)
            self.mem = None


def stream_wait(ev, device_id: int) -> None:
    """Make the caller's current stream on device `device_id` wait for `ev`."""
    cupy = backend.cupy
    with cupy.cuda.Device(device_id):
        cupy.cuda.get_current_stream().wait_event(ev)
