"""pin_memory for loader batches: page-locked host copies, and asynchronous copies to a GPU.

Page-locked (pinned) memory lets a host-to-GPU copy run asynchronously at full PCIe speed. It
only exists with a CUDA device; zgrad reaches it through ``tensor.backend`` (the one place that
knows CuPy).

Note [Loader device copies]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
With ``pin_memory=True`` and ``pin_memory_device="cuda[:N]"`` the loader hands out batches
already on that GPU (PyTorch's loader only pins there; zgrad also copies, which is what the
training loop's ``.to(device, non_blocking=True)`` would do next, and then is a no-op). The
copy of a batch is *staged* as soon as the batch is in the loader's hands: pinned, then
queued with ``non_blocking`` on a side stream of that GPU, so it overlaps the kernels of the
current step (with workers, a batch that arrives early is staged before it is served). The
consumer's stream waits on the copy's event only when the batch is served (``Staged.get``),
so a step never waits for a later batch's copy.

Memory: the side stream first waits on an event recorded on the consumer's stream. CuPy's
pool hands a block freed by the side stream back to it at once; the wait orders the copy
after every kernel the consumer queued before, among them the last users of any block the
program has freed (the consumer's loop has dropped an older batch by the time it asks for a
new one). Pinned sources live until their copy's event completes (Note [Async copies] in
tensor/backend.py).
"""
from __future__ import annotations

import collections.abc as cabc
import warnings

import numpy as np

_warned = False
_side_streams: dict = {}   # GPU index -> the loader's copy stream there


def _walk(obj, arr_fn, tensor_fn):
    import tensor
    if isinstance(obj, tensor.Tensor):
        if isinstance(obj.array, np.ndarray):
            return tensor_fn(obj)
        return obj
    if isinstance(obj, np.ndarray):
        return arr_fn(obj)
    if isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, cabc.Mapping):
        out = {k: _walk(v, arr_fn, tensor_fn) for k, v in obj.items()}
        try:
            return out if type(obj) is dict else type(obj)(out)
        except TypeError:
            return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_walk(v, arr_fn, tensor_fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v, arr_fn, tensor_fn) for v in obj)
    pin = getattr(obj, "pin_memory", None)   # custom batch types, as PyTorch allows
    return pin() if callable(pin) else obj


def _pinned(a: np.ndarray) -> np.ndarray:
    from tensor import backend
    return a if backend.is_pinned(a) else backend.pin_array(a)


def _pin_tensor(t):
    import tensor
    return tensor.from_numpy(_pinned(t.array)).requires_grad_(t.requires_grad)


def _cuda_or_warn() -> bool:
    global _warned
    from tensor import backend
    if backend.cuda_is_available():
        return True
    if not _warned:
        _warned = True
        warnings.warn("DataLoader: pin_memory=True but no CUDA device is available (CuPy "
                      "missing or no GPU); batches stay in ordinary memory.", stacklevel=4)
    return False


def pin_batch(batch):
    """`batch` with every CPU array copied into pinned memory (unchanged without CUDA)."""
    if not _cuda_or_warn():
        return batch
    return _walk(batch, _pinned, _pin_tensor)


def check_device(spec):
    """The loader's pin_memory_device as a device ("" -> None); raises on a bad value."""
    if not spec:
        return None
    from tensor import backend
    dev = backend.device(spec)
    if dev.type != "cuda":
        raise ValueError(f"DataLoader: pin_memory_device must be '' or 'cuda[:N]', got {spec!r}")
    return dev


class Staged:
    """A batch whose copies to a GPU are queued on the loader's side stream."""

    __slots__ = ("batch", "event")

    def __init__(self, batch, event):
        self.batch, self.event = batch, event

    def get(self):
        """The batch, after making the current stream wait for its copies (no host wait)."""
        if self.event is not None:
            from tensor import backend
            backend.cupy.cuda.get_current_stream().wait_event(self.event)
        return self.batch


def stage(batch, dev):
    """Pin `batch` and queue its tensors' copies to GPU `dev` (Note [Loader device copies]);
    without CUDA, the batch as pin_batch leaves it."""
    if dev is None or not _cuda_or_warn():
        return Staged(pin_batch(batch) if dev is None else batch, None)
    import tensor
    from tensor import backend
    cupy = backend.cupy
    idx = dev.index if dev.index is not None else cupy.cuda.runtime.getDevice()
    with cupy.cuda.Device(idx):
        side = _side_streams.get(idx)
        if side is None:
            side = _side_streams[idx] = cupy.cuda.Stream(non_blocking=True)
        side.wait_event(cupy.cuda.get_current_stream().record())
        with side:
            out = _walk(batch, _pinned, lambda t: tensor.Tensor(backend.to_device(
                _pinned(t.array), dev, non_blocking=True)).requires_grad_(t.requires_grad))
            event = side.record()
    return Staged(out, event)
