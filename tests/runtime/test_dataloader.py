"""DataLoader with real worker processes: order, shared-memory hand-over, seeding, failures,
early exit, persistence, IterableDataset sharding, resume. Every test checks /dev/shm and that no
worker process is left behind."""
import gc
import os
import random
import signal
import time

import numpy as np
import pytest

import tensor
from runtime.data import (BatchSampler, DataLoader, DataLoaderTimeoutError, Dataset,
                          DistributedSampler, IterableDataset, SequentialSampler, TensorDataset,
                          get_worker_info, shard)
from tests.helpers import assert_no_new_shm, requires_cupy, shm_listing, spawn_ranks


@pytest.fixture(autouse=True)
def no_leaks():
    """No /dev/shm segment and no loader worker outlives a test."""
    before = shm_listing()
    yield
    gc.collect()
    deadline = time.monotonic() + 5
    while _worker_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _worker_pids(), f"loader workers still alive: {_worker_pids()}"
    assert_no_new_shm(before)


def _worker_pids():
    import multiprocessing
    return [p.pid for p in multiprocessing.active_children()
            if p.name.startswith("DataLoader worker")]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def _mapping_of(arr):
    """The /proc/self/maps path of the mapping that holds arr's first byte."""
    addr = arr.ctypes.data
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line.rstrip()
    return ""


class Squares(Dataset):
    """Item i: (array filled with i, i*i); optionally slow for some indices."""

    def __init__(self, n=40, shape=(3, 5), slow=None, delay_s=0.0):
        self.n, self.shape, self.slow, self.delay_s = n, shape, slow or set(), delay_s

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.slow:
            time.sleep(self.delay_s)
        return np.full(self.shape, i, np.float32), i * i


def _ids(batches):
    return [int(v) for x, _ in batches for v in x.numpy()[:, 0, 0]]


# -- basics and order ------------------------------------------------------------------------------
def test_single_process_batches_and_drop_last():
    out = list(DataLoader(Squares(10), batch_size=4))
    assert [len(y) for _, y in out] == [4, 4, 2] and _ids(out) == list(range(10))
    assert out[0][1].tolist() == [0, 1, 4, 9] and out[0][0].shape == (4, 3, 5)
    assert len(list(DataLoader(Squares(10), batch_size=4, drop_last=True))) == 2
    assert len(DataLoader(Squares(10), batch_size=4)) == 3


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_workers_yield_sampler_order_even_when_arrival_is_not(num_workers):
    # item 0 is slow, so batch 0 arrives after later batches: they must wait for it
    ds = Squares(40, slow={0, 13}, delay_s=0.3)
    out = list(DataLoader(ds, batch_size=4, num_workers=num_workers))
    assert _ids(out) == list(range(40))
    assert [y.tolist() for _, y in out] == [[i * i for i in range(k, k + 4)]
                                            for k in range(0, 40, 4)]


def test_in_order_false_yields_everything_once_and_does_not_wait_for_slow_batch():
    ds = Squares(24, slow={0}, delay_s=1.0)
    out = list(DataLoader(ds, batch_size=4, num_workers=2, in_order=False))
    ids = _ids(out)
    assert sorted(ids) == list(range(24))
    assert ids[0] != 0, "the slow first batch should not hold the others back"


def test_batches_are_tensors_on_shared_memory_and_stay_valid_while_held():
    loader = DataLoader(Squares(200, shape=(64,)), batch_size=8, num_workers=2)
    held = list(loader)   # hold every batch: no block may be overwritten under them
    x, y = held[3]
    assert isinstance(x, tensor.Tensor) and isinstance(y, tensor.Tensor)
    assert "/dev/shm/zgrad_" in _mapping_of(x.array), "the batch lives in the shared block"
    assert _ids([(h[0][:, :, None], None) for h in held]) == list(range(200))
    assert [int(v) for _, y in held for v in y.numpy()] == [i * i for i in range(200)]


def test_ring_reuses_blocks_when_batches_are_dropped():
    it = iter(DataLoader(Squares(400, shape=(32,)), batch_size=4, num_workers=2,
                         prefetch_factor=2))
    n = 0
    for x, y in it:
        n += 1
    assert n == 100
    # each worker needs at most prefetch + 3 blocks (in flight, held by the loop, being freed)
    created = it._w.receiver.n_attached
    assert created <= 2 * (2 + 3), created


