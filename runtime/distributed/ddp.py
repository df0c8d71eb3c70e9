"""DistributedDataParallel: data-parallel training, as torch.nn.parallel.DistributedDataParallel.

    model = DistributedDataParallel(net)          # every rank: same net, its own data shard
    loss = loss_fn(model(x), y); loss.backward()  # .grad is the average over ranks on return
    opt.step()

Construction broadcasts parameters and buffers from rank 0; each forward broadcasts the
buffers again (``broadcast_buffers``); backward averages the gradients in buckets that are
all-reduced while backward still runs (see Note [DDP buckets] in _reducer.py).
"""
from __future__ import annotations

import contextlib

import numpy as np

from tensor import backend, is_grad_enabled
from tensor._tensor import Tensor
from tensor.nn import Module

from . import api
from ._grad_bucket import (DEFAULT_FIRST_BUCKET_BYTES, GradBucket,
                           compute_bucket_assignment_by_size)
from ._reducer import Reducer
from .algorithms.join import Join, Joinable, JoinHook
from .collectives import all_reduce, broadcast
from .objects import all_gather_object
from .process_group import ReduceOp

__all__ = ["DistributedDataParallel", "GradBucket"]


def _tensors_in(obj, out: list) -> list:
    """Every Tensor inside `obj` (nested tuples, lists, dicts, dataclass-like objects)."""
    if isinstance(obj, Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors_in(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors_in(o, out)
    elif hasattr(obj, "__dict__") and not isinstance(obj, Module):
        for o in vars(obj).values():
            _tensors_in(o, out)
    return out


class _Coalesced:
    """Broadcast a list of arrays as one flat array per dtype/device; the flat arrays are kept
    and reused while the sizes stay the same."""

    def __init__(self):
        self.flat: dict = {}

    def broadcast(self, arrays: list, src: int, group):
        groups: dict = {}
        for a in arrays:
            groups.setdefault((a.dtype.str, str(backend.device_of(a))), []).append(a)
        for key, arrs in groups.items():
            n = sum(a.size for a in arrs)
            flat = self.flat.get(key)
            if flat is None or flat.size != n:
                flat = self.flat[key] = backend.get_array_module(arrs[0]).empty(n, arrs[0].dtype)
            off = 0
            for a in arrs:
                flat[off:off + a.size] = a.reshape(-1)
                off += a.size
            broadcast(flat, src, group=group)
            off = 0
            for a in arrs:
                a[...] = flat[off:off + a.size].reshape(a.shape)
                off += a.size


class _DDPJoinHook(JoinHook):
    """What a rank that ran out of inputs does for each step the others still take: the same
    collectives, with zeros (see Join)."""

    def __init__(self, ddp: "DistributedDataParallel", divide_by_initial_world_size: bool):
        self.ddp = ddp
        ddp._divide_by_initial_world_size = divide_by_initial_world_size

    def main_hook(self):
        ddp = self.ddp
        should_sync = ddp._check_global_requires_backward_grad_sync(is_joined_rank=True)
        if ddp.require_forward_param_sync:   # as the active ranks decide (see forward)
            ddp._sync_buffers(is_joined_rank=True)
        ddp.require_forward_param_sync = should_sync
        if should_sync:
            ddp._match_all_reduce_for_bwd_pass()

    def post_hook(self, is_last_joiner: bool):
        self.ddp._sync_final_model(is_last_joiner)


class DistributedDataParallel(Module, Joinable):
    """Wrap `module` so that backward averages its gradients over the ranks of the group.

    Args (PyTorch's):
        module: the model, the same on every rank (rank 0's weights win at construction).
        device_ids, output_device, dim: accepted for compatibility; inputs are not moved or
            scattered (one device per process, as PyTorch recommends).
        broadcast_buffers: broadcast buffers (e.g. BatchNorm's running stats) from rank 0 at
            the start of every forward that follows a synced (training) one.
        process_group: the group to average over (default: the world).
        bucket_cap_mb: bucket size limit in MiB (default 25); the first bucket is 1 MiB.
        find_unused_parameters: find, after each forward, the parameters the output does not
            depend on and count them ready (their gradient is the average of the others').
        gradient_as_bucket_view: make each .grad a view into its bucket (saves a copy in and
            out, and memory).
        static_graph: the graph is the same every step: the unused parameters are found in
            the first step only.
    """

    def __init__(self, module: Module, device_ids=None, output_device=None, dim: int = 0,
                 broadcast_buffers: bool = True, init_sync: bool = True, process_group=None,
                 bucket_cap_mb=None, find_unused_parameters: bool = False,
                 check_reduction: bool = False, gradient_as_bucket_view: bool = False,
                 static_graph: bool = False, delay_all_reduce_named_params=None,
                 param_to_hook_all_reduce=None, mixed_precision=None, device_mesh=None):
        Module.__init__(self)
        Joinable.__init__(self)
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: module must be a tensor.nn.Module, got "
                            f"{type(module).__name__}")
        if mixed_precision is not None or device_mesh is not None:
            raise ValueError("DistributedDataParallel: mixed_precision and device_mesh are not "
                             "supported; cast the model yourself and pass process_group.")
        pg = api._group(process_group, "DistributedDataParallel")
        if pg is None:
            raise ValueError("DistributedDataParallel: this rank is not a member of "
                             "process_group.")
        self.module = module
        object.__setattr__(self, "process_group", pg)
        self.device_ids, self.output_device, self.dim = device_ids, output_device, dim
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.gradient_as_bucket_view = gradient_as_bucket_view
        self.static_graph = static_graph
        self.require_backward_grad_sync = True
        self.require_forward_param_sync = True
        self._divide_by_initial_world_size = True
        ignore = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
        named = [(n, p) for n, p in module.named_parameters()
                 if p.requires_grad and n not in ignore]
        if not named:
            raise RuntimeError("DistributedDataParallel is not needed when a module doesn't "
                               "have any parameter that requires a gradient.")
        self._names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._ignore = ignore
        self.bucket_bytes_cap = int((25 if bucket_cap_mb is None else bucket_cap_mb) * 1024 * 1024)
        self._rank, self._world_size = pg.rank(), pg.size()
        self._coalesced = _Coalesced()
        self._verify_same_model()
        if init_sync:
            self._sync_params_and_buffers(src=pg.ranks[0])
        arrays = [p.array for p in self._params]
        order = list(range(len(arrays)))[::-1]   # roughly the order backward produces grads
        buckets, _ = compute_bucket_assignment_by_size(
            arrays, [DEFAULT_FIRST_BUCKET_BYTES, self.bucket_bytes_cap], order)
        object.__setattr__(self, "reducer", Reducer(
            self._params, self._names, buckets, pg, self._world_size, self._rank,
            gradient_as_bucket_view, find_unused_parameters, static_graph))

    # -- construction ---------------------------------------------------------------------

    def _verify_same_model(self):
        """Every rank must wrap the same parameters (count, shapes, dtypes) in the same order."""
        mine = [[n, list(p.shape), str(p.dtype)] for n, p in zip(self._names, self._params)]
        everyone = [None] * self._world_size
        all_gather_object(everyone, mine, group=self.process_group)
        for r, theirs in enumerate(everyone):
            if theirs != mine:
                if len(theirs) != len(mine):
                    raise RuntimeError(
                        f"DDP expects same model across all ranks, but Rank {self._rank} has "
                        f"{len(mine)} params, while rank {r} has inconsistent {len(theirs)} "
                        "params.")
                k = next(j for j in range(len(mine)) if mine[j] != theirs[j])
                raise RuntimeError(
                    f"DDP expects same model across all ranks, but Rank {self._rank} has "
                    f"parameter {mine[k][0]} of shape {mine[k][1]} {mine[k][2]}, while rank {r} "
                    f"has {theirs[k][0]} of shape {theirs[k][1]} {theirs[k][2]}.")

    def _module_buffers(self) -> list:
        return [b.array for n, b in self.module.named_buffers() if n not in self._ignore]

    def _sync_params_and_buffers(self, src: int):
        arrays = [p.array for n, p in self.module.named_parameters() if n not in self._ignore]
        self._coalesced.broadcast(arrays + self._module_buffers(), src, self.process_group)

    # -- forward ----------------------------------------------------------------------------

    def forward(self, *inputs, **kwargs):
        """Run the module; set up the gradient reduction of the backward that follows."""
        sync = is_grad_enabled() and self.require_backward_grad_sync
        if self._join_config.enable:
            work = Join.notify_join_context(self)
            if work is not None and not self._divide_by_initial_world_size:
                self.reducer.div_count = work
            self._check_global_requires_backward_grad_sync(is_joined_rank=False)
        if sync:
            self.reducer.ensure_prior_reduction_finished()
        if self.require_forward_param_sync:   # the previous forward was a synced one
            self._sync_buffers(is_joined_rank=False)
        out = self.module(*inputs, **kwargs)
        if sync:
            outputs = _tensors_in(out, []) if (self.find_unused_parameters or
                                               self.static_graph) else ()
            self.reducer.prepare_for_backward(outputs)
            self.require_forward_param_sync = True
        else:
            self.require_forward_param_sync = False
        return out

    def _sync_buffers(self, is_joined_rank: bool):
        """Broadcast the buffers from rank 0 (from the highest active rank under Join).

        As in PyTorch this happens at the start of a forward that follows a synced one
        (training, outside no_sync): an eval loop syncs once, then runs without collectives."""
        if not self.broadcast_buffers:
            return
        bufs = self._module_buffers()
        if not bufs:
            return
        src = self.process_group.ranks[0]
        if self._join_config.enable:
            src = self._find_common_rank(self._rank, not is_joined_rank)
        self._coalesced.broadcast(bufs, src, self.process_group)

    def _find_common_rank(self, rank: int, candidate: bool) -> int:
        """The highest group rank among those with `candidate` (as global rank)."""
        x = np.array([rank if candidate else -1], np.int64)
        all_reduce(x, ReduceOp.MAX, group=self.process_group)
        if x[0] < 0:
            raise RuntimeError("DistributedDataParallel: no rank is a candidate to broadcast "
                               "from; this is a bug in the Join protocol.")
        return self.process_group.ranks[int(x[0])]

    @contextlib.contextmanager
    def no_sync(self):
        """Backward inside this context accumulates gradients locally, without communication;
        the first backward outside it averages the accumulated gradients."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    # -- comm hooks ----------------------------------------------------------------------------

    def register_comm_hook(self, state, hook):
        """Reduce each bucket with hook(state, bucket: GradBucket) -> Future of the bucket's
        reduced flat tensor (see algorithms.ddp_comm_hooks). Register once, before training."""
        if self.reducer.comm_hook is not None:
            raise RuntimeError("register_comm_hook or register_builtin_comm_hook can only be "
                               "called once.")
        if not callable(hook):
            raise TypeError(f"register_comm_hook: hook must be callable, got "
                            f"{type(hook).__name__}")
        self.reducer.comm_hook, self.reducer.comm_state = hook, state

    # -- Join (see algorithms/join.py) ---------------------------------------------------------

    def join(self, divide_by_initial_world_size: bool = True, enable: bool = True,
             throw_on_early_termination: bool = False):
        """A context manager for uneven inputs: ranks that run out of batches shadow the
        collectives of those still training (see algorithms.Join)."""
        return Join([self], enable, throw_on_early_termination,
                    divide_by_initial_world_size=divide_by_initial_world_size)

    def join_hook(self, **kwargs) -> JoinHook:
        return _DDPJoinHook(self, kwargs.get("divide_by_initial_world_size", True))

    @property
    def join_device(self):
        return backend.device_of(self._params[0].array)

    @property
    def join_process_group(self):
        return self.process_group

    def _check_global_requires_backward_grad_sync(self, is_joined_rank: bool) -> bool:
        """Tell joined ranks whether this step's backward syncs; True if any rank syncs."""
        sync = not is_joined_rank and is_grad_enabled() and self.require_backward_grad_sync
        x = np.array([1.0 if sync else 0.0], np.float32)
        all_reduce(x, group=self.process_group)
        return bool(x[0] > 0)

    def _match_all_reduce_for_bwd_pass(self):
        """A joined rank's side of one backward: every bucket all-reduced with zeros. Unlike
        PyTorch the averages land in this rank's .grad, so a ZeroRedundancyOptimizer shard
        owned by a joined rank still steps with the right gradients."""
        self.reducer.shadow_backward()

    def _sync_final_model(self, is_last_joiner: bool):
        """After Join: every rank takes the model of the last rank to join."""
        src = self._find_common_rank(self._rank, is_last_joiner)
        self._sync_params_and_buffers(src)

    def __del__(self):
        r = self.__dict__.get("reducer")
        if r is not None:
            r.remove_hooks()
