"""CUDA graphs: capture a whole training step once, replay it with one launch (torch.cuda.graphs).

Note [CUDA graphs]
~~~~~~~~~~~~~~~~~~
A Python runtime pays microseconds of host work per kernel; a training step launches hundreds.
Stream capture records the kernels a step queues (CuPy: ``Stream.begin_capture`` /
``end_capture`` -> ``cupy.cuda.Graph``) and ``replay()`` launches them all at once, with no
Python in between. What makes that correct:

1. Capture runs on a side, non-blocking stream (CUDA can't capture the legacy default stream).
   ``graph(g)`` uses one capture stream per GPU for every graph, as PyTorch does, which is also
   what lets graphs share a pool (CuPy caches freed blocks per stream). Replay launches on the
   *current* stream, so it is ordered with the surrounding eager work as any kernel is.
2. The graph bakes in the addresses of everything it reads and writes. Every allocation made
   during capture therefore comes from a PRIVATE ``cupy.cuda.MemoryPool`` (installed as this
   thread's allocator with ``cupy.cuda.using_allocator``). The graph holds the pool; memory
   freed during capture (intermediates) returns to that pool's free list and is reused within
   the same capture or by a later capture into the same pool, never by eager code. So outputs
   and intermediates live as long as the graph. Graphs captured with ``pool=other.pool()`` or
   a ``graph_pool_handle()`` share one pool: replay them in the order they were captured, never
   concurrently, and don't expect an output of one to survive a replay of a later one.
   Arrays allocated *before* capture that the graph uses (parameters, static inputs, optimizer
   state) are the caller's to keep alive and in place: update them with in-place ops
   (``static_x.copy_(batch)``), never rebind them.
3. Nothing in the captured region may synchronise with the host: ``.item()``, ``float(t)``,
   ``bool(t)``, ``print(t)``, ``.cpu()``/``.numpy()``, a data-dependent shape (``t[mask]``,
   ``nonzero``). CuPy's sync detector is switched on for the capturing thread, so such a call
   raises before CUDA sees it; the error names the zgrad function and your line that did it.
   CuPy also refuses host-to-device and device-to-host copies while capturing
   (``tensor.tensor(list, device="cuda")``, ``.to("cuda")`` of a CPU tensor): create such
   tensors before capture and update them in place; Python scalars are fine (they become
   kernel arguments). Buffers a captured kernel reads that nobody else holds (a fused
   optimizer's pointer table) go to ``keep_alive(obj)``, which ties them to the graph.
4. Random numbers are graph-safe: see Note [Graph-safe RNG] in tensor/random.py.
5. cudaMalloc is not allowed under the default ("global") capture mode; the private pool's
   allocator switches the thread to relaxed mode around it (PyTorch does the same).
6. CuPy refuses cuBLAS during capture; matmuls in the capturing thread go through our own
   cuBLAS calls instead (Note [Capturable matmul] in _blas.py). Other CuPy library calls that
   refuse capture (cuSOLVER, cuSPARSE, cuRAND's host API, einsum's cuBLAS path) raise, and the
   error names the op.

Usage (a whole training step, as in PyTorch's docs)::

    model, loss_fn = ..., ...
    opt = tensor.optim.SGD(model.parameters(), lr=0.1)
    static_x = tensor.randn(N, D, device="cuda")
    static_y = tensor.randint(0, C, (N,), device="cuda")

    s = tensor.cuda.Stream()                      # warm up on a side stream: lazy inits,
    s.wait_stream(tensor.cuda.current_stream())   # kernel compiles, optimizer state
    with tensor.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(static_x), static_y).backward()
            opt.step()
    tensor.cuda.current_stream().wait_stream(s)

    g = tensor.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)               # .grad is allocated in the graph's pool
    with tensor.cuda.graph(g):
        static_loss = loss_fn(model(static_x), static_y)
        static_loss.backward()
        opt.step()

    for x, y in loader:
        static_x.copy_(x)                         # new data into the captured inputs
        static_y.copy_(y)
        g.replay()                                # forward, backward and step: one launch
        print(static_loss.item())                 # outputs are refreshed in place

The optimizer must be capturable (no host-side step counter, no host sync): SGD's update is
plain array arithmetic; Adam/AdamW need ``capturable=True``. To graph only a module's forward
and backward inside an eager step, see make_graphed_callables (tensor/cuda/_graphed.py).
"""
from __future__ import annotations

import gc
import itertools
import threading

