"""Device dispatch: the one place that knows numpy from CuPy.

Op code writes ``xp = get_array_module(x)`` and then ``xp.exp(x)``; device moves and
the "mixed devices" error live here too, so no other module has an ``if cupy`` branch.
"""
from __future__ import annotations

import threading

import numpy

try:  # CPU-only installs have no cupy; everything on the CPU still works.
    import cupy  # type: ignore
except Exception:  # ImportError, or a CUDA runtime that fails to load
    cupy = None


class device:
    """A device, as ``torch.device``: ``device("cpu")``, ``device("cuda")``, ``device("cuda:1")``."""

    __slots__ = ("type", "index")

    def __init__(self, spec="cpu", index=None):
        if isinstance(spec, device):
            self.type, self.index = spec.type, spec.index
            return
        if isinstance(spec, int):
            spec, index = "cuda", spec
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a str like 'cpu' or 'cuda:0', got {type(spec).__name__}")
        kind, _, idx = spec.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda[:N]', got {spec!r}")
        if idx:
            if index is not None:
                raise ValueError(f"device: index given twice in {spec!r} and index={index}")
            index = int(idx)
        self.type = kind
        self.index = None if kind == "cpu" else index

    def __eq__(self, other):
        if isinstance(other, str):
            other = device(other)
        if not isinstance(other, device):
            return NotImplemented
        if self.type != other.type:
            return False
        # 'cuda' (current device) compares equal to an explicit index
        return self.index is None or other.index is None or self.index == other.index

    def __hash__(self):
        return hash(self.type)

    def __repr__(self):
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"


CPU = device("cpu")
_default_device = [CPU]


def get_default_device() -> device:
    """The device factory functions use when none is given (cpu unless set)."""
    return _default_device[0]


def set_default_device(dev) -> None:
    """Make factory functions (tensor, zeros, randn, ...) create on `dev`, as
    torch.set_default_device; None restores the CPU."""
    dev = CPU if dev is None else device(dev)
    if dev.type == "cuda":
        xp_for(dev)  # the clear "CuPy is not installed" error now, not at the first tensor
    _default_device[0] = dev


def cuda_is_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays):
    """Return numpy or cupy, whichever holds `arrays`."""
    if cupy is None:
        return numpy
    return cupy.get_array_module(*arrays)


def xp_for(dev: device):
    """The array module for a device: numpy for cpu, cupy for cuda."""
    if dev.type == "cpu":
        return numpy
    if cupy is None:
        raise RuntimeError("device 'cuda' requested but CuPy is not installed. "
                           "Install it with: pip install 'zgrad[gpu]' (needs an NVIDIA GPU).")
    if not _gpu_seen[0]:   # asked once: after a GPU was seen, this is the hot path of every move
        if not cuda_is_available():
            raise RuntimeError("device 'cuda' requested but CuPy (installed) sees no CUDA GPU. "
                               "Check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, "
                               "or use device='cpu'.")
        _gpu_seen[0] = True
    return cupy


_gpu_seen = [False]


def device_of(x) -> device:
    """The device an array lives on."""
    if cupy is not None and isinstance(x, cupy.ndarray):
        return device("cuda", x.device.id)
    return CPU


def is_array(x) -> bool:
    """True for a numpy or cupy ndarray."""
    return isinstance(x, numpy.ndarray) or (cupy is not None and isinstance(x, cupy.ndarray))


def to_device(x, dev: device, non_blocking: bool = False):
    """Move an array to `dev` (a no-op when it is already there).

    With ``non_blocking``, a copy from pinned host memory to a GPU is queued on the current
    stream and returns at once; other copies are ordinary ones (see Note [Async copies]).
    """
    dev = device(dev)
    src = device_of(x)
    if src == dev:
        return x
    if dev.type == "cpu":
        if non_blocking:
            with x.device:
                return to_host_async(x)
        return to_numpy(x)  # a host sync: pending device asserts are raised first
    xp_for(dev)  # the clear "CuPy is not installed" error
    if not isinstance(x, numpy.ndarray):  # another GPU: CuPy's peer copy
        with cupy.cuda.Device(dev.index if dev.index is not None else x.device.id):
            return cupy.asarray(x)
    if dev.index is not None:
        with cupy.cuda.Device(dev.index):
            return _to_gpu(x, non_blocking)
    return _to_gpu(x, non_blocking)


