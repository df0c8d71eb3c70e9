"""Samplers, BatchSampler, DistributedSampler and random_split (no processes needed)."""
import collections
import math

import numpy as np
import pytest

import tensor
from runtime.data import (BatchSampler, DistributedSampler, RandomSampler, SequentialSampler,
                          Subset, SubsetRandomSampler, TensorDataset, WeightedRandomSampler,
                          random_split)


def _ds(n):
    return list(range(n))


def test_sequential_sampler_order_and_len():
    s = SequentialSampler(_ds(5))
    assert list(s) == [0, 1, 2, 3, 4] and len(s) == 5


def test_random_sampler_is_permutation_and_generator_reproducible():
    g1, g2 = tensor.Generator().manual_seed(7), tensor.Generator().manual_seed(7)
    a, b = RandomSampler(_ds(50), generator=g1), RandomSampler(_ds(50), generator=g2)
    e1, e2 = list(a), list(a)
    assert sorted(e1) == list(range(50)) and e1 != list(range(50))
    assert e1 != e2, "a new epoch must reshuffle"
    assert list(b) == e1 and list(b) == e2


def test_random_sampler_default_generator_follows_manual_seed():
    tensor.manual_seed(3)
    a = list(RandomSampler(_ds(30)))
    tensor.manual_seed(3)
    assert list(RandomSampler(_ds(30))) == a


def test_random_sampler_replacement_and_num_samples():
    g = tensor.Generator().manual_seed(0)
    s = RandomSampler(_ds(4), replacement=True, num_samples=1000, generator=g)
    out = list(s)
    assert len(out) == len(s) == 1000 and set(out) == {0, 1, 2, 3}
    assert max(collections.Counter(out).values()) > 1
    # without replacement and more samples than items: whole permutations back to back
    out = list(RandomSampler(_ds(4), num_samples=10, generator=g))
    assert len(out) == 10 and sorted(out[:4]) == [0, 1, 2, 3] and sorted(out[4:8]) == [0, 1, 2, 3]


def test_random_sampler_bad_arguments():
    with pytest.raises(ValueError, match="num_samples should be a positive integer"):
        RandomSampler(_ds(4), num_samples=0)
    with pytest.raises(TypeError, match="replacement should be a boolean"):
        RandomSampler(_ds(4), replacement=1)


def test_random_sampler_state_dict_replays_epoch_and_continues():
    s = RandomSampler(_ds(20), generator=tensor.Generator().manual_seed(1))
    list(s)
    e2 = list(s)
    sd = s.state_dict()
    e3 = list(s)
    s2 = RandomSampler(_ds(20), generator=tensor.Generator().manual_seed(99))
    s2.load_state_dict(sd)
    assert list(s2) == e2, "load_state_dict replays the epoch recorded"
    assert list(s2) == e3, "and the generator continues as in the original run"


def test_subset_random_sampler():
    idx = [10, 20, 30, 40]
    out = list(SubsetRandomSampler(idx, generator=tensor.Generator().manual_seed(0)))
    assert sorted(out) == idx


def test_weighted_random_sampler_follows_weights():
    w = [0.0, 1.0, 3.0]
    out = list(WeightedRandomSampler(w, 4000, generator=tensor.Generator().manual_seed(0)))
    c = collections.Counter(out)
    assert c[0] == 0 and 2.5 < c[2] / c[1] < 3.5
    out = list(WeightedRandomSampler([1, 1, 5, 0], 3, replacement=False,
                                     generator=tensor.Generator().manual_seed(0)))
    assert sorted(out) == [0, 1, 2]
    with pytest.raises(ValueError, match="without replacement"):
        WeightedRandomSampler([1, 0, 0], 2, replacement=False)
    with pytest.raises(ValueError, match="non-negative"):
        WeightedRandomSampler([1, -1], 2)
    with pytest.raises(ValueError, match="1d"):
        WeightedRandomSampler(np.ones((2, 2)), 2)


def test_batch_sampler_len_and_drop_last():
    assert list(BatchSampler(SequentialSampler(_ds(7)), 3, False)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(BatchSampler(SequentialSampler(_ds(7)), 3, True)) == [[0, 1, 2], [3, 4, 5]]
    assert len(BatchSampler(SequentialSampler(_ds(7)), 3, False)) == 3
    assert len(BatchSampler(SequentialSampler(_ds(7)), 3, True)) == 2
    with pytest.raises(ValueError, match="batch_size should be a positive integer"):
        BatchSampler(SequentialSampler(_ds(7)), 0, False)


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 2, False), (10, 3, False), (11, 3, False),
                                                   (10, 3, True), (2, 3, False), (1, 3, False)])
