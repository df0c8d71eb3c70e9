"""Deferred device asserts: value checks of GPU arrays without a host sync.

Note [Device asserts]
~~~~~~~~~~~~~~~~~~~~~
An op that validates its inputs' *values* (a target class, an embedding index) must not read
them back to the host on a GPU: that read waits for the device and stalls the launch queue
every step. PyTorch asserts inside its CUDA kernels and reports at the next synchronisation;
zgrad does the same with one tiny kernel per check: ``device_assert(xp, bad, message)`` (or
``assert_in_range``) writes 1 into a slot of a per-device int32 flag buffer where ``bad`` is
true, without any host read. The slot stands for (exception type, message).
``check_device_errors()`` reads the flag buffers back (one small device->host copy per
device), clears them, and raises the first set slot's exception. Every host read of device
data calls it first: ``to_numpy`` (so .item(), .tolist(), .numpy(), bool/float/int of a
tensor, printing) and ``to_device(..., "cpu")``; ``tensor.cuda.synchronize()`` calls it too.
On numpy the check is immediate and the message exactly as before (``host_message`` may
build a more precise one, e.g. naming the bad value, which the device cannot know).

Deferring is memory-safe only because CuPy's integer-array indexing (getitem, setitem,
take_along_axis, scatter_add) wraps out-of-range indices instead of reading or writing out
of bounds (CuPy's documented difference from NumPy): a bad index computes garbage until the
next sync raises, it never faults. Flags written during a CUDA-graph capture are written
again on every replay, so captured steps keep their checks (a graph notes the devices it
flags at capture and marks them pending after each replay); the flag buffer is allocated at
the first check, which must therefore happen before capture (warm-up steps do that).
"""
from __future__ import annotations

import numpy

from . import backend

_N_SLOTS = 256                  # distinct (exception, message) pairs a process can assert
_slots: dict = {}               # (exc type, message) -> slot index
_slot_info: list = []           # slot index -> (exc type, message)
_flag_bufs: dict = {}           # device id -> cupy int32 array of _N_SLOTS flags
_pending: dict = {}             # device id -> {stream ptr: stream} written since the last check
_kernels: dict = {}


def _kernel(name):
    k = _kernels.get(name)
    if k is None:
        cupy = backend.cupy
        if name == "mask":
            k = cupy.ElementwiseKernel("T bad, int32 slot", "raw int32 flags",
                                       "if (bad) flags[slot] = 1", "zgrad_device_assert")
        elif name == "unscale":  # torch's _amp_non_finite_check_and_unscale_, one pass
            k = cupy.ElementwiseKernel(
                "T x, float64 inv", "T g, raw int32 found",
                "g = (T)((double)x * inv); if (!isfinite((double)g)) found[0] = 1",
                "zgrad_unscale_check")
        else:  # "range": low <= x < high, without a mask array in between
            k = cupy.ElementwiseKernel(
                "T x, int64 low, int64 high, int32 slot", "raw int32 flags",
                "if ((long long)x < low || (long long)x >= high) flags[slot] = 1",
                "zgrad_assert_range")
        _kernels[name] = k
    return k


def _slot(exc, message) -> int:
    key = (exc, message)
    s = _slots.get(key)
    if s is None:
        if len(_slot_info) >= _N_SLOTS - 1:  # the last slot is the shared overflow one
            return _N_SLOTS - 1
        s = _slots[key] = len(_slot_info)
        _slot_info.append(key)
    return s


def _launch(name, x, *args):
    """Run check kernel `name` over array x on x's device, setting flags in its buffer and
    noting the current stream as one that wrote to it."""
    dev = x.device.id
    if dev != backend.cupy.cuda.runtime.getDevice():
        with backend.cupy.cuda.Device(dev):
            return _launch(name, x, *args)
    buf = _flag_bufs.get(dev)
    stream = backend.cupy.cuda.get_current_stream()
    if buf is None:
        if stream.is_capturing():
            raise RuntimeError("device_assert: the first device-side check ran inside a CUDA "
                               "graph capture; run the step once before capturing it (warm-up).")
        buf = _flag_bufs[dev] = backend.cupy.zeros(_N_SLOTS, numpy.int32)
    _pending.setdefault(dev, {})[stream.ptr] = stream
    _kernel(name)(x, *args, buf)


