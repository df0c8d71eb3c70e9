"""DDP's gradient reducer: buckets, the per-parameter hook, launching and finishing reductions.

Note [DDP buckets]
~~~~~~~~~~~~~~~~~~
Parameters are grouped into buckets in reverse registration order (roughly the order in which
backward produces their gradients), one dtype and device per bucket; a bucket closes once it
holds at least its limit, 1 MiB for the first (so the first reduction starts early in backward)
and ``bucket_cap_mb`` after. Each bucket is one flat array allocated once, at construction, and
reused every step; ``views[j]`` is its j-th parameter's gradient shaped as the parameter, inside
it. On one host the arrays live in shared memory, in two sets that alternate (Note [DDP shared
buckets] in _shared_buckets.py); ``.grad`` as a bucket view follows the set holding the result.

Every step (an iteration whose forward ran through DDP with grad enabled and outside
``no_sync``):
  1. ``prepare_for_backward`` (end of forward) resets the counters; with
     ``find_unused_parameters`` (every step) or ``static_graph`` (the first step) it walks the
     autograd graph from the outputs to find the parameters that cannot get a gradient; an
     all-reduce of the used-parameter map then tells which got one on no rank at all (their
     .grad is left alone, as in PyTorch).
  2. A parameter's post-accumulate-grad hook writes its final ``.grad`` divided by the world
     size into its view (divided in place when ``.grad`` already is the view:
     ``gradient_as_bucket_view``; as is, for a comm hook), and counts the bucket down. The first hook of the step also marks the unused parameters ready (their
     views hold their current ``.grad`` or zeros).
  3. A bucket whose count reaches zero is launched: an async all_reduce(SUM) of its array on
     the group's communication thread (or the registered comm hook's Future), so it runs while
     backward computes the rest (dividing first, as PyTorch does, saves a pass over the bucket). Buckets launch strictly in index order, as every rank must
     issue the same collectives in the same order; a bucket ready early waits for the ones
     before it.
  4. When the last bucket is launched, ``finalize`` is queued on the autograd engine
     (``queue_callback``): at the end of backward it waits for every bucket and writes the
     averages into ``.grad`` (a copy, or nothing when ``.grad`` is the view). So backward
     returns with synchronised gradients.
A parameter that never got a hook (unused, without ``find_unused_parameters``) keeps its bucket
from launching; the next forward then fails with PyTorch's message naming it.

On GPUs (CuPy parameters; the buckets are CuPy arrays on the parameters' device) nothing here
blocks the host per bucket. The copy into the bucket (step 2) is queued on the current
(compute) stream, where the gradient was produced; the launch (step 3) records an event there
and the reduction's stream waits on it: the NCCL communicator's stream, or for zmq the
staging side stream (device to pinned host memory, reduced by the communication thread, back
on the same side stream); so the reduction overlaps the rest of backward. ``finalize``'s
``work.wait()`` makes the compute stream wait on the reduction's completion event (for zmq,
after the host part), so the copies out and the optimizer step queued after it see the
averages (Note [CUDA work] and Note [GPU staging] in _cuda.py). Copying in on the compute
stream rather than the comm stream keeps a gradient's memory in use only on the stream that
allocated it, so CuPy's pool cannot hand it out while another stream still reads it.
"""
from __future__ import annotations

import weakref

import numpy as np

from tensor import backend
from tensor._tensor import Tensor, _new
from tensor.autograd.engine import _graph, queue_callback
from tensor.futures import Future

from . import _shared_buckets
from ._grad_bucket import GradBucket
from .collectives import all_reduce
from .work import ReduceOp

class _Bucket:
    """One bucket: its flat array(s) (two sets with shared buckets, see Note [DDP shared
    buckets]), each parameter's view and a Tensor on each view (what ``.grad`` becomes with
    gradient_as_bucket_view), all made once."""

    __slots__ = ("index", "pids", "sets", "cur", "buffer", "tensor", "views", "grads", "work",
                 "future", "grad_bucket", "swap")

    def __init__(self, index, pids, buffers, shapes):
        self.index, self.pids = index, pids
        self.sets = []
        for buf in buffers:
            views, off = [], 0
            for shape in shapes:
                n = int(np.prod(shape, dtype=np.int64))
                views.append(buf[off:off + n].reshape(shape))
                off += n
            self.sets.append((buf, _new(buf), views, [_new(v) for v in views]))
        self.cur = 0
        self.buffer, self.tensor, self.views, self.grads = self.sets[0]
        self.work = self.future = self.grad_bucket = None
        self.swap = False   # the running reduction writes its result into the other set

    def flip(self):
        """The other set holds the result: it becomes the current one."""
        self.cur ^= 1
        self.buffer, self.tensor, self.views, self.grads = self.sets[self.cur]