class Batch:
    """A custom batch type (module level: a collate_fn result must be picklable)."""

    def __init__(self, samples):
        self.x = np.stack([s[0] for s in samples])
        self.ids = [s[1] for s in samples]
        self.t = tensor.tensor([float(s[1]) for s in samples])


def test_custom_collate_fn_objects_and_numpy_leaves():
    out = list(DataLoader(Squares(12), batch_size=4, num_workers=2, collate_fn=Batch))
    assert isinstance(out[1], Batch) and isinstance(out[1].x, np.ndarray)
    assert out[1].x[:, 0, 0].tolist() == [4, 5, 6, 7] and out[1].ids == [16, 25, 36, 49]
    assert isinstance(out[2].t, tensor.Tensor) and out[2].t.tolist() == [64., 81., 100., 121.]


def test_batch_size_none_and_samplers_with_workers():
    out = list(DataLoader(Squares(5), batch_size=None, num_workers=2))
    assert [int(y) for _, y in out] == [0, 1, 4, 9, 16] and out[0][0].shape == (3, 5)
    bs = BatchSampler(SequentialSampler(range(9)), 3, drop_last=False)
    out = list(DataLoader(Squares(9), batch_sampler=bs, num_workers=2))
    assert _ids(out) == list(range(9))
    out = list(DataLoader(Squares(9), sampler=[8, 1, 5], batch_size=2, num_workers=1))
    assert _ids(out) == [8, 1, 5]


def test_shuffle_with_generator_is_reproducible_across_worker_counts():
    def run(w):
        g = tensor.Generator().manual_seed(11)
        return _ids(DataLoader(Squares(30), batch_size=4, shuffle=True, generator=g,
                               num_workers=w))
    a = run(0)
    assert sorted(a) == list(range(30)) and a != list(range(30))
    assert run(2) == a


def test_spawn_context():
    # (a dataset holding arrays would be moved into shm arenas by pickling, which then live
    # as long as shm's cache decides; this dataset pickles as a few ints)
    out = list(DataLoader(Squares(10), batch_size=3, num_workers=2,
                          multiprocessing_context="spawn"))
    assert _ids(out) == list(range(10))


def test_spawn_with_unpicklable_dataset_says_what_to_do():
    class Local(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return i

    with pytest.raises(RuntimeError, match="must be picklable"):
        list(DataLoader(Local(), num_workers=1, multiprocessing_context="spawn"))


def test_argument_errors():
    ds = Squares(4)
    with pytest.raises(ValueError, match="num_workers option should be a non-negative"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="prefetch_factor option could only be specified"):
        DataLoader(ds, prefetch_factor=2)
    with pytest.raises(ValueError, match="persistent_workers option needs num_workers > 0"):
        DataLoader(ds, persistent_workers=True)
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_sampler=[[0]], batch_size=2)
    with pytest.raises(ValueError, match="mutually exclusive with drop_last"):
        DataLoader(ds, batch_size=None, drop_last=True)
    with pytest.raises(ValueError, match="timeout option should be non-negative"):
        DataLoader(ds, timeout=-1)
    with pytest.raises(ValueError, match="expected unspecified shuffle"):
        DataLoader(Stream(4), shuffle=True)
    assert DataLoader(ds).prefetch_factor is None
    assert DataLoader(ds, num_workers=1).prefetch_factor == 2


def test_pin_memory_without_cuda_warns_and_passes_batches_through():
    if tensor.backend.cuda_is_available():
        pytest.skip("a CUDA device is present; the pinned path is exercised on GPU machines")
    import runtime.data._pin as pin
    pin._warned = False
    with pytest.warns(UserWarning, match="no CUDA device"):
        out = list(DataLoader(Squares(6), batch_size=3, pin_memory=True, num_workers=1))
    assert _ids(out) == list(range(6))


@requires_cupy
def test_pin_memory_gives_page_locked_batches_on_cuda():
    out = list(DataLoader(Squares(6), batch_size=3, pin_memory=True, num_workers=1))
    assert _ids(out) == list(range(6))
    cupy = tensor.backend.cupy
    attrs = cupy.cuda.runtime.pointerGetAttributes(out[0][0].array.ctypes.data)
    assert attrs.type == cupy.cuda.runtime.memoryTypeHost, "the batch is in page-locked memory"
    x = tensor.backend.to_device(out[1][0].array, tensor.device("cuda"))
    assert float(x.sum()) == 15 * (3 + 4 + 5)