def device_assert(xp, bad, message: str, exc=IndexError, host_message=None) -> None:
    """Raise ``exc(message)`` if any element of `bad` is true: at once on numpy, at the next
    host sync on CuPy (see Note [Device asserts]). `host_message()`, if given, builds the
    message of the immediate (numpy) error instead."""
    if xp is numpy or not isinstance(bad, backend.cupy.ndarray):
        if bool(numpy.asarray(bad).any()):
            raise exc(host_message() if host_message is not None else message)
        return
    if bad.size:
        _launch("mask", bad, _slot(exc, message))


def assert_in_range(xp, x, low: int, high: int, message: str, exc=IndexError,
                    host_message=None) -> None:
    """device_assert that every element of integer array `x` lies in [low, high)."""
    if not x.size:
        return
    if xp is numpy:
        if int(x.min()) < low or int(x.max()) >= high:
            raise exc(host_message() if host_message is not None else message)
        return
    _launch("range", x, int(low), int(high), _slot(exc, message))


def assert_index_on_device(xp, idx, n: int, message: str) -> None:
    """On CuPy, device_assert that integer indices lie in [-n, n) (numpy's bounds): CuPy's
    indexing would wrap them silently. On numpy nothing: its indexing raises by itself."""
    if xp is not numpy:
        assert_in_range(xp, idx, -n, n, message)


def unscale_and_check_(xp, g, inv_scale: float, found) -> None:
    """g *= inv_scale in place; found[0] = 1 if a result is inf or NaN. `found` is a 1-element
    int32 array on g's device: the answer stays there (GradScaler reads it once, in step)."""
    if xp is numpy:
        g *= inv_scale
        if not numpy.isfinite(g).all():
            found[0] = 1
        return
    _kernel("unscale")(g, float(inv_scale), g, found)


def host_reads_free(xp) -> bool:
    """True when reading array values on the host costs no device sync (numpy). An op with a
    data-dependent fast path (max_pool2d's NaN-free argmax) takes the always-right path on a
    GPU instead of waiting for the device to decide (Note [Device asserts])."""
    return xp is numpy


def devices_flagged_on(stream) -> tuple:
    """The devices whose flag buffers work queued on `stream` may have written since their last
    check: a CUDA graph notes them when its capture ends, for note_flagged after each replay."""
    return tuple(d for d, streams in _pending.items() if stream.ptr in streams)


def note_flagged(devices, stream) -> None:
    """Mark `devices`' flag buffers as written by work on `stream` (a replayed graph's checks),
    so that the next check_device_errors() reads them."""
    for d in devices:
        _pending.setdefault(d, {})[stream.ptr] = stream


def check_device_errors() -> None:
    """Raise the first pending device assert (one device->host read per device with checks
    since the last call); a no-op when none ran or without CuPy."""
    if not _pending:
        return
    first = None
    for dev in list(_pending):
        with backend.cupy.cuda.Device(dev):
            cur = backend.cupy.cuda.get_current_stream()
            if cur.is_capturing():  # no host reads during capture: check after it
                continue
            streams = _pending.pop(dev, None)
            if streams is None:  # another thread checked it meanwhile
                continue
            for ptr, s in streams.items():  # checks queued on other streams come first
                if ptr != cur.ptr:
                    cur.wait_event(s.record())
            buf = _flag_bufs[dev]
            flags = buf.get()
            if flags.any():
                buf.fill(0)
                hit = int(numpy.flatnonzero(flags)[0])
                first = hit if first is None else min(first, hit)
    if first is not None:
        exc, message = _slot_info[first] if first < len(_slot_info) else (
            RuntimeError, f"a device-side check failed (one of more than {_N_SLOTS - 1} "
                          "distinct checks; their messages are not kept)")
        raise exc(message + " (detected on the GPU at this sync; the op that failed ran "
                            "earlier)")
