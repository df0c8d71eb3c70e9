"""What runtime.distributed registers into tensor.nn for SyncBatchNorm (Note [SyncBatchNorm
reduction] in tensor/nn/modules/sync_batchnorm.py)."""
from __future__ import annotations

from . import api
from .collectives import all_reduce


def all_reduce_sum(array, group) -> None:
    all_reduce(array, group=group)


def world_size(group) -> int:
    """The size of `group`, or 0 when no process group is initialised (then SyncBatchNorm
    is plain BatchNorm, as in PyTorch)."""
    if not api.is_initialized():
        if group is not None:
            raise RuntimeError("SyncBatchNorm: process_group was given but the default process "
                               "group is not initialised; call "
                               "runtime.distributed.init_process_group() first.")
        return 0
    return api.get_world_size(group)
