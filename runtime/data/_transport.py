"""Moving a collated batch from a loader worker to the main process through shared memory.

A worker owns a ring of ``shm.Segment`` blocks. To send a batch it (1) walks the collated
structure once to size it, (2) takes a free block large enough (or creates one), (3) writes each
array leaf into the block (default_collate's leaves are stacked straight into it), and
(4) pickles the structure with every array replaced by a handle ``(segment, offset, shape,
dtype)``. Only those bytes cross the result pipe. The main process maps each block once, wraps
the handles as Tensors without copying, and gives the block back to its worker when the last
array of that batch is garbage collected. See Note [Loader protocol] in _multiprocess_iter.py.
"""
from __future__ import annotations

import io
import os
import pickle
import weakref
from collections import deque

import numpy as np

_ALIGN = 64                 # bytes; every leaf starts on a cache line
_MIN_BLOCK_BYTES = 1 << 16  # small batches still share one reasonably sized block
_GROWTH = 1.25              # headroom for batches that vary a little in size


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


class Pending:
    """A batch leaf not yet written: the samples to stack, and the shape/dtype of the result."""

    __slots__ = ("items", "shape", "dtype", "requires_grad", "nbytes", "offset")

    def __init__(self, items, shape, dtype, requires_grad=False):
        self.items, self.shape, self.dtype = items, shape, np.dtype(dtype)
        self.requires_grad = requires_grad
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtype.itemsize
        self.offset = -1


def pending_leaf(items, shape, dtype, requires_grad):
    """Leaf builder for workers: numpy samples are deferred to be stacked into the block."""
    elem = items[0]
    if isinstance(elem, (np.ndarray, np.generic, int, float, bool)):
        return Pending(items, shape, dtype, requires_grad)
    from .collate import _stack_now   # another array module (CuPy): stacked where it is
    return _stack_now(items, shape, dtype, requires_grad)


def _leaf(name, offset, shape, dtype, kind, requires_grad):
    """Placeholder global for a handle; the main process's unpickler resolves it."""
    raise RuntimeError("a loader batch handle was unpickled outside a DataLoader")


class _Placer(pickle.Pickler):
    """Pickles a batch, replacing numpy arrays and CPU Tensors by handles into a block.

    With ``block is None`` it only measures (``self.nbytes``); otherwise it writes each array
    at its offset and emits the handle.
    """

    def __init__(self, file, tensor_type, block=None, name=""):
        super().__init__(file, protocol=5)
        self.tensor_type, self.block, self.name = tensor_type, block, name
        self.nbytes = 0

    def _place(self, nbytes):
        off = self.nbytes
        self.nbytes = _align(off + nbytes)
        return off

    def reducer_override(self, obj):
        kind, rg = "n", False
        if type(obj) is Pending:
            off = self._place(obj.nbytes)
            if self.block is not None:
                from .collate import _fill
                view = self.block[off:off + obj.nbytes].view(obj.dtype).reshape(obj.shape)
                _fill(view, obj.items)
            return _leaf, (self.name, off, obj.shape, obj.dtype.str, "t", obj.requires_grad)
        if isinstance(obj, self.tensor_type):
            arr, kind, rg = obj.array, "t", obj.requires_grad
            if not isinstance(arr, np.ndarray):
                return NotImplemented
        elif isinstance(obj, np.ndarray):
            arr = obj
        else:
            return NotImplemented
        if arr.dtype.hasobject or (kind == "n" and type(arr) is not np.ndarray):
            return NotImplemented   # object arrays and ndarray subclasses pickle as usual
        off = self._place(arr.nbytes)
        if self.block is not None:
            view = self.block[off:off + arr.nbytes].view(arr.dtype).reshape(arr.shape)
            np.copyto(view, arr)
        return _leaf, (self.name, off, arr.shape, arr.dtype.str, kind, rg)