def _unused_message(names: list, indices: list, rank: int) -> str:
    return ("Expected to have finished reduction in the prior iteration before starting a new "
            "one. This error indicates that your module has parameters that were not used in "
            "producing loss. You can enable unused parameter detection by passing the keyword "
            "argument `find_unused_parameters=True` to "
            "`runtime.distributed.DistributedDataParallel`, and by \nmaking sure all `forward` "
            "function outputs participate in calculating loss. \nIf you already have done the "
            "above, then the distributed data parallel module wasn't able to locate the output "
            "tensors in the return value of your module's `forward` function. Please include "
            "the loss function and the structure of the return value of `forward` of your "
            "module when reporting this issue (e.g. list, dict, iterable).\nParameter indices "
            f"which did not receive grad for rank {rank}: {' '.join(map(str, indices))}\n"
            f"Parameters which did not receive grad for rank {rank}: {', '.join(names)}")


class Reducer:
    """Averages the gradients of `params` over `group` in buckets (see Note [DDP buckets])."""

    def __init__(self, params: list, names: list, bucket_indices: list, group, world_size: int,
                 rank: int, gradient_as_bucket_view: bool, find_unused: bool, static_graph: bool):
        self.params, self.names, self.group = params, names, group
        self.world_size, self.rank = world_size, rank
        self.as_view = gradient_as_bucket_view
        self.find_unused, self.static_graph = find_unused, static_graph
        self.comm_hook = self.comm_state = None
        self.expect_hooks = False        # a synced backward is expected (set by forward)
        self.require_finalize = False    # hooks fired this step; finalize must follow
        self.unused: list = []           # parameter indices to mark ready at the first hook
        self.static_used = None          # static_graph: which parameters got a gradient on
        self.static_unused = None        # some rank in step 1, and which did not here (found
        self.track_used = False          # once, then reused)
        self.marked_unused = False
        self.local_used = np.zeros(len(params), np.int32)
        self.used_work = None
        self.ready = bytearray(len(params))
        self._solo = world_size == 1
        self.div_count = None            # (Work, array) of Join's count of active ranks
        self.div = world_size            # this step's divisor (see _divisor)
        self.xp = backend.get_array_module(params[0].array)
        self._build(bucket_indices)
        self._handles = []
        ref = weakref.ref(self)
        for i, p in enumerate(params):
            self._handles.append(p.register_post_accumulate_grad_hook(_make_hook(ref, i)))

    def _build(self, bucket_indices: list):
        """Allocate the bucket arrays (once) and point every parameter at its view."""
        self.buckets, self.loc = [], [None] * len(self.params)
        sizes = [(sum(self.params[i].array.size for i in pids), self.params[pids[0]].array.dtype)
                 for pids in bucket_indices]
        self.shared = None
        if _shared_buckets.usable(self.group, [p.array for p in self.params]):
            self.shared = _shared_buckets.SharedBuckets(self.group, sizes)
        for k, pids in enumerate(bucket_indices):
            shapes = [self.params[i].array.shape for i in pids]
            if self.shared is not None:
                bufs = [self.shared.buffer(k, 0), self.shared.buffer(k, 1)]
            else:
                a = self.params[pids[0]].array
                # on the parameters' GPU, whichever device is current
                bufs = [backend.to_device(np.zeros(sizes[k][0], sizes[k][1]),
                                          backend.device_of(a))]
            b = _Bucket(k, list(pids), bufs, shapes)
            self.buckets.append(b)
            for j, i in enumerate(pids):
                self.loc[i] = (b, j)
                p = self.params[i]
                if self.as_view and p.grad is not None:
                    # keep an existing gradient: it becomes the view's initial value
                    b.views[j][...] = p.grad.array
                    p.grad = b.grads[j]
        self.pending = [len(b.pids) for b in self.buckets]
        self.counts = list(self.pending)
        self.bucket_ready = [False] * len(self.buckets)
        self.next_bucket = len(self.buckets)

    @property
    def solo(self) -> bool:
        """One rank, no comm hook: no reduction and, without bucket views, no copies."""
        return self._solo and self.comm_hook is None

    def remove_hooks(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- per step --------------------------------------------------------------------------

    def prepare_for_backward(self, outputs):
        """Reset the step's accounting; find unused parameters (see Note [DDP buckets])."""
        self.expect_hooks = True
        self.pending[:] = self.counts
        self.bucket_ready[:] = [False] * len(self.buckets)
        self.next_bucket = 0
        self.ready[:] = bytes(len(self.params))
        self.marked_unused = False
        # find_unused_parameters: every step; static_graph: the first step only, then reused
        self.track_used = self.find_unused or (self.static_graph and self.static_used is None)
        if self.track_used:
            self.unused = self._search_unused(outputs)
            self.local_used[:] = 0
            if self.static_graph:
                self.static_unused = self.unused   # this rank's, reused every step
        elif self.static_graph:
            self.unused = self.static_unused

    def _search_unused(self, outputs) -> list:
        """Indices of parameters the autograd graph of `outputs` does not reach (the engine's
        own graph walk: its keys are the ids of every node and leaf reached)."""
        grads = [t for t in outputs if t.requires_grad]
        reached = set(_graph([t._node for t in grads if t._node is not None]))
        reached.update(id(t) for t in grads if t._node is None)
        return [i for i, p in enumerate(self.params) if id(p) not in reached]

    def ensure_prior_reduction_finished(self):
        """The check at each forward: the previous synced backward must have finished."""
        if not self.require_finalize:
            return
        missing = [i for i in range(len(self.params)) if not self.ready[i]]
        self.require_finalize = False
        self.expect_hooks = False
        self._drain()
        raise RuntimeError(_unused_message([self.names[i] for i in missing], missing,
                                           self.rank))

    def _drain(self):
        """Wait for reductions already launched (so the group stays in step), dropping results."""
        for b in self.buckets:
            try:
                if b.work is not None:
                    b.work.wait()
                    if b.swap:   # the next inputs go where this result went (see the Note)
                        b.flip()
                elif b.future is not None:
                    b.future.wait()
            finally:
                b.work = b.future = None
                b.swap = False
        if self.used_work is not None:
            w, self.used_work = self.used_work, None
            w.wait()

    def mark_ready(self, i: int, p, used: bool = True):
        """Parameter i's gradient is final: into its bucket, and launch what is complete."""
        if self.ready[i]:
            raise RuntimeError(
                f"Expected to mark a variable ready only once. Parameter {self.names[i]} (index "
                f"{i}) was marked ready twice in one iteration on rank {self.rank}. This is "
                "caused by using a parameter in several reentrant backward passes, by a shared "
                "parameter with find_unused_parameters, or by calling backward twice after one "
                "forward; use static_graph=True or call forward again before each backward.")
        if not self.require_finalize:
            self.require_finalize = True
            self.div = self._divisor() if self.comm_hook is None else 1
            if not self.marked_unused:
                self.marked_unused = True
                for j in self.unused:
                    if j != i:
                        self.mark_ready(j, self.params[j], used=False)
        self.ready[i] = 1
        if used and self.track_used:
            self.local_used[i] = 1
        b, j = self.loc[i]
        g = p.grad
        if self.solo and not self.as_view:
            pass       # one rank: .grad is already the result (see finalize)
        elif g is None:
            b.views[j][...] = 0
        elif g.array is not b.views[j]:
            self.xp.divide(g.array, self.div, out=b.views[j])
            if self.as_view:
                p.grad = b.grads[j]
        elif self.div != 1:
            b.views[j] /= self.div
        k = b.index
        self.pending[k] -= 1
        if self.pending[k] == 0:
            self._bucket_ready(k)

    def _bucket_ready(self, k: int):
        self.bucket_ready[k] = True
        nb = len(self.buckets)
        while self.next_bucket < nb and self.bucket_ready[self.next_bucket]:
            self._launch(self.buckets[self.next_bucket])
            self.next_bucket += 1
        if self.next_bucket == nb:
            if self.track_used:
                self.used_work = all_reduce(self.local_used, group=self.group, async_op=True)
            queue_callback(self.finalize)

    def shadow_backward(self):
        """A rank joined under Join: all-reduce zeros for every bucket (and the used map), as
        the others' backward does, and take the results into .grad."""
        for b in self.buckets:
            b.buffer[...] = 0
            self._launch(b)
        if self.find_unused or (self.static_graph and self.static_used is None):
            self.local_used[:] = 0
            self.used_work = all_reduce(self.local_used, group=self.group, async_op=True)
        self.finalize()

    def _launch(self, b: _Bucket):
        if self.comm_hook is not None:
            if b.grad_bucket is None:
                b.grad_bucket = GradBucket(b.index, b.tensor, [self.params[i] for i in b.pids],
                                           b.views, b.index == len(self.buckets) - 1)
            fut = self.comm_hook(self.comm_state, b.grad_bucket)
            if not isinstance(fut, Future):
                raise TypeError(f"DDP comm hook: expected it to return a tensor.futures.Future "
                                f"(e.g. from allreduce_hook), got {type(fut).__name__}")
            b.future = fut
            return
        if self.solo:
            return   # one rank: the gradients are their own average
        # the gradients were divided on their way into the bucket (mark_ready), as PyTorch
        # divides before summing: no division pass over the bucket here
        if self.shared is not None:
            b.work = self.shared.all_reduce(b.index, b.cur, "SUM")
            b.swap = self.shared.swap[b.index]
        else:
            b.work = all_reduce(b.buffer, ReduceOp.SUM, group=self.group, async_op=True)

    def _divisor(self):
        """What this step's gradients are divided by before they are summed: the world size,
        or under Join with divide_by_initial_world_size=False the count of active ranks."""
        if self.div_count is not None:
            work, arr = self.div_count
            self.div_count = None
            work.wait()
            return max(1, int(arr[0]))
        return self.world_size

    def finalize(self):
        """At the end of backward: wait for every bucket and write the averages into .grad."""
        self.expect_hooks = False
        self.require_finalize = False
        for b in self.buckets:
            if b.work is not None:
                w, b.work = b.work, None
                w.wait()
                if b.swap:
                    b.swap = False
                    b.flip()
            elif b.future is not None:
                fut, b.future = b.future, None
                _take_result(b, fut.wait())
        used = None
        if self.used_work is not None:
            self.used_work.wait()
            self.used_work = None
            used = self.local_used
            if self.static_graph and self.static_used is None:
                self.static_used = used.copy()
        elif self.static_graph and self.static_used is not None:
            used = self.static_used
        if self.solo and not self.as_view:
            return
        for i, p in enumerate(self.params):
            if used is not None and not used[i]:
                continue   # unused on every rank: .grad stays as it is, as in PyTorch
            b, j = self.loc[i]
            g = p.grad
            if self.as_view:
                if g is not b.grads[j]:
                    p.grad = b.grads[j]
            elif g is None:
                p.grad = _new(b.views[j].copy())
            else:
                g.array[...] = b.views[j]
                g._vbox[0] += 1


def _take_result(b: _Bucket, value):
    """A comm hook's result into the bucket (nothing to do when it reduced in place)."""
    if isinstance(value, (list, tuple)):
        value = value[0]
    arr = value.array if isinstance(value, Tensor) else value
    if arr is b.buffer:
        return
    if arr.size != b.buffer.size:
        raise RuntimeError(f"DDP comm hook: bucket {b.index} has {b.buffer.size} elements but "
                           f"the hook's future returned {arr.size}; return a tensor of the "
                           "bucket's size (e.g. bucket.buffer()).")
    b.buffer[...] = arr.reshape(b.buffer.shape)


def _make_hook(ref, i: int):
    def hook(p):
        r = ref()
        if r is not None and r.expect_hooks:
            r.mark_ready(i, p)
    return hook