def test_distributed_sampler_padding_as_pytorch(n, replicas, drop_last):
    # PyTorch's arithmetic, written out: ceil(n / r) per rank, padded with the list's head
    if drop_last and n % replicas:
        per_rank = math.ceil((n - replicas) / replicas)
    else:
        per_rank = math.ceil(n / replicas)
    full = list(range(n))
    if drop_last:
        full = full[:per_rank * replicas]
    else:
        pad = per_rank * replicas - n
        full = full + (full * math.ceil(pad / n))[:pad]
    for rank in range(replicas):
        s = DistributedSampler(_ds(n), num_replicas=replicas, rank=rank, shuffle=False,
                               drop_last=drop_last)
        assert len(s) == per_rank
        assert list(s) == full[rank::replicas]


def test_distributed_sampler_matches_torch_without_shuffle():
    torch_dist = pytest.importorskip("torch.utils.data.distributed")
    for n, r, dl in [(10, 3, False), (11, 3, True), (2, 3, False), (17, 2, False)]:
        for rank in range(r):
            ours = DistributedSampler(_ds(n), num_replicas=r, rank=rank, shuffle=False,
                                      drop_last=dl)
            ref = torch_dist.DistributedSampler(_ds(n), num_replicas=r, rank=rank,
                                                shuffle=False, drop_last=dl)
            assert list(ours) == list(ref) and len(ours) == len(ref)


@pytest.mark.parametrize("replicas", [2, 3])
def test_distributed_sampler_each_index_once_per_epoch(replicas):
    n = 30   # divisible by 2 and 3: no padding, so exactly once
    seen = {}
    for epoch in (0, 1):
        parts = []
        for rank in range(replicas):
            s = DistributedSampler(_ds(n), num_replicas=replicas, rank=rank, seed=5)
            s.set_epoch(epoch)
            parts.append(list(s))
        flat = [i for p in parts for i in p]
        assert sorted(flat) == list(range(n))
        seen[epoch] = parts
    assert seen[0] != seen[1], "set_epoch reshuffles"


def test_distributed_sampler_padding_repeats_only_head_when_shuffled():
    n, r = 10, 3
    parts = [list(DistributedSampler(_ds(n), num_replicas=r, rank=k, seed=1)) for k in range(r)]
    flat = [i for p in parts for i in p]
    assert len(flat) == 12 and set(flat) == set(range(n))
    assert sum(c - 1 for c in collections.Counter(flat).values()) == 2


def test_distributed_sampler_state_dict_and_errors():
    s = DistributedSampler(_ds(10), num_replicas=2, rank=1, seed=3)
    s.set_epoch(4)
    order = list(s)
    t = DistributedSampler(_ds(10), num_replicas=2, rank=1, seed=0)
    t.load_state_dict(s.state_dict())
    assert t.epoch == 4 and list(t) == order
    with pytest.raises(ValueError, match=r"invalid rank 2, rank should be in the interval \[0, 1\]"):
        DistributedSampler(_ds(10), num_replicas=2, rank=2)


def test_distributed_sampler_requires_group_or_explicit_args():
    import runtime.distributed as dist
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="num_replicas was not given"):
        DistributedSampler(_ds(10))


def test_random_split_counts_and_fractions():
    ds = TensorDataset(np.arange(10))
    a, b = random_split(ds, [7, 3], generator=tensor.Generator().manual_seed(0))
    assert isinstance(a, Subset) and len(a) == 7 and len(b) == 3
    assert sorted(list(a.indices) + list(b.indices)) == list(range(10))
    parts = random_split(ds, [0.5, 0.3, 0.2], generator=tensor.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [5, 3, 2]
    parts = random_split(list(range(11)), [1 / 3, 1 / 3, 1 / 3])
    assert [len(p) for p in parts] == [4, 4, 3]   # remainder dealt round-robin, as PyTorch
    with pytest.raises(ValueError, match="does not equal the length"):
        random_split(ds, [5, 4])