from .. import _device_checks, backend
from .. import random as _random
from . import _blas
from . import memory as _memory
from ._capture import _MODES, explain_capture_error, relaxed_capture_mode, set_sync_allowed
from ._util import available, require
from .streams import Stream, StreamContext, current_stream

_tls = threading.local()            # .graph: the CUDAGraph capturing in this thread
_pool_ids = itertools.count(1)


class _Pool:
    """A private memory pool (what graph_pool_handle() and CUDAGraph.pool() return)."""

    def __init__(self):
        cp = require("graph_pool_handle")
        self.id = next(_pool_ids)
        self.mempool = cp.cuda.MemoryPool()
        _memory._graph_pools.add(self)

    def malloc(self, size: int):
        # cudaMalloc may run here, inside the capture; see Note [CUDA graphs], point 5
        with relaxed_capture_mode():
            return self.mempool.malloc(size)

    def __repr__(self):
        return f"<tensor.cuda graph pool {self.id}>"


def graph_pool_handle() -> _Pool:
    """A new memory pool token: pass it as ``pool=`` to several captures to share memory."""
    return _Pool()


class CUDAGraph:
    """A captured CUDA graph (torch.cuda.CUDAGraph). Capture with ``tensor.cuda.graph(g)``,
    then ``g.replay()``. See Note [CUDA graphs]."""

    def __init__(self):
        require("CUDAGraph")
        self._graph = None      # cupy.cuda.Graph once captured
        self._pool = None
        self._keep = None       # objects the graph's kernels use that must outlive it
        self._flags = ()        # devices whose device-assert flags the graph writes
        self._capture = None    # state while capturing

    def capture_begin(self, pool=None, capture_error_mode: str = "global") -> None:
        """Start capturing the work queued on the current stream (which must not be the
        default stream). Prefer ``with tensor.cuda.graph(g):``."""
        cp = require("CUDAGraph.capture_begin")
        if capture_error_mode not in _MODES:
            raise ValueError(f"capture_begin: capture_error_mode must be one of {list(_MODES)}, "
                             f"got {capture_error_mode!r}.")
        if self._graph is not None or self._capture is not None:
            raise RuntimeError("capture_begin: this CUDAGraph already holds a capture; call "
                               "reset() first, or use a new CUDAGraph.")
        if getattr(_tls, "graph", None) is not None:
            raise RuntimeError("capture_begin: another CUDA graph is being captured in this "
                               "thread; end it first (captures don't nest).")
        if pool is not None and not isinstance(pool, _Pool):
            raise TypeError("capture_begin: pool must come from tensor.cuda.graph_pool_handle() "
                            f"or another graph's .pool(), got {type(pool).__name__}.")
        stream = cp.cuda.get_current_stream()
        if stream.ptr == 0:
            raise RuntimeError("capture_begin: the current stream is the default stream, which "
                               "CUDA can't capture. Use `with tensor.cuda.graph(g):` (it captures "
                               "on a side stream) or make a tensor.cuda.Stream() current first.")
        rng = _random.default_generator
        if rng._cupy_rng is None:   # its state is made outside the capture (Note [Graph-safe RNG])
            rng.cupy_rng()
            stream.synchronize()
        try:   # the capturable matmul's cuBLAS handle, made outside the capture
            _blas.prepare()
        except (OSError, RuntimeError):
            pass   # then a matmul in the capture fails with CuPy's refusal, named by our error
        self._pool = pool if pool is not None else _Pool()
        keep = [rng._cupy_rng]
        alloc_ctx = cp.cuda.using_allocator(self._pool.malloc)
        alloc_ctx.__enter__()
        sync_prev = set_sync_allowed(False)
        _blas.install(_graph_in_capture)
        _random._capture.keep = keep
        _tls.graph = self
        self._capture = (stream, alloc_ctx, sync_prev, keep)
        try:
            stream.begin_capture(_MODES[capture_error_mode])
        except BaseException:
            self._end_capture_state()
            self._pool = None
            raise

    def _end_capture_state(self):
        stream, alloc_ctx, sync_prev, keep = self._capture
        self._capture = None
        _tls.graph = None
        _random._capture.keep = None
        _blas.uninstall()
        set_sync_allowed(sync_prev)
        alloc_ctx.__exit__(None, None, None)
        return stream, keep

    def capture_end(self) -> None:
        """End the capture begun by capture_begin() and instantiate the graph."""
        if self._capture is None:
            raise RuntimeError("capture_end: no capture in progress; call capture_begin() first.")
        stream, keep = self._end_capture_state()
        try:
            self._graph = stream.end_capture()
        except Exception as e:
            self._pool = None
            raise RuntimeError(f"CUDA graph capture failed when it ended: {e}. Something in the "
                               "captured region did work CUDA can't capture (a host sync, the "
                               "default stream, another thread's CUDA call under "
                               "capture_error_mode='global').") from e
        self._keep = keep
        self._flags = _device_checks.devices_flagged_on(stream)

    def _abort_capture(self) -> None:
        """End a capture that raised: leave the stream usable, drop the partial graph."""
        if self._capture is None:
            return
        stream, _ = self._end_capture_state()
        try:
            stream.end_capture()
        except Exception:
            pass   # an invalidated capture also ends here; the first error is the one to report
        self._pool = None

    def replay(self) -> None:
        """Launch the captured work on the current stream."""
        if self._graph is None:
            raise RuntimeError("CUDAGraph.replay: nothing was captured; capture first with "
                               "`with tensor.cuda.graph(g): ...`.")
        stream = backend.cupy.cuda.get_current_stream()
        self._graph.launch(stream)
        if self._flags:   # its device asserts fired again: the next host read checks them
            _device_checks.note_flagged(self._flags, stream)

    def reset(self) -> None:
        """Drop the captured graph and its hold on the memory pool."""
        if self._capture is not None:
            self._abort_capture()
        self._graph = None      # the executable graph goes before the memory it uses
        self._keep = None
        self._flags = ()
        self._pool = None

    def pool(self) -> _Pool:
        """This graph's memory pool token, to share it with a later capture."""
        if self._pool is None:
            raise RuntimeError("CUDAGraph.pool: this graph has no pool yet; capture first.")
        return self._pool

    def __repr__(self):
        state = "capturing" if self._capture else ("captured" if self._graph else "empty")
        return f"<tensor.cuda.CUDAGraph {state}>"


