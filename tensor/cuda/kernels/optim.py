"""Multi-tensor Adam / AdamW / SGD: every parameter of a group updated by one kernel launch.

Note [Multi-tensor table]
~~~~~~~~~~~~~~~~~~~~~~~~~
The kernels (adam_mt, sgd_mt in _sources.py) take one int64 device array ``tab``:

    tab[0 : n+1]            cumulative element counts (offs[k] = first flat index of tensor k)
    tab[n+1 + k*ncol + c]   column c of tensor k: a device pointer (param, grad, state...) or a
                            flag (SGD's 'first momentum step')

A grid-stride loop walks the flat index space 0 .. offs[n]; each thread finds its tensor by a
binary search once, then by walking forward. The table is built on the host into pinned memory
and copied with cudaMemcpyAsync on the current stream, so building it never syncs the device.
It is cached by its content (the tuple of sizes and pointers): gradients are often
re-allocated each step, but CuPy's pool hands back the same blocks, so a steady loop hits the
cache and launches exactly one kernel (two for a device 'step', counted by zg_inc_steps).

Lifetime: the pinned buffer must outlive its asynchronous copy, and a CUDA graph that captured
the copy reads the pinned buffer again at every replay. So an entry made outside a capture
records an event after its copy and, when evicted (least recently used beyond
``MAX_ENTRIES``), waits for that event first; an entry made while the stream is capturing is
never evicted: it lives as long as the optimizer, and tensor.cuda.graphs.keep_alive ties it to
the graph too.

Capture: a graph normally finds its tables already cached by the warm-up steps and captures no
copy at all. But the usual recipe zeroes the gradients with set_to_none before capturing, so
the captured backward allocates them anew (from the graph's private pool): new pointers, a
miss while capturing. No pinned memory may be allocated then (tensor.cuda.graphs refuses it,
and cudaHostAlloc is not capturable), so each miss outside a capture also sets aside a spare
pinned block (4x the largest table, at least 64 KiB); a miss during a capture carves its host
table from that block (its copy becomes a memcpy node of the graph, see _copy_table), and the
next step outside the capture sets aside a fresh one.
"""
from __future__ import annotations

import math
import sys
from collections import OrderedDict

import numpy as np

from ... import backend
from . import grid_1d, kernel

MAX_ENTRIES = 16
_BLOCK = 256


class _Entry:
    __slots__ = ("dev", "host", "event", "pinned_forever")

    def __init__(self, dev, host, event, pinned_forever):
        self.dev, self.host, self.event, self.pinned_forever = dev, host, event, pinned_forever


def _capturing(stream) -> bool:
    try:
        return bool(stream.is_capturing())
    except Exception:  # querying may be illegal in some capture modes: assume capturing
        return True


def _keep_alive(obj) -> None:
    """Hand obj to the capturing graph's keep-alive list, when tensor.cuda.graphs has one."""
    graphs = sys.modules.get("tensor.cuda.graphs")
    for name in ("keep_alive", "_keep_alive", "register_keep_alive"):
        hook = getattr(graphs, name, None)
        if callable(hook):
            hook(obj)
            return


class TableCache:
    """Device tables of one optimizer, keyed by content (Note [Multi-tensor table])."""

    def __init__(self):
        self._entries = OrderedDict()
        self._spare = None      # [pinned block, size_bytes, used_bytes] for misses in a capture
        self._largest = 0       # bytes of the largest table made

    def __len__(self):
        return len(self._entries)

    def __reduce__(self):  # copies and pickles of an optimizer start with an empty cache
        return (TableCache, ())

    def get(self, sizes: list, cells: list):
        key = (tuple(sizes), tuple(cells))
        ent = self._entries.get(key)
        if ent is not None:
            self._entries.move_to_end(key)
            return ent.dev
        cp = backend.cupy
        n, count = len(sizes), len(sizes) + 1 + len(cells)
        stream = cp.cuda.get_current_stream()
        forever = _capturing(stream)
        self._largest = max(self._largest, count * 8)
        host = self._host_buffer(count, forever)
        host[0] = 0
        np.cumsum(np.asarray(sizes, np.int64), out=host[1:n + 1])
        host[n + 1:] = cells
        dev = cp.empty(count, np.int64)
        _copy_table(cp, dev, host, count * 8, stream, forever)
        event = None
        if forever:
            _keep_alive((dev, host))
        else:
            event = cp.cuda.Event(disable_timing=True)
            event.record(stream)
        self._entries[key] = _Entry(dev, host, event, forever)
        if not forever:  # neither waiting on an event nor pinning memory is allowed in a capture
            self._evict()
            self._set_aside_spare()
        return dev

    def _host_buffer(self, count: int, capturing: bool):
        """A pinned int64 array of count elements: fresh, or carved from the spare in a capture."""
        if not capturing:
            return backend.pinned_empty((count,), np.int64)
        spare = self._spare
        if spare is None or spare[1] - spare[2] < count * 8:
            raise RuntimeError(
                "multi-tensor optimizer: a new parameter table is needed while a CUDA graph is "
                "being captured, and the pinned memory set aside for that is used up. Run an "
                "optimizer step outside the capture first (the warm-up of PyTorch's graph "
                "recipe), or pass foreach=False.")
        host = np.ndarray((count,), np.int64, buffer=spare[0], offset=spare[2])
        spare[2] += (count * 8 + 63) // 64 * 64
        return host

    def _set_aside_spare(self):
        want = max(64 << 10, 4 * self._largest)
        if self._spare is None or self._spare[2] or self._spare[1] < want:
            # a used block stays alive through the host arrays carved from it
            self._spare = [backend.cupy.cuda.alloc_pinned_memory(want), want, 0]

    def _evict(self):
        evictable = [k for k, e in self._entries.items() if not e.pinned_forever]
        for k in evictable[:max(0, len(evictable) - MAX_ENTRIES)]:
            ent = self._entries.pop(k)
            ent.event.synchronize()  # its copy read the pinned buffer; long done in practice