def to_numpy(x) -> numpy.ndarray:
    """The array as a numpy array (a copy only when it lives on a GPU).

    A GPU array's copy waits for the device, so this is where pending device asserts are
    raised (Note [Device asserts] in tensor/_device_checks.py); every host read of a tensor
    goes through here.
    """
    if cupy is not None and isinstance(x, cupy.ndarray):
        check_device_errors()
        return cupy.asnumpy(x)
    if isinstance(x, numpy.ndarray):
        return x
    return numpy.asarray(x)


def check_same_device(op: str, *arrays):
    """Raise a clear error when arrays of one op live on different devices."""
    devs = {str(device_of(a)) for a in arrays if is_array(a)}
    if len(devs) > 1:
        raise RuntimeError(f"{op}: expected all tensors on the same device, got {sorted(devs)}. "
                           "Move them with .to(device) first.")


def scatter_add(xp, out, idx, src):
    """out[idx] += src with repeated indices accumulating (numpy's and CuPy's add.at).

    On the GPU, integer and bool arrays that CuPy's scatter kernels refuse (only 32-bit ints
    and uint64 are there) add as uint64: two's-complement sums wrap alike, and the cast back
    wraps (or tests != 0) as numpy's add.at on the narrow type does."""
    k = out.dtype.kind
    if xp is not numpy and (k == "b" or (k in "iu" and out.dtype.itemsize != 4
                                         and out.dtype != numpy.uint64)):
        w = out.astype(numpy.int64).view(numpy.uint64)
        xp.add.at(w, idx, xp.asarray(src).astype(numpy.int64).view(numpy.uint64))
        out[...] = w.view(numpy.int64)
        return out
    xp.add.at(out, idx, src)
    return out


def erf(xp, x):
    """The error function of an array (scipy.special / cupyx.scipy.special)."""
    if xp is numpy:
        try:
            from scipy.special import erf as _erf
        except ImportError:  # exact but slow fallback
            import math
            return numpy.vectorize(math.erf, otypes=[x.dtype])(x)
        return _erf(x).astype(x.dtype, copy=False)
    import cupyx.scipy.special  # type: ignore
    return cupyx.scipy.special.erf(x)


def argsort_stable(xp, x, axis=-1):
    """A stable argsort (CuPy's argsort is always stable and takes no kind= but None)."""
    if xp is numpy:
        return numpy.argsort(x, axis=axis, kind="stable")
    return xp.argsort(x, axis=axis)


def _data_ptr(x) -> int:
    return x.data.ptr if cupy is not None and isinstance(x, cupy.ndarray) \
        else x.__array_interface__["data"][0]


