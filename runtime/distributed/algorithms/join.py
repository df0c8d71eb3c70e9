"""Join: training with uneven inputs, as torch.distributed.algorithms.Join.

Note [Join]
~~~~~~~~~~~
Inside ``with Join([model, optim]):`` every step of a rank still training starts with
``Join.notify_join_context`` (DDP's forward calls it): an all_reduce of 1, the count of active
ranks. A rank that runs out of inputs leaves the ``with`` body and enters ``__exit__``'s loop:
it all-reduces 0 (matching the others' 1), and while the sum is non-zero some rank is still
training, so it runs every joinable's ``main_hook``, which issues the same collectives as one
step of that joinable, with zeros (DDP: the buffer broadcast and one all-reduce per bucket).
When the sum is 0 every rank has joined; each joinable's ``post_hook(is_last_joiner)`` then
runs (DDP: every rank takes the model of the last rank to join). So no rank waits on a
collective that another rank will never issue.
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np

from .. import api
from ..collectives import all_reduce

__all__ = ["JoinHook", "Joinable", "Join"]


class JoinHook:
    """What a joined rank runs for a joinable: main_hook per shadowed step, post_hook once."""

    def main_hook(self) -> None:
        """Shadow one step of the ranks still training (their collectives, with zeros)."""

    def post_hook(self, is_last_joiner: bool) -> None:
        """Called once every rank has joined."""


class _JoinConfig(NamedTuple):
    enable: bool
    throw_on_early_termination: bool
    is_first_joinable: bool

    @staticmethod
    def construct_disabled_join_config():
        return _JoinConfig(enable=False, throw_on_early_termination=False,
                           is_first_joinable=False)


class Joinable(ABC):
    """Something with per-step collectives that Join can shadow (DDP, ZeroRedundancyOptimizer)."""

    @abstractmethod
    def __init__(self):
        super().__init__()
        self._join_config = _JoinConfig.construct_disabled_join_config()

    @abstractmethod
    def join_hook(self, **kwargs) -> JoinHook:
        """The hook a joined rank runs for this joinable."""

    @property
    @abstractmethod
    def join_device(self):
        """The device of the Join all-reduces."""

    @property
    @abstractmethod
    def join_process_group(self):
        """The group of the Join all-reduces."""


class Join:
    """Context manager for uneven inputs (see Note [Join]).

    Args:
        joinables: the Joinables of the loop, e.g. [ddp_model, zero_optimizer]; each must call
            ``Join.notify_join_context(self)`` once per step (DDP's forward does).
        enable: False makes the context a no-op.
        throw_on_early_termination: instead of shadowing, raise on every rank as soon as one
            rank runs out of inputs.
        **kwargs: passed to each joinable's join_hook (e.g. divide_by_initial_world_size).
    """

    def __init__(self, joinables: list, enable: bool = True,
                 throw_on_early_termination: bool = False, **kwargs):
        if len(joinables) == 0:
            raise ValueError("The join context manager requires at least one joinable")
        self._joinables = list(joinables)
        self._join_hooks = [j.join_hook(**kwargs) for j in self._joinables]
        self._enable = enable
        self._throw_on_early_termination = throw_on_early_termination
        self._set_joinable_configs()
        self._extract_dist_info()

    def _set_joinable_configs(self, enable=None):
        enable = self._enable if enable is None else enable
        for i, j in enumerate(self._joinables):
            j._join_config = _JoinConfig(enable, self._throw_on_early_termination, i == 0)

    def _extract_dist_info(self):
        groups = {id(j.join_process_group) for j in self._joinables}
        if len(groups) > 1:
            raise ValueError("Using join context manager with multiple process groups")
        self._process_group = self._joinables[0].join_process_group
        self._device = self._joinables[0].join_device
        self._rank = api.get_rank(self._process_group)

    def __enter__(self):
        return self

    def __exit__(self, type, value, traceback):
        if not self._enable or type is not None:
            self._set_joinable_configs(enable=False)
            return   # an exception goes up unchanged; this rank does not shadow
        try:
            is_last_joiner = True
            i = 0
            while True:
                if i == 1000:
                    warnings.warn(f"Detected uneven input skew of greater than 1000. This "
                                  f"means that rank {self._rank} has at least 1000 fewer "
                                  "inputs than other currently-active ranks. This level of "
                                  "skew could lead to performance degradation during "
                                  "training.", stacklevel=2)
                if self._get_num_nonjoined_procs() == 0:
                    break
                if self._throw_on_early_termination:
                    self._notify_procs_to_terminate()
                is_last_joiner = False
                for hook in self._join_hooks:
                    hook.main_hook()
                i += 1
            for hook in self._join_hooks:
                hook.post_hook(is_last_joiner)
        finally:
            self._set_joinable_configs(enable=False)

    def _get_num_nonjoined_procs(self) -> int:
        x = np.zeros(1, np.float32)
        all_reduce(x, group=self._process_group)
        return int(x[0])

    def _notify_procs_to_terminate(self):
        x = np.ones(1, np.float32)
        all_reduce(x, group=self._process_group)
        raise RuntimeError(f"Rank {self._rank} exhausted all inputs.")

    @staticmethod
    def notify_join_context(joinable: Joinable):
        """Called by a joinable once per step before its collectives: the all-reduce that
        joined ranks match. Returns (Work, count array) of the count of active ranks for the
        first joinable, else None."""
        cfg = joinable._join_config
        if not cfg.is_first_joinable or not cfg.enable:
            return None
        group = joinable.join_process_group
        ones = np.ones(1, np.float32)
        work = all_reduce(ones, group=group, async_op=True)
        if cfg.throw_on_early_termination:
            zeros = np.zeros(1, np.float32)
            all_reduce(zeros, group=group)
            if zeros[0] > 0:
                raise RuntimeError("Detected at least one rank that exhausted inputs. Throwing "
                                   "across all ranks.")
        return work, ones
