"""DistributedSampler, as ``torch.utils.data.distributed``: each rank reads its own share.

Padding is PyTorch's: without `drop_last` the (shuffled) index list is extended with its own
head until it divides evenly, so every rank gets ``ceil(n / num_replicas)`` indices; with
`drop_last` the tail is cut so every rank gets ``ceil((n - num_replicas) / num_replicas)``.
Rank r takes ``indices[r::num_replicas]``.
"""
from __future__ import annotations

import math

from ._random import rng_from_seed
from .sampler import Sampler


def _process_group_default(what: str) -> int:
    # Imported lazily: runtime.distributed is optional for single-process data loading.
    try:
        import runtime.distributed as dist
        initialized = dist.is_initialized()
    except (ImportError, AttributeError):
        dist, initialized = None, False
    if not initialized:
        raise RuntimeError(f"DistributedSampler: {what} was not given and the default process "
                           "group is not initialised; call runtime.distributed."
                           f"init_process_group() first or pass {what}= explicitly")
    return dist.get_world_size() if what == "num_replicas" else dist.get_rank()


class DistributedSampler(Sampler):
    """Restricts a map-style dataset to this rank's share, reshuffled per epoch.

    Args:
        dataset: the dataset (only its length is used).
        num_replicas: number of ranks (default: the process group's world size).
        rank: this rank (default: the process group's rank).
        shuffle: shuffle with seed ``seed + epoch`` (same order on every rank).
        seed: the base seed; must be the same on every rank.
        drop_last: cut the tail instead of padding with repeated indices.

    Call ``set_epoch(epoch)`` before each epoch, or every epoch has the same order.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None:
            num_replicas = _process_group_default("num_replicas")
        if rank is None:
            rank = _process_group_default("rank")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas should be an int >= 1, got "
                             f"{num_replicas!r}")
        if rank >= num_replicas or rank < 0:
            raise ValueError(f"DistributedSampler: invalid rank {rank}, rank should be in the "
                             f"interval [0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = drop_last
        n = len(dataset)
        if drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.shuffle = shuffle
        self.seed = seed

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            indices = rng_from_seed(self.seed + self.epoch).permutation(n).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            padding_size = self.total_size - len(indices)
            if padding_size <= len(indices):
                indices += indices[:padding_size]
            else:
                indices += (indices * math.ceil(padding_size / len(indices)))[:padding_size]
        else:
            indices = indices[:self.total_size]
        assert len(indices) == self.total_size
        return iter(indices[self.rank:self.total_size:self.num_replicas])

    def __len__(self):
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; with `shuffle` it selects the order (seed + epoch)."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """The epoch and seed: together they fix this epoch's order on every rank."""
        return {"epoch": self.epoch, "seed": self.seed, "num_replicas": self.num_replicas,
                "rank": self.rank}

    def load_state_dict(self, state: dict) -> None:
        """Restore the epoch and seed (the DataLoader restores the position in the epoch)."""
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError("DistributedSampler.load_state_dict: expected a dict from "
                             f"state_dict() with 'epoch' and 'seed', got {state!r:.80}")
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