def _copy_table(cp, dev, host, nbytes: int, stream, capturing: bool) -> None:
    """Queue the pinned host table's copy to the device on `stream`. CuPy 14's
    MemoryPointer.copy_from_host_async refuses while the stream captures ("H2D transfers are
    disallowed"), but CUDA captures an async copy from pinned memory as a memcpy node that
    rereads the (kept-alive) host table at every replay: so a capture calls cudaMemcpyAsync
    through CuPy's runtime binding, which has no such guard."""
    if capturing:
        rt = cp.cuda.runtime
        rt.memcpyAsync(dev.data.ptr, host.ctypes.data, nbytes, rt.memcpyHostToDevice,
                       stream.ptr)
    else:
        dev.data.copy_from_host_async(host.ctypes.data, nbytes, stream)


def _lr_args(lr):
    """(device array, lr_kind, lr_host) for a float lr or a 1-element Tensor lr: a CUDA one is
    read by the kernel (lr_kind 1: float32, 2: float64), so a captured graph sees its changes."""
    cp = backend.cupy
    a = getattr(lr, "array", None)
    if a is None:
        return _dummy_f64(), np.int32(0), np.float64(lr)
    if isinstance(a, cp.ndarray):
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float64)  # a device cast: nothing synced or baked in
        return a, np.int32(1 if a.dtype == np.float32 else 2), np.float64(0.0)
    return _dummy_f64(), np.int32(0), np.float64(float(a))


_DUMMY = {}


def _dummy_f64():
    cp = backend.cupy
    dev = cp.cuda.Device().id
    d = _DUMMY.get(dev)
    if d is None:
        d = _DUMMY[dev] = cp.zeros(1, np.float64)
    return d


def _ptr(a) -> int:
    return a.data.ptr


def adam_step(cache: TableCache, dtype, params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq,
              steps, *, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled,
              host_step=None):
    """One Adam/AdamW update of every (param, grad, state) array of the lists, in one launch.

    steps: the 0-d float32 device 'step' arrays (incremented here on the device, and the bias
    corrections computed from them there), or None with host_step the (shared) step count
    already incremented on the host.
    """
    sizes = [p.size for p in params]
    cells = []
    for k, (p, g, m, v) in enumerate(zip(params, grads, exp_avg, exp_avg_sq)):
        vm = max_exp_avg_sq[k] if amsgrad else v
        cells += (_ptr(p), _ptr(g), _ptr(m), _ptr(v), _ptr(vm),
                  _ptr(steps[k]) if steps is not None else 0)
    tab = cache.get(sizes, cells)
    n, total = len(params), sum(sizes)
    if steps is not None:
        kernel("optim", "zg_inc_steps")(grid_1d(n, 128), (128,),
                                        (tab, np.int32(n), np.int32(6), np.int32(5)))
        bc1 = bc2s = 1.0
    else:
        bc1, bc2s = 1 - beta1 ** host_step, math.sqrt(1 - beta2 ** host_step)  # as the loop
    lr_dev, lr_kind, lr_host = _lr_args(lr)
    kernel("optim", "adam_mt", dtype)(
        grid_1d(total, _BLOCK, 2048), (_BLOCK,),
        (tab, np.int32(n), np.int64(total), lr_dev, lr_kind, lr_host, np.float64(beta1),
         np.float64(beta2), np.float64(eps), np.float64(weight_decay), np.int32(amsgrad),
         np.int32(maximize), np.int32(decoupled), np.int32(steps is not None),
         np.float64(bc1), np.float64(bc2s)))


def sgd_step(cache: TableCache, dtype, params, grads, bufs, first, *, lr, momentum, dampening,
             weight_decay, nesterov, maximize):
    """One SGD update of every param in one launch. bufs: the momentum buffers (ignored when
    momentum == 0); first[k]: bufs[k] is new and takes the gradient as it is."""
    sizes = [p.size for p in params]
    cells = []
    for k, (p, g) in enumerate(zip(params, grads)):
        b = bufs[k] if momentum != 0 else p
        cells += (_ptr(p), _ptr(g), _ptr(b), int(bool(first[k])) if momentum != 0 else 0)
    tab = cache.get(sizes, cells)
    n, total = len(params), sum(sizes)
    lr_dev, lr_kind, lr_host = _lr_args(lr)
    kernel("optim", "sgd_mt", dtype)(
        grid_1d(total, _BLOCK, 2048), (_BLOCK,),
        (tab, np.int32(n), np.int64(total), lr_dev, lr_kind, lr_host, np.float64(momentum),
         np.float64(dampening), np.float64(weight_decay), np.int32(nesterov),
         np.int32(maximize)))
