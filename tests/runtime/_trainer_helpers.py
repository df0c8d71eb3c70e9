"""Helpers of the checkpoint and trainer tests: a data set for kill-and-resume runs (named
in configs as ``tests.runtime._trainer_helpers:GatedDigits``) and spawn_ranks with a leak
check limited to the process group's own segments."""
from __future__ import annotations

import os
import time

from runtime.registry import build_datasets
from tests.helpers import shm_listing, spawn_ranks


def spawn(fn, world_size, *args, timeout_s=60):
    """spawn_ranks, checking leaks of the process group's segments (tag "dist") only: other
    suites on this machine create and drop their own segments meanwhile."""
    before = {n for n in shm_listing() if "dist" in n}
    out = spawn_ranks(fn, world_size, *args, timeout_s=timeout_s, check_shm=False)
    deadline = time.monotonic() + 5
    while {n for n in shm_listing() if "dist" in n} - before:
        assert time.monotonic() < deadline, f"leaked: {sorted(shm_listing() - before)}"
        time.sleep(0.05)
    return out


class GatedDigits:
    """The registry's digits split; with $ZGRAD_TEST_GATE set to a path, training samples
    block once that path exists, so a test can SIGKILL the run right after a checkpoint."""

    def __init__(self, train: bool = True):
        self.ds = build_datasets("digits", {})[0 if train else 1]
        self.classes = self.ds.dataset.classes
        self.gate = os.environ.get("ZGRAD_TEST_GATE") if train else None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        while self.gate and os.path.exists(self.gate):
            time.sleep(0.05)   # the test kills us here
        return self.ds[i]


class FlatNet:
    """A user's own model for ``model.name: tests.runtime._trainer_helpers:FlatNet``."""

    def __new__(cls, in_features: int, num_classes: int, width: int = 32):
        from tensor import nn
        return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.Tanh(),
                             nn.Linear(width, num_classes))