class WorkerRing:
    """A worker's shared blocks: each holds one batch until the main process frees it."""

    def __init__(self, tag: str):
        import shm
        self._shm = shm
        self.tag = tag
        self.free: list = []          # (segment, uint8 view)
        self.busy: dict = {}          # name -> (segment, uint8 view)

    def _acquire(self, nbytes):
        best = None
        for i, (seg, block) in enumerate(self.free):
            if seg.size >= nbytes and (best is None or seg.size < self.free[best][0].size):
                best = i
        if best is None:
            if len(self.free) >= 2:   # batches grew: retire the smallest idle block
                self.free.sort(key=lambda sb: sb[0].size)
                self.free.pop(0)[0].close()
            size = max(_MIN_BLOCK_BYTES, _align(int(nbytes * _GROWTH)))
            seg = self._shm.Segment.create(size, tag=self.tag)
            entry = (seg, seg.ndarray((seg.size,), np.uint8))
        else:
            entry = self.free.pop(best)
        self.busy[entry[0].name] = entry
        return entry

    def release(self, name: str) -> None:
        entry = self.busy.pop(name, None)
        if entry is not None:
            self.free.append(entry)

    def encode(self, obj, tensor_type) -> bytes:
        """Pickle `obj`, with its arrays written into a block of this ring."""
        sizer = _Placer(_NullWriter(), tensor_type)
        sizer.dump(obj)
        if sizer.nbytes == 0:
            buf = io.BytesIO()
            pickle.Pickler(buf, protocol=5).dump(obj)
            return buf.getvalue()
        seg, block = self._acquire(sizer.nbytes)
        buf = io.BytesIO()
        try:
            _Placer(buf, tensor_type, block, seg.name).dump(obj)
        except BaseException:
            self.release(seg.name)
            raise
        return buf.getvalue()

    def close(self) -> None:
        for seg, _ in self.free + list(self.busy.values()):
            seg.close()
        self.free, self.busy = [], {}


class _NullWriter:
    def write(self, b):
        return len(b)


class MainReceiver:
    """Main-process side: maps blocks once and turns handles into Tensors/arrays.

    A batch's arrays are views of one per-batch base array; when the base is collected the
    block's name goes into `freed` and the loader returns it to the worker with its next
    request (never from inside the finalizer, which may run at any point in the main thread).
    """

    def __init__(self):
        import shm
        import tensor
        self._shm, self._from_numpy = shm, tensor.from_numpy
        self.segments: dict = {}      # name -> (segment, worker_id)
        self.freed: deque = deque()   # (worker_id, name), appended by finalizers
        self.n_attached = 0           # blocks mapped so far (how well the rings are reused)

    def decode(self, data: bytes, worker_id: int):
        """Unpickle a worker's message; handles become arrays/Tensors over mapped blocks."""
        u = _BatchUnpickler(io.BytesIO(data))
        u.ctx = ctx = _Decode(self, worker_id)
        try:
            return u.load()
        finally:
            ctx.bases = None   # only the batch's arrays may keep its base (and block) alive

    def _batch_base(self, name, worker_id):
        entry = self.segments.get(name)
        if entry is None:
            seg = self._shm.Segment.attach(name)
            # Both processes have it mapped now: the name is no longer needed, and unlinking
            # here means nothing is left in /dev/shm whatever happens later (see the Note).
            _unlink_quietly(seg)
            entry = self.segments[name] = (seg, worker_id)
            self.n_attached += 1
        base = entry[0].ndarray((entry[0].size,), np.uint8)
        f = weakref.finalize(base, self.freed.append, (worker_id, name))
        f.atexit = False
        return base

    def forget_worker(self, worker_id: int) -> None:
        """Drop the mappings of a worker's blocks (live batches keep theirs alive)."""
        for name in [n for n, (_, w) in self.segments.items() if w == worker_id]:
            del self.segments[name]


class _Decode:
    """Per-message state of the main process's unpickler (no reference back to it: no cycle)."""

    __slots__ = ("receiver", "worker_id", "bases")

    def __init__(self, receiver, worker_id):
        self.receiver, self.worker_id, self.bases = receiver, worker_id, {}

    def rebuild(self, name, offset, shape, dtype, kind, requires_grad):
        base = self.bases.get(name)
        if base is None:
            base = self.bases[name] = self.receiver._batch_base(name, self.worker_id)
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arr = base[offset:offset + n].view(dtype).reshape(shape)
        if kind == "n":
            return arr
        t = self.receiver._from_numpy(arr)
        return t.requires_grad_() if requires_grad else t


class _BatchUnpickler(pickle.Unpickler):
    ctx = None

    def find_class(self, module, name):
        if name == "_leaf" and module == __name__:
            return self.ctx.rebuild
        return super().find_class(module, name)


def _unlink_quietly(seg) -> None:
    try:
        seg.unlink()
    except FileNotFoundError:
        pass


def unlink_leftovers(tag: str) -> list[str]:
    """Unlink segments whose name contains `tag` (blocks a dead worker created but never
    sent). Returns the names removed."""
    removed = []
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return removed
    for n in names:
        if tag in n:
            try:
                os.unlink(os.path.join("/dev/shm", n))
                removed.append(n)
            except FileNotFoundError:
                pass
    return removed