class graph:
    """``with tensor.cuda.graph(g):`` captures the block into CUDAGraph `g` (torch.cuda.graph).

    Args:
        cuda_graph: the CUDAGraph to capture into.
        pool: a pool token (graph_pool_handle() or other_graph.pool()) to share memory.
        stream: the capture stream; by default one side stream per GPU shared by all graphs.
        capture_error_mode: "global" (default), "thread_local" or "relaxed", as in CUDA.
    """

    _capture_streams: dict = {}   # device index -> default capture Stream

    def __init__(self, cuda_graph: CUDAGraph, pool=None, stream: Stream = None,
                 capture_error_mode: str = "global"):
        cp = require("graph")
        if stream is None:
            dev = cp.cuda.runtime.getDevice()
            stream = graph._capture_streams.get(dev)
            if stream is None:
                stream = graph._capture_streams[dev] = Stream(dev)
        self.cuda_graph = cuda_graph
        self.pool = pool
        self.capture_stream = stream
        self.capture_error_mode = capture_error_mode
        self._stream_ctx = StreamContext(stream)

    def __enter__(self):
        cp = backend.cupy
        # as PyTorch: finish pending work (the capture stream does not wait for the default
        # stream) and release garbage so that its memory is not held across the capture
        cp.cuda.Device().synchronize()
        gc.collect()
        self.capture_stream.wait_stream(current_stream())
        self._stream_ctx.__enter__()
        try:
            self.cuda_graph.capture_begin(self.pool, capture_error_mode=self.capture_error_mode)
        except BaseException:
            self._stream_ctx.__exit__(None, None, None)
            raise
        return None

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc is None:
                self.cuda_graph.capture_end()
            else:
                self.cuda_graph._abort_capture()
        finally:
            self._stream_ctx.__exit__(None, None, None)
        if exc is not None:
            clear = explain_capture_error(exc)
            if clear is not None:
                raise clear from exc
        return False


def is_current_stream_capturing() -> bool:
    """True while the current stream is being captured into a CUDA graph (False without CUDA)."""
    if getattr(_tls, "graph", None) is not None:
        return True
    if not available():
        return False
    try:
        return bool(backend.cupy.cuda.get_current_stream().is_capturing())
    except Exception:   # querying the legacy stream while another stream captures is an error
        return False


# -- helpers --------------------------------------------------------------------------------

def keep_alive(obj) -> None:
    """Keep `obj` alive as long as the graph being captured in this thread (a buffer its
    kernels or copies read, such as a pinned host table); nothing happens outside a capture."""
    keep = getattr(_random._capture, "keep", None)
    if keep is not None:
        keep.append(obj)


def _graph_in_capture():
    """The CUDAGraph capturing in this thread, or None (a cheap check for other modules)."""
    return getattr(_tls, "graph", None)