def view_positions(base, view):
    """Flat (C-order) positions in `base` of each element of `view`, a view of base's memory.

    Works from the data pointers and strides, so any chain of views (slices, transposes,
    reshapes) maps back to its base; used to rewrite a base's history after an in-place op
    on a view (see Note [In-place ops] in tensor/ops/index.py).
    """
    xp = get_array_module(base)
    if view.size == 0:
        return xp.zeros(view.shape, numpy.int64)
    isz = base.itemsize

    def offsets(a, start):  # element offset of every element of a, relative to base's pointer
        off = xp.full(a.shape, start, numpy.int64)
        for k, (n, s) in enumerate(zip(a.shape, a.strides)):
            step = xp.arange(n, dtype=numpy.int64) * (s // isz)
            off = off + step.reshape((1,) * k + (n,) + (1,) * (a.ndim - k - 1))
        return off

    boff = offsets(base, 0).reshape(-1)
    voff = offsets(view, (_data_ptr(view) - _data_ptr(base)) // isz)
    order = argsort_stable(xp, boff)
    srt = boff[order]
    k = xp.clip(xp.searchsorted(srt, voff), 0, max(srt.size - 1, 0))
    if srt.size == 0 or not bool((srt[k] == voff).all()):
        raise RuntimeError("in-place op on a view: the view's elements are not all inside its "
                           "base's memory; call .clone() on the view first.")
    return order[k]


# -- pinned host memory and asynchronous copies ------------------------------------------------
# Note [Async copies]
# ~~~~~~~~~~~~~~~~~~~
# A host->GPU copy from page-locked (pinned) memory is a DMA the GPU runs on its own: queued
# on the current stream with ``ndarray.set(x, stream=...)`` (cudaMemcpyAsync), it returns at
# once and later kernels on that stream see the data. From ordinary (pageable) memory the
# driver stages it and the call returns only once the host buffer was read, so
# ``non_blocking=True`` quietly degrades to an ordinary copy there, as in PyTorch. While an
# async copy is in flight its source must stay alive and unchanged: `_in_flight` holds the
# host array until an event recorded after the copy reports done (pruned at each new copy).
# A GPU->host copy with ``non_blocking=True`` lands in freshly pinned memory and returns
# before the data is there; as in PyTorch the caller synchronises (the stream, or
# tensor.cuda.synchronize()) before reading it.

_in_flight: list = []   # (event, host array) of copies that may still read the array
_in_flight_lock = threading.Lock()


def _require_cuda(what: str):
    if not cuda_is_available():
        raise RuntimeError(f"{what}: cannot access an accelerator device when none is "
                           f"available (expected CuPy and a CUDA GPU, got "
                           f"{'no CuPy' if cupy is None else 'no GPU'}). Pinned memory only "
                           "speeds up copies to a GPU; drop the call on CPU-only machines.")


def is_pinned(x) -> bool:
    """True when numpy array `x` lives in page-locked host memory (False without CUDA)."""
    if not isinstance(x, numpy.ndarray) or x.size == 0 or not cuda_is_available():
        return False
    try:
        return bool(cupy.cuda.pinned_memory.is_memory_pinned(_data_ptr(x)))
    except Exception:  # a pointer the driver does not know: ordinary memory
        return False


def pinned_empty(shape, dtype) -> numpy.ndarray:
    """An uninitialised numpy array in page-locked host memory (CuPy's pinned memory pool);
    the array keeps that memory alive."""
    dtype = numpy.dtype(dtype)
    n = int(numpy.prod(shape, dtype=numpy.int64))
    mem = cupy.cuda.alloc_pinned_memory(max(n * dtype.itemsize, 1))
    return numpy.frombuffer(mem, dtype, n).reshape(shape)


def pin_array(x: numpy.ndarray) -> numpy.ndarray:
    """A copy of numpy array `x` in page-locked host memory."""
    _require_cuda("pin_memory")
    out = pinned_empty(x.shape, x.dtype)
    numpy.copyto(out, x)
    return out


def _keep_until_done(stream, obj):
    event = stream.record()
    with _in_flight_lock:  # copies may be queued from several threads
        while _in_flight and _in_flight[0][0].done:
            _in_flight.pop(0)
        _in_flight.append((event, obj))


def _to_gpu(x, non_blocking: bool):
    """x on the current GPU; an async copy on the current stream when non_blocking and x is
    pinned (Note [Async copies])."""
    if non_blocking and isinstance(x, numpy.ndarray) and x.flags.c_contiguous and is_pinned(x):
        y = cupy.empty(x.shape, x.dtype)
        stream = cupy.cuda.get_current_stream()
        y.set(x, stream=stream)
        _keep_until_done(stream, x)
        return y
    return cupy.asarray(x)


def to_host_async(x):
    """GPU array `x` copied into new pinned host memory on the current stream, without waiting
    (Note [Async copies]); the caller synchronises before reading the result."""
    out = pinned_empty(x.shape, x.dtype)
    if x.size:
        cupy.ascontiguousarray(x).get(stream=cupy.cuda.get_current_stream(), out=out,
                                      blocking=False)
    return out


# deferred device asserts (Note [Device asserts]) live in their own module; they are part of
# this module's API: backend.device_assert(xp, bad, message), backend.check_device_errors(), ...
from ._device_checks import (assert_in_range, assert_index_on_device,  # noqa: E402,F401
                             check_device_errors, device_assert, host_reads_free,
                             unscale_and_check_)
