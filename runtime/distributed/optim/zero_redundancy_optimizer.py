"""ZeroRedundancyOptimizer: optimizer state sharded over ranks, as
torch.distributed.optim.ZeroRedundancyOptimizer (ZeRO stage 1).

    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tensor.optim.Adam, lr=1e-3)

Note [ZeRO sharding]
~~~~~~~~~~~~~~~~~~~~
Each parameter is owned by one rank: per param group, parameters are taken largest first and
each goes to the rank with the fewest elements so far (PyTorch's greedy partition). A rank's
local optimizer (``self.optim``, an ``optimizer_class``) holds only the parameters it owns, so
only their state (e.g. Adam's two moments) lives on that rank. ``step()`` updates the owned
parameters from their (already averaged, e.g. by DDP) gradients, then every parameter is
broadcast from its owner: with ``parameters_as_bucket_view`` each rank's parameters are views
into one flat array per rank and dtype, so that is one broadcast per rank, copying nothing.
``consolidate_state_dict(to)`` gathers every rank's local state on rank `to`, where
``state_dict()`` then returns the whole state in the wrapped optimizer's layout (global
parameter indices); ``load_state_dict`` takes such a state on every rank and keeps its shard.
"""
from __future__ import annotations

from itertools import chain

import numpy as np

from tensor import backend
from tensor._tensor import Tensor, _new
from tensor.optim.optimizer import Optimizer

from .. import api
from ..algorithms.join import Join, Joinable, JoinHook
from ..collectives import broadcast
from ..objects import broadcast_object_list

__all__ = ["ZeroRedundancyOptimizer"]


class _ZeROJoinHook(JoinHook):
    def __init__(self, zero):
        self.zero = zero

    def main_hook(self):
        """A joined rank still owns its shard: it steps it and broadcasts it, as the others."""
        self.zero.step()