def test_forked_workers_leave_the_parents_cuda_generator_alone(monkeypatch):
    """A worker forked after the parent drew random numbers on a GPU (the eval loader's
    workers start after training ran dropout there) must not reseed the inherited CuPy
    generator: that is a kernel launch, and CUDA is unusable in a forked child."""
    import tensor.random as trandom

    def cuda_call(rng, seed):
        raise RuntimeError("a CUDA kernel launched in a forked loader worker")
    inherited = object()
    monkeypatch.setattr(trandom, "_reinit_in_place", cuda_call)
    monkeypatch.setattr(trandom.default_generator, "_cupy_rng", inherited)
    out = list(DataLoader(Squares(6), batch_size=3, num_workers=2,
                          multiprocessing_context="fork"))
    assert _ids(out) == list(range(6))
    assert trandom.default_generator._cupy_rng is inherited, "the parent's stays as it was"


# -- prefetch bound ----------------------------------------------------------------------------------
class Counting(Dataset):
    def __init__(self, n, counter):
        self.n, self.counter = n, counter

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        with self.counter.get_lock():
            self.counter.value += 1
        return i


def test_at_most_prefetch_factor_times_workers_batches_in_flight():
    import multiprocessing
    counter = multiprocessing.get_context("fork").Value("i", 0)
    loader = DataLoader(Counting(200, counter), batch_size=2, num_workers=2, prefetch_factor=3)
    it = iter(loader)
    next(it)
    # they run ahead: wait (however slow the machine) until they did, then until they stop
    deadline = time.monotonic() + 30
    while counter.value < 2 * 3 * 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter.value >= 2 * 3 * 2, f"the workers fetched only {counter.value} items"
    last = -1
    while counter.value != last and time.monotonic() < deadline:
        last = counter.value
        time.sleep(0.3)
    # 6 requests up front, plus the one released by the batch just yielded
    assert counter.value <= (2 * 3 + 1) * 2, counter.value
    del it


