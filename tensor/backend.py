"""Device dispatch: the one place that knows numpy from CuPy.

Op code writes ``xp = get_array_module(x)`` and then ``xp.exp(x)``; device moves and
the "mixed devices" error live here too, so no other module has an ``if cupy`` branch.
"""
from __future__ import annotations

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
    return cupy


def device_of(x) -> device:
    """The device an array lives on."""
    if cupy is not None and isinstance(x, cupy.ndarray):
        return device("cuda", x.device.id)
    return CPU


def is_array(x) -> bool:
    """True for a numpy or cupy ndarray."""
    return isinstance(x, numpy.ndarray) or (cupy is not None and isinstance(x, cupy.ndarray))


def to_device(x, dev: device):
    """Move an array to `dev` (a no-op when it is already there)."""
    dev = device(dev)
    src = device_of(x)
    if src == dev:
        return x
    if dev.type == "cpu":
        return cupy.asnumpy(x)
    xp = xp_for(dev)
    if dev.index is not None:
        with cupy.cuda.Device(dev.index):
            return xp.asarray(x)
    return xp.asarray(x)


def to_numpy(x) -> numpy.ndarray:
    """The array as a numpy array (a copy only when it lives on a GPU)."""
    if isinstance(x, numpy.ndarray):
        return x
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    return numpy.asarray(x)


def check_same_device(op: str, *arrays):
    """Raise a clear error when arrays of one op live on different devices."""
    devs = {str(device_of(a)) for a in arrays if is_array(a)}
    if len(devs) > 1:
        raise RuntimeError(f"{op}: expected all tensors on the same device, got {sorted(devs)}. "
                           "Move them with .to(device) first.")


def scatter_add(xp, out, idx, src):
    """out[idx] += src with repeated indices accumulating (numpy's and CuPy's add.at)."""
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
