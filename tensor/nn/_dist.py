"""The cross-process sum that SyncBatchNorm needs, injected by ``runtime.distributed``.

tensor knows nothing of processes (ARCHITECTURE.md); runtime.distributed registers its
functions here when it is imported, as c10d registers its backends with torch.
"""
from __future__ import annotations

_all_reduce = None
_world_size = None


def register(all_reduce_sum, world_size) -> None:
    """all_reduce_sum(array, group) sums `array` over `group` in place, on every rank;
    world_size(group) is the group's size, or 0 when no process group is initialised."""
    global _all_reduce, _world_size
    _all_reduce, _world_size = all_reduce_sum, world_size


def world_size(group) -> int:
    """The size of `group` (None: the world); 0 without runtime.distributed or a group."""
    if _world_size is None:
        if group is not None:
            raise RuntimeError("SyncBatchNorm: a process_group was given but no distributed "
                               "backend is registered; import runtime.distributed and call "
                               "init_process_group() first.")
        return 0
    return _world_size(group)


def all_reduce_sum(array, group) -> None:
    """Sum `array` over the ranks of `group`, in place."""
    if _all_reduce is None:
        raise RuntimeError("SyncBatchNorm: no distributed backend is registered; import "
                           "runtime.distributed and call init_process_group() first.")
    _all_reduce(array, group)
