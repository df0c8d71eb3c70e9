"""numpy arrays in shared memory: allocation (small ones packed into arenas), share, is_shared.

An array is shared when its memory belongs to a segment this process maps; its *handle* is
(segment name, byte offset, shape, dtype, strides), which is all another process needs to see
the same bytes. Small arrays (< 64 KiB) are bump-allocated from 1 MiB arena segments: one
segment, one mapping and one manager message per arena instead of per array. An arena lives while
any array in it is alive in any process (see Note [Shm lifetime] in segment.py); the allocator
holds the current arena only weakly, so an arena whose arrays are all gone is unmapped at once.
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as np

from . import segment as _seg

ARENA_BYTES = 1 << 20
SMALL_BYTES = 64 << 10
_ALIGN = 64

_arena_lock = threading.Lock()
_arena = {"ref": None, "used": 0}


def _reset_after_fork() -> None:
    """A forked child must not bump-allocate into its parent's arena (they would overlap)."""
    global _arena_lock
    _arena_lock = threading.Lock()
    _arena.update(ref=None, used=0)


def _alloc(nbytes: int) -> tuple[_seg._ShmMap, int]:
    """(mapping, offset) of `nbytes` fresh, zero-filled, 64-byte aligned shared bytes."""
    if nbytes > SMALL_BYTES:
        return _seg.create_map(nbytes), 0
    nbytes = max(nbytes, 1)
    with _arena_lock:
        m = _arena["ref"]() if _arena["ref"] is not None else None
        off = -(-_arena["used"] // _ALIGN) * _ALIGN
        if m is None or off + nbytes > ARENA_BYTES:
            m = _seg.create_map(ARENA_BYTES, tag="arena")
            _arena["ref"], off = weakref.ref(m), 0
        _arena["used"] = off + nbytes
        return m, off


def _normalize_shape(shape, who: str) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"{who}: expected a shape (int or tuple of ints), got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{who}: negative dimension in shape {shape}")
    return shape


def empty(shape, dtype=np.float32) -> np.ndarray:
    """A C-contiguous numpy array of `shape` and `dtype` whose memory is in shared memory.

    Its bytes are zero (tmpfs pages are); ``empty`` still promises nothing, as numpy's.
    Raises OutOfSharedMemoryError when /dev/shm cannot hold it.
    """
    shape = _normalize_shape(shape, "shm.empty")
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError(f"shm.empty: dtype {dtype} holds Python objects, which cannot live in "
                        "shared memory; use a numeric dtype")
    nbytes = math.prod(shape) * dtype.itemsize
    m, off = _alloc(nbytes)
    return np.ndarray(shape, dtype, buffer=m, offset=off)


def zeros(shape, dtype=np.float32) -> np.ndarray:
    """Like `empty`, filled with zeros."""
    a = empty(shape, dtype)
    a.fill(0)
    return a


def _find_map(a) -> _seg._ShmMap | None:
    b = a
    while b is not None:
        if isinstance(b, _seg._ShmMap):
            return b
        b = b.obj if isinstance(b, memoryview) else getattr(b, "base", None)
    return None


def _cuda_ipc():
    from . import cuda_ipc

    return cuda_ipc


def is_shared(a) -> bool:
    """True if `a` (numpy or CuPy array) can go to another process by handle."""
    if isinstance(a, np.ndarray):
        return _find_map(a) is not None
    ipc = _cuda_ipc()
    if ipc.is_cupy_array(a):
        return ipc.is_shared(a)
    raise TypeError(f"shm.is_shared: expected a numpy or CuPy array, got {type(a).__name__}")


def share(a):
    """`a` if it is already shared, else a shared copy of it (C-contiguous, same dtype/shape).

    CuPy arrays are shared through CUDA IPC and are returned as they are (see cuda_ipc.py).
    """
    if isinstance(a, np.ndarray):
        if _find_map(a) is not None:
            return a
        out = empty(a.shape, a.dtype)
        np.copyto(out, a)
        if not a.flags.writeable:
            out.flags.writeable = False
        return out
    ipc = _cuda_ipc()
    if ipc.is_cupy_array(a):
        return ipc.share(a)
    raise TypeError(f"shm.share: expected a numpy or CuPy array, got {type(a).__name__}; "
                    "convert with numpy.asarray first")


def handle(a: np.ndarray) -> tuple:
    """(name, offset, shape, dtype, strides) of a shared numpy array; ValueError if not shared."""
    m = _find_map(a)
    if m is None:
        raise ValueError("shm.handle: the array is not in shared memory; use shm.share(a) first")
    offset = a.__array_interface__["data"][0] - m.addr
    return m.name, offset, a.shape, a.dtype, a.strides


def from_handle(name, offset, shape, dtype, strides, claim=None, writeable=True) -> np.ndarray:
    """The array a handle describes, as a view of this process's mapping of the segment."""
    m = _seg.attach_map(name, claim)
    a = np.ndarray(shape, dtype, buffer=m, offset=offset, strides=strides)
    if not writeable:
        a.flags.writeable = False
    return a