def _to_host(obj):
    """A local state dict with Tensors as numpy arrays (what broadcast_object_list carries)."""
    if isinstance(obj, Tensor):
        return backend.to_numpy(obj.array)
    if isinstance(obj, dict):
        return {k: _to_host(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_host(v) for v in obj)
    return obj


def _to_tensors(obj):
    if isinstance(obj, np.ndarray):
        return _new(obj)
    if isinstance(obj, dict):
        return {k: _to_tensors(v) for k, v in obj.items()}
    return obj


class ZeroRedundancyOptimizer(Optimizer, Joinable):
    """Wrap `optimizer_class` so that its state is sharded over the ranks (see Note
    [ZeRO sharding]).

    Args:
        params: Tensors or param-group dicts, as for any optimizer (the same on every rank).
        optimizer_class: the local optimizer's class, e.g. tensor.optim.SGD or Adam.
        process_group: the group to shard over (default: the world).
        parameters_as_bucket_view: keep each rank's parameters in one flat array (per dtype
            and device) so the post-step broadcast is one call per rank.
        overlap_with_ddp: not supported (False only).
        **defaults: the local optimizer's arguments (lr, momentum, betas, ...).
    """

    def __init__(self, params, optimizer_class, process_group=None,
                 parameters_as_bucket_view: bool = False, overlap_with_ddp: bool = False,
                 **defaults):
        if overlap_with_ddp:
            raise ValueError("ZeroRedundancyOptimizer: overlap_with_ddp=True is not supported; "
                             "use the default (step after backward).")
        pg = api._group(process_group, "ZeroRedundancyOptimizer")
        if pg is None:
            raise ValueError("ZeroRedundancyOptimizer: this rank is not in process_group")
        Optimizer.__init__(self, params, defaults)
        Joinable.__init__(self)
        self.process_group = pg
        self.rank, self.world_size = pg.rank(), pg.size()
        self.optimizer_class = optimizer_class
        self.parameters_as_bucket_view = parameters_as_bucket_view
        self._all_state_dicts = None
        self._build()

    # -- partition ------------------------------------------------------------------------

    def _partition_parameters(self) -> list:
        """params_per_rank[rank] = that rank's param groups (one per global group)."""
        sizes = [0] * self.world_size
        per_rank = [[] for _ in range(self.world_size)]
        for group in self.param_groups:
            mine = [[] for _ in range(self.world_size)]
            for p in sorted(group["params"], key=lambda t: t.array.size, reverse=True):
                r = sizes.index(min(sizes))
                mine[r].append(p)
                sizes[r] += p.array.size
            for r in range(self.world_size):
                per_rank[r].append(dict(group, params=mine[r]))
        return per_rank

    def _build(self):
        self._per_rank = self._partition_parameters()
        self._param_to_rank = {id(p): r for r, groups in enumerate(self._per_rank)
                               for g in groups for p in g["params"]}
        self._all_params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        self._param_to_index = {id(p): i for i, p in enumerate(self._all_params)}
        local = [dict(g) for g in self._per_rank[self.rank]]
        self.optim = self.optimizer_class(local, **self.defaults)
        self._buckets = self._build_buckets() if self.parameters_as_bucket_view else None

    def _build_buckets(self) -> list:
        """(owner rank, flat array) per rank and dtype/device; the parameters become views."""
        buckets = []
        for r, groups in enumerate(self._per_rank):
            by_kind: dict = {}
            for p in chain.from_iterable(g["params"] for g in groups):
                by_kind.setdefault((p.array.dtype.str, str(backend.device_of(p.array))),
                                   []).append(p)
            for ps in by_kind.values():
                xp = backend.get_array_module(ps[0].array)
                flat = xp.empty(sum(p.array.size for p in ps), ps[0].array.dtype)
                off = 0
                for p in ps:
                    n = p.array.size
                    view = flat[off:off + n].reshape(p.array.shape)
                    view[...] = p.array
                    p.array = view
                    off += n
                buckets.append((self.process_group.ranks[r], flat))
        return buckets

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group; the partition (and the local optimizer) is rebuilt."""
        Optimizer.add_param_group(self, param_group)
        if hasattr(self, "optim"):
            state = self.optim.state
            self._build()
            for p in list(state):
                if self._param_to_rank.get(id(p)) == self.rank:
                    self.optim.state[p] = state[p]

    # -- step --------------------------------------------------------------------------------

    def step(self, closure=None, **kwargs):
        """Update this rank's shard, then broadcast every parameter from its owner."""
        Join.notify_join_context(self)
        self._sync_groups(self.param_groups, self.optim.param_groups)
        loss = self.optim.step(closure=closure, **kwargs) if kwargs else \
            self.optim.step(closure=closure)
        self._sync_params()
        self._sync_groups(self.optim.param_groups, self.param_groups)
        return loss

    def _sync_params(self):
        pg = self.process_group
        if self._buckets is not None:
            works = [broadcast(flat, src, group=pg, async_op=True) for src, flat in self._buckets]
        else:
            works = [broadcast(p, pg.ranks[self._param_to_rank[id(p)]], group=pg,
                               async_op=True) for p in self._all_params]
        for w in works:
            w.wait()

    @staticmethod
    def _sync_groups(src_groups, dst_groups):
        """Copy the hyper-parameters (lr, ...) group by group, leaving the params lists."""
        for s, d in zip(src_groups, dst_groups):
            for k, v in s.items():
                if k != "params":
                    d[k] = v

    # -- state dict --------------------------------------------------------------------------

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard of the state on global rank `to` (call on all ranks)."""
        self._sync_groups(self.param_groups, self.optim.param_groups)
        pg = self.process_group
        me = pg.ranks[self.rank]
        self._all_state_dicts = []
        for r, src in enumerate(pg.ranks):
            obj = [_to_host(self.optim.state_dict()) if r == self.rank else None]
            broadcast_object_list(obj, src=src, group=pg)
            if me == to:
                self._all_state_dicts.append(_to_tensors(obj[0]) if r != self.rank
                                             else self.optim.state_dict())
        if me != to:
            self._all_state_dicts = None

    def state_dict(self) -> dict:
        """The whole state, in `optimizer_class`'s layout (after consolidate_state_dict)."""
        if self._all_state_dicts is None:
            raise RuntimeError("Optimizer state has not been consolidated on this rank. Please "
                               "call `consolidate_state_dict(to=0)` on all ranks beforehand if "
                               "you meant to save the global state.")
        sd = Optimizer.state_dict(self)
        state = {}
        for r, local in enumerate(self._all_state_dicts):
            for lg, gg in zip(local["param_groups"], self._per_rank[r]):
                for li, p in zip(lg["params"], gg["params"]):
                    li = li if li in local["state"] else str(li)
                    if li in local["state"]:
                        state[self._param_to_index[id(p)]] = local["state"][li]
        sd["state"] = dict(sorted(state.items()))
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a whole state (from state_dict()) on every rank; each keeps its shard."""
        mine = {}
        for k, v in state_dict["state"].items():
            p = self._all_params[int(k)]
            if self._param_to_rank[id(p)] == self.rank:
                mine[k] = v
        Optimizer.load_state_dict(self, dict(state_dict, state=mine))
        self._sync_groups(self.param_groups, self.optim.param_groups)
        local_index = {id(p): i for i, p in enumerate(
            chain.from_iterable(g["params"] for g in self.optim.param_groups))}
        local = {"state": {local_index[id(p)]: v for p, v in self.state.items()},
                 "param_groups": [dict(g, params=[local_index[id(p)] for p in g["params"]])
                                  for g in self.optim.param_groups]}
        self.optim.load_state_dict(local)
        self.state.clear()   # the shard lives in self.optim.state only

    # -- Join ----------------------------------------------------------------------------------

    def join_hook(self, **kwargs) -> JoinHook:
        return _ZeROJoinHook(self)

    @property
    def join_device(self):
        return backend.device_of(self._all_params[0].array)

    @property
    def join_process_group(self):
        return self.process_group