# -- seeding ----------------------------------------------------------------------------------------
class RandomDraws(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        info = get_worker_info()
        return (np.random.randint(0, 2 ** 31), random.randrange(2 ** 31),
                float(tensor.rand(1).item()), info.id, info.seed, info.num_workers)


def _draws(loader):
    return [tuple(map(lambda t: t.tolist(), b)) for b in loader]


def test_worker_seeding_reproducible_and_distinct_per_worker_and_epoch():
    def loader(seed):
        return DataLoader(RandomDraws(), batch_size=2, num_workers=2,
                          generator=tensor.Generator().manual_seed(seed))
    a = loader(5)
    e1, e2 = _draws(a), _draws(a)
    assert _draws(loader(5)) == e1, "same generator seed: same augmentation"
    assert e1 != e2, "a new epoch draws a new base seed"
    w0, w1 = e1[0], e1[1]   # batch 0 from worker 0, batch 1 from worker 1
    assert w0[3] == [0, 0] and w1[3] == [1, 1] and w0[5] == [2, 2]
    assert w1[4][0] == w0[4][0] + 1, "seed = base_seed + worker_id"
    for k in range(3):
        assert w0[k] != w1[k], "workers draw different numbers"
    assert get_worker_info() is None


def test_worker_init_fn_runs_in_each_worker():
    class WhoInit(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return os.environ.get("ZGRAD_TEST_INIT", "-")

    def init(worker_id):
        os.environ["ZGRAD_TEST_INIT"] = f"w{worker_id}"

    out = list(DataLoader(WhoInit(), batch_size=1, num_workers=2, worker_init_fn=init))
    assert out == [["w0"], ["w1"], ["w0"], ["w1"]]


# -- failures --------------------------------------------------------------------------------------
class Faulty(Dataset):
    def __init__(self, n=20, bad=7, mode="raise"):
        self.n, self.bad, self.mode = n, bad, mode

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.bad:
            if self.mode == "raise":
                _explode(i)
            elif self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.mode == "hang":
                time.sleep(60)
        return i


def _explode(i):
    raise ValueError(f"bad sample {i}")


def test_worker_exception_is_reraised_with_worker_index_and_traceback():
    loader = DataLoader(Faulty(), batch_size=4, num_workers=2)
    got = []
    with pytest.raises(ValueError) as e:
        for b in loader:
            got.append(b.tolist())
    msg = str(e.value)
    assert "Caught ValueError in DataLoader worker process 1" in msg   # batch 1 -> worker 1
    assert "while fetching index 7" in msg and "bad sample 7" in msg and "_explode" in msg
    assert got == [[0, 1, 2, 3]]


def test_exception_in_collate_fn_and_worker_init_fn():
    def bad_collate(batch):
        raise KeyError("no such key")
    with pytest.raises(KeyError, match="in collate_fn for indices"):
        list(DataLoader(Squares(8), batch_size=4, num_workers=1, collate_fn=bad_collate))

    def bad_init(worker_id):
        raise OSError(f"init failed in {worker_id}")
    with pytest.raises(OSError, match="in worker_init_fn"):
        list(DataLoader(Squares(8), batch_size=4, num_workers=2, worker_init_fn=bad_init))


def test_worker_killed_by_sigkill_is_reported_with_pid_and_signal():
    loader = DataLoader(Faulty(bad=9, mode="kill"), batch_size=2, num_workers=2)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker 0 \(pid \d+\) was killed by signal "
                                           r"SIGKILL \(9\)") as e:
        list(loader)
    assert time.monotonic() - t0 < 10
    assert "batch 4" in str(e.value) and "indices [8, 9]" in str(e.value)


def test_timeout_raises_with_what_it_waited_for():
    loader = DataLoader(Faulty(bad=5, mode="hang"), batch_size=2, num_workers=2, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(DataLoaderTimeoutError) as e:
        list(loader)
    assert time.monotonic() - t0 < 15
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, TimeoutError)
    assert "timed out after" in msg and "batch 2" in msg and "indices [4, 5]" in msg
    assert "from worker 0 (pid" in msg


# -- lifetime ----------------------------------------------------------------------------------------
def test_leaving_a_loop_early_stops_workers_and_frees_blocks():
    loader = DataLoader(Squares(400), batch_size=2, num_workers=2)
    it = iter(loader)
    pids = [p.pid for p in it._w.procs]
    for i, _ in enumerate(it):
        if i == 2:
            break
    del it, _
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert not any(_alive(p) for p in pids)
    # the fixture checks that no segment is left in /dev/shm


def test_map_style_drop_last_with_workers():
    out = list(DataLoader(Squares(10), batch_size=4, drop_last=True, num_workers=2))
    assert _ids(out) == list(range(8))


def test_persistent_workers_reused_across_epochs_and_stopped_with_loader():
    class Pid(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return os.getpid()

    loader = DataLoader(Pid(), batch_size=3, num_workers=2, persistent_workers=True)
    e1 = [b.tolist() for b in loader]
    it = iter(loader)
    next(it)            # abandon an epoch halfway ...
    e2 = [b.tolist() for b in loader]   # ... the next epoch still starts from the beginning
    assert len(e2) == 2 and sorted({p for b in e1 for p in b}) == sorted({p for b in e2 for p in b})
    pids = {p for b in e1 for p in b}
    del loader, it
    gc.collect()
    time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_persistent_workers_loader_as_a_temporary_yields_every_batch():
    """`for b in DataLoader(..., persistent_workers=True)`: the loader dies at once, the loop
    still holds the iterator, which must keep its workers (PyTorch yields all 10 batches)."""
    got = [(x.numpy().copy(), y.tolist()) for x, y in
           DataLoader(Squares(20), batch_size=2, num_workers=2, persistent_workers=True)]
    assert len(got) == 10 and [int(v) for x, _ in got for v in x[:, 0, 0]] == list(range(20))
    gc.collect()
    deadline = time.monotonic() + 5
    while _worker_pids() and time.monotonic() < deadline:   # the iterator stopped its workers
        time.sleep(0.02)
    assert not _worker_pids()


# -- IterableDataset --------------------------------------------------------------------------------
class Stream(IterableDataset):
    def __init__(self, n, sharded=True):
        self.n, self.sharded = n, sharded

    def __iter__(self):
        it = iter(range(self.n))
        return shard(it) if self.sharded else it

    def __len__(self):
        return self.n


def test_iterable_dataset_sharded_by_worker():
    out = [v for b in DataLoader(Stream(23), batch_size=4, num_workers=3) for v in b.tolist()]
    assert sorted(out) == list(range(23))
    out = [v for b in DataLoader(Stream(23), batch_size=4, num_workers=2, drop_last=True)
           for v in b.tolist()]
    assert len(out) == 20 and len(set(out)) == 20
    dup = [v for b in DataLoader(Stream(6, sharded=False), batch_size=None, num_workers=2)
           for v in [int(b)]]
    assert sorted(dup) == sorted(list(range(6)) * 2), "unsharded: each worker yields all"


def _rank_stream(rank, world_size):
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    try:
        ds = Stream(50)
        vals = [v for b in DataLoader(ds, batch_size=4, num_workers=2) for v in b.tolist()]
        sampler = DistributedSampler(list(range(10)))   # num_replicas/rank from the group
        return vals, list(sampler), sampler.num_replicas
    finally:
        dist.destroy_process_group()


def test_iterable_dataset_sharded_by_rank_and_worker_and_sampler_defaults():
    res = spawn_ranks(_rank_stream, 2, timeout_s=60)
    assert sorted(res[0][0] + res[1][0]) == list(range(50))
    assert res[0][2] == 2 and sorted(res[0][1] + res[1][1]) == list(range(10))


# -- resume ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_sees_every_sample_once(num_workers):
    def make(seed):
        return DataLoader(Squares(50), batch_size=4, shuffle=True, num_workers=num_workers,
                          generator=tensor.Generator().manual_seed(seed))
    loader = make(1)
    first = _ids(loader)         # epoch 0
    seen, sd = [], None
    for k, b in enumerate(loader):   # epoch 1, interrupted after 5 batches
        seen += _ids([b])
        if k == 4:
            sd = loader.state_dict()
            break
    assert sd["epoch"] == 1 and sd["batches_served"] == 5 and sd["in_progress"]
    resumed = make(999)          # a fresh process would build it with any seed
    resumed.load_state_dict(sd)
    rest = _ids(resumed)
    assert sorted(seen + rest) == list(range(50)) and len(rest) == 50 - 20
    assert seen + rest != first
    after = resumed.state_dict()
    assert after["epoch"] == 2 and not after["in_progress"]
    third = make(5)
    third.load_state_dict(after)   # a state saved between epochs
    # epoch 2 continues the original run's sequence
    e2 = _ids(loader)
    assert _ids(resumed) == e2 and _ids(third) == e2


def test_resume_with_distributed_sampler_two_ranks():
    n = 24
    for rank in range(2):
        s = DistributedSampler(list(range(n)), num_replicas=2, rank=rank, seed=3)
        loader = DataLoader(Squares(n), batch_size=3, sampler=s, num_workers=2)
        s.set_epoch(2)
        full = _ids(loader)
        it = iter(loader)
        part = _ids([next(it), next(it)])
        sd = loader.state_dict()
        del it
        s2 = DistributedSampler(list(range(n)), num_replicas=2, rank=rank, seed=3)
        loader2 = DataLoader(Squares(n), batch_size=3, sampler=s2, num_workers=2)
        loader2.load_state_dict(sd)
        assert s2.epoch == 2 and part + _ids(loader2) == full


def test_resume_iterable_dataset_fast_forwards():
    loader = DataLoader(Stream(20), batch_size=3, num_workers=2)
    it = iter(loader)
    seen = [v for _ in range(3) for v in next(it).tolist()]
    sd = loader.state_dict()
    del it
    loader2 = DataLoader(Stream(20), batch_size=3, num_workers=2)
    loader2.load_state_dict(sd)
    rest = [v for b in loader2 for v in b.tolist()]
    assert sorted(seen + rest) == list(range(20))
    with pytest.raises(ValueError, match="batch_size=3 but this loader has batch_size=4"):
        DataLoader(Stream(20), batch_size=4).load_state_dict(sd)


@pytest.mark.parametrize("replicas", [2, 3])
def test_distributed_sampler_through_loaders_covers_each_index_once(replicas):
    n = 36 if replicas == 3 else 30    # divisible: every index exactly once
    seen = []
    for rank in range(replicas):
        s = DistributedSampler(list(range(n)), num_replicas=replicas, rank=rank, seed=7)
        s.set_epoch(1)
        seen += _ids(DataLoader(Squares(n), batch_size=4, sampler=s, num_workers=1))
    assert sorted(seen) == list(range(n))
    # not divisible: PyTorch pads with the head of the shuffled list, so each rank has 4
    counts = [len(_ids(DataLoader(Squares(10), batch_size=3, num_workers=1,
                                  sampler=DistributedSampler(list(range(10)), replicas, r))))
              for r in range(replicas)]
    assert counts == [5] * 2 if replicas == 2 else counts == [4] * 3


@pytest.mark.parametrize("resume_workers", [0, 2])
def test_resume_after_out_of_order_delivery_skips_exactly_what_was_served(resume_workers):
    ds = Squares(40, slow={0}, delay_s=0.5)   # batch 0 arrives last
    loader = DataLoader(ds, batch_size=2, num_workers=2, in_order=False)
    it = iter(loader)
    seen = _ids([next(it) for _ in range(5)])
    sd = loader.state_dict()
    del it
    assert 0 not in seen and sd["batches_served"] == 0 and len(sd["served_ahead"]) == 5
    resumed = DataLoader(Squares(40), batch_size=2, num_workers=resume_workers)
    resumed.load_state_dict(sd)
    rest = _ids(resumed)
    assert sorted(seen + rest) == list(range(40))


class Nested(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"x": tensor.full((2,), float(i)), "meta": (f"id{i}", np.int32(i)), "w": 0.5 * i}


def test_tensor_dataset_and_nested_samples_through_workers():
    ds = TensorDataset(tensor.arange(12).reshape(6, 2), np.arange(6) * 10)
    out = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert out[0][0].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert out[1][1].tolist() == [40, 50]
    b = next(iter(DataLoader(Nested(), batch_size=3, num_workers=1)))
    assert b["x"].shape == (3, 2) and b["x"][:, 0].tolist() == [0.0, 1.0, 2.0]
    assert b["meta"][0] == ["id0", "id1", "id2"] and b["meta"][1].dtype == np.int32
    assert b["w"].dtype == np.float64 and b["w"].tolist() == [0.0, 0.5, 1.0]


class _Pids(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return np.full((256,), os.getpid(), np.int64)


def test_worker_killed_while_main_loop_is_slow_is_reported_as_a_dead_worker():
    """Results a worker sent before SIGKILL name a block that died with it: the report must be
    the worker's pid and signal, not shm's 'keep the sender's array alive' hint."""
    it = iter(DataLoader(_Pids(), batch_size=1, num_workers=2, prefetch_factor=2))
    pid0 = int(next(it)[0, 0])
    time.sleep(0.5)                     # the main loop is slow; worker 0's next batches wait
    os.kill(pid0, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid0) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)                     # the shm manager reclaims the dead worker's blocks
    with pytest.raises(RuntimeError, match=rf"worker 0 \(pid {pid0}\) was killed by signal "
                                           "SIGKILL") as e:
        for _ in it:
            pass
    assert "keep the sender" not in str(e.value)


class _Ragged(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.zeros(3 + i % 2, np.float32)


def test_worker_error_hints_name_the_real_cause(monkeypatch):
    """Samples of different shapes and a full /dev/shm are not 'must be picklable' errors."""
    with pytest.raises(RuntimeError, match="different shapes") as e:
        list(DataLoader(_Ragged(), batch_size=2, num_workers=1))
    assert "picklable" not in str(e.value)
    import shm

    def full(*a, **k):
        raise shm.OutOfSharedMemoryError("shm: /dev/shm has 0 bytes free (test)")
    monkeypatch.setattr(shm.Segment, "create", staticmethod(full))   # inherited by fork
    with pytest.raises(Exception, match="OutOfSharedMemoryError") as e:
        list(DataLoader(Squares(4), batch_size=2, num_workers=1))
    assert "picklable" not in str(e.value)


class _Missing(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {}["absent"]


def test_worker_key_error_prints_its_traceback_readably():
    with pytest.raises(KeyError) as e:
        list(DataLoader(_Missing(), batch_size=2, num_workers=1))
    text = str(e.value)
    assert "Original Traceback" in text and "\\n" not in text and "\n" in text
