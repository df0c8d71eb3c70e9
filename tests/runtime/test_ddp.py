"""DistributedDataParallel in 2 and 3 real processes: the gradients of one big-batch process,
communication overlapping backward, no_sync, unused parameters, comm hooks, buffers, Join."""
import numpy as np
import pytest

from tests.helpers import spawn_ranks

N_PER_RANK = 8


def _data(world_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_PER_RANK * world_size, 20)).astype(np.float32)
    y = rng.integers(0, 5, size=N_PER_RANK * world_size)
    return x, y


def _mlp(seed=0):
    import tensor
    import tensor.nn as nn
    tensor.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 300), nn.Tanh(), nn.Linear(300, 1000), nn.Tanh(),
                         nn.Linear(1000, 5))


def _reference_grads(world_size):
    """One process, the whole (concatenated) batch: the gradients DDP must reproduce."""
    import tensor
    import tensor.nn.functional as F
    x, y = _data(world_size)
    model = _mlp()
    F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
    return [p.grad.numpy().copy() for p in model.parameters()]


def _digest(model):
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    return flat.tobytes()


def _one_step(rank, world_size, as_view):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    # a different seed per rank: construction must broadcast rank 0's weights
    model = dist.DistributedDataParallel(_mlp(seed=rank), gradient_as_bucket_view=as_view)
    x, y = _data(world_size)
    sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    opt = tensor.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(tensor.tensor(x[sl])), tensor.tensor(y[sl])).backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    n_buckets = len(model.reducer.buckets)
    shared = model.reducer.shared
    route = "collective" if shared is None else "shm" if shared.swaps else "3-barrier"
    opt.step()
    digests = [None] * world_size
    dist.all_gather_object(digests, _digest(model))
    dist.destroy_process_group()
    return grads, digests, n_buckets, route


@pytest.mark.parametrize("world_size,as_view,route", [
    (2, False, "shm"), (3, True, "shm"), (2, True, "collective"), (3, False, "3-barrier")])
def test_one_step_matches_one_process_on_the_whole_batch(world_size, as_view, route):
    # shm: buckets in shared memory (Note [DDP shared buckets]); collective: private buckets
    # and all_reduce; 3-barrier: the shared scheme for larger groups, forced at 3 ranks
    env = {"collective": {"ZGRAD_DDP_SHM": "0"},
           "3-barrier": {"ZGRAD_DDP_ONE_BARRIER_MAX_RANKS": "2"}}.get(route, {})
    results = spawn_ranks(_one_step, world_size, as_view, timeout_s=90, env=env)
    ref = _reference_grads(world_size)
    for grads, digests, n_buckets, used_route in results:
        assert used_route == route
        assert n_buckets >= 2   # the first bucket is small (1 MiB): several buckets here
        for g, r in zip(grads, ref):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
        assert len(set(digests)) == 1, "weights differ across ranks after one step"
    assert all(np.array_equal(a, b) for a, b in zip(results[0][0], results[-1][0]))


def _overlap(rank, world_size):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.algorithms.ddp_comm_hooks import default_hooks
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp())
    events = []
    # the first layer's weight gets its gradient last: its hook marks the end of backward's
    # compute; launches recorded before it overlapped the rest of backward
    model.module[0].weight.register_post_accumulate_grad_hook(
        lambda p: events.append("last_grad"))

    def hook(state, bucket):
        events.append(("launch", bucket.index()))
        return default_hooks.allreduce_hook(state, bucket)
    model.register_comm_hook(None, hook)
    x, y = _data(world_size)
    loss = F.cross_entropy(model(tensor.tensor(x[:N_PER_RANK])), tensor.tensor(y[:N_PER_RANK]))
    loss.backward()
    events.append("backward_returned")
    dist.destroy_process_group()
    return events


def test_first_bucket_is_launched_before_backward_ends():
    for events in spawn_ranks(_overlap, 2, timeout_s=60):
        launches = [i for i, e in enumerate(events) if isinstance(e, tuple)]
        assert events[launches[0]] == ("launch", 0)
        assert launches[0] < events.index("last_grad") < events.index("backward_returned")
        assert len(launches) >= 2


def _no_sync(rank, world_size):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp())
    x, y = _data(world_size)
    mine = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    half = N_PER_RANK // 2
    xs, ys = tensor.tensor(x[mine]), tensor.tensor(y[mine])
    with model.no_sync():
        F.cross_entropy(model(xs[:half]), ys[:half]).backward()
    local = [p.grad.numpy().copy() for p in model.parameters()]
    F.cross_entropy(model(xs[half:]), ys[half:]).backward()
    synced = [p.grad.numpy().copy() for p in model.parameters()]
    dist.destroy_process_group()
    return local, synced


def test_no_sync_accumulates_locally_then_syncs_on_the_next_step():
    import tensor
    import tensor.nn.functional as F
    (local0, synced0), (local1, synced1) = spawn_ranks(_no_sync, 2, timeout_s=60)
    x, y = _data(2)
    model = _mlp()
    half = N_PER_RANK // 2
    ref_local, ref_sum = None, None
    for r in range(2):
        for part in (slice(0, half), slice(half, N_PER_RANK)):
            sl = slice(r * N_PER_RANK + part.start, r * N_PER_RANK + part.stop)
            model.zero_grad()
            F.cross_entropy(model(tensor.tensor(x[sl])), tensor.tensor(y[sl])).backward()
            g = [p.grad.numpy().copy() for p in model.parameters()]
            if r == 0 and part.start == 0:
                ref_local = g
            ref_sum = g if ref_sum is None else [a + b for a, b in zip(ref_sum, g)]
    for a, b in zip(local0, ref_local):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)   # no communication yet
    assert not all(np.array_equal(a, b) for a, b in zip(local0, local1))
    for a, b, r in zip(synced0, synced1, ref_sum):
        assert np.array_equal(a, b)
        np.testing.assert_allclose(a, r / 2, rtol=1e-5, atol=1e-6)


class _Branchy:
    """A module whose second branch is used only on rank 1 (or on no rank)."""

    @staticmethod
    def make(use_b_on):
        import tensor.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.Linear(4, 3)
                self.b = nn.Linear(4, 3)
                self.c = nn.Linear(4, 3)   # never used on any rank

            def forward(self, x, rank):
                out = self.a(x)
                if rank in use_b_on:
                    out = out + self.b(x)
                return out
        return M()


def _unused(rank, world_size, kwargs):
    import tensor
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    tensor.manual_seed(0)
    model = dist.DistributedDataParallel(_Branchy.make({1}), **kwargs)
    x = tensor.ones(2, 4) * (rank + 1)
    model(x, rank).sum().backward()
    grads = {n: None if p.grad is None else p.grad.numpy().copy()
             for n, p in model.module.named_parameters()}
    err = None
    try:
        model.zero_grad()
        model(x, rank).sum().backward()
    except RuntimeError as e:
        err = str(e)
    again = {n: None if p.grad is None else p.grad.numpy().copy()
             for n, p in model.module.named_parameters()}
    dist.destroy_process_group()
    return grads, err, again


@pytest.mark.parametrize("kwargs", [{"find_unused_parameters": True}, {"static_graph": True},
                                    {"find_unused_parameters": True,
                                     "gradient_as_bucket_view": True}])
def test_unused_parameters_with_find_unused_parameters_or_static_graph(kwargs):
    (g0, e0, a0), (g1, e1, a1) = spawn_ranks(_unused, 2, kwargs, timeout_s=60)
    assert e0 is None and e1 is None
    for k in g0:   # the second step gives the same gradients
        assert (g0[k] is None and a0[k] is None) or np.array_equal(g0[k], a0[k])
    # a: used on both (inputs 1 and 2): mean of the two; b: used only on rank 1: half its
    # gradient; c: used nowhere: .grad stays None, as in PyTorch
    np.testing.assert_allclose(g0["a.weight"], np.full((3, 4), (2 + 4) / 2))
    np.testing.assert_allclose(g0["b.weight"], np.full((3, 4), 4 / 2))
    np.testing.assert_allclose(g0["b.bias"], np.full(3, 2 / 2))
    assert g0["c.weight"] is None and g1["c.weight"] is None
    for k in g0:
        if g0[k] is not None:
            assert np.array_equal(g0[k], g1[k])


def test_unused_parameter_without_the_flag_fails_at_the_next_forward_naming_it():
    (_, e0, _), (_, e1, _) = spawn_ranks(_unused, 2, {}, timeout_s=60)
    for e in (e0, e1):
        assert "Expected to have finished reduction in the prior iteration" in e
        assert "find_unused_parameters=True" in e
        assert "c.weight" in e


def _hooks(rank, world_size, name):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.algorithms.ddp_comm_hooks import default_hooks
    dist.init_process_group(timeout=60)
    out = []
    for hook in (None, getattr(default_hooks, name)):
        model = dist.DistributedDataParallel(_mlp())
        if hook is not None:
            model.register_comm_hook(None, hook)
        x, y = _data(world_size, seed=rank + 1)
        F.cross_entropy(model(tensor.tensor(x[:N_PER_RANK])),
                        tensor.tensor(y[:N_PER_RANK])).backward()
        out.append([p.grad.numpy().copy() for p in model.parameters()])
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("name,rtol", [("allreduce_hook", 1e-6), ("fp16_compress_hook", 2e-3),
                                       ("bf16_compress_hook", 2e-2)])
def test_comm_hooks_are_close_to_allreduce(name, rtol):
    (plain0, hooked0), (plain1, hooked1) = spawn_ranks(_hooks, 2, name, timeout_s=60)
    for p, h, h1 in zip(plain0, hooked0, hooked1):
        assert np.array_equal(h, h1)
        scale = np.abs(p).max()
        np.testing.assert_allclose(h, p, rtol=0, atol=rtol * scale)
        if name != "allreduce_hook":
            assert not np.array_equal(h, p)   # the compression did happen


def _buffers(rank, world_size):
    import tensor
    import tensor.nn as nn
    import runtime.distributed as dist

    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("count", tensor.zeros(2))

        def forward(self, x):
            self.count.array[...] += 1 + rank   # ranks change their buffers differently
            return self.lin(x)
    dist.init_process_group(timeout=60)
    m = WithBuffer()
    m.count.array[...] = 10 * (rank + 1)
    model = dist.DistributedDataParallel(m)
    at_init = m.count.numpy().copy()
    seen = []
    for _ in range(2):
        model(tensor.ones(1, 3)).sum().backward()
        seen.append(m.count.numpy().copy())
    with tensor.no_grad():   # the first forward after training syncs, the next do not
        for _ in range(2):
            model(tensor.ones(1, 3))
            seen.append(m.count.numpy().copy())
    dist.destroy_process_group()
    return at_init, seen


def test_buffers_are_broadcast_from_rank_0_at_construction_and_each_training_forward():
    (i0, s0), (i1, s1) = spawn_ranks(_buffers, 2, timeout_s=60)
    assert i0.tolist() == i1.tolist() == [10, 10]
    # each training forward starts from rank 0's buffer, then rank r adds 1 + r; under
    # no_grad the first forward still syncs (after a training one), the second does not
    assert [s.tolist()[0] for s in s0] == [11, 12, 13, 14]
    assert [s.tolist()[0] for s in s1] == [12, 13, 14, 16]


def _batches(rank, n_batches):
    rng = np.random.default_rng(100 + rank)
    return [(rng.normal(size=(4, 20)).astype(np.float32), rng.integers(0, 5, size=4))
            for _ in range(n_batches)]


def _join(rank, world_size, counts, divide_by_initial):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.algorithms import Join
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp(), find_unused_parameters=rank == -1)
    opt = tensor.optim.SGD(model.parameters(), lr=0.5)
    with Join([model], divide_by_initial_world_size=divide_by_initial):
        for x, y in _batches(rank, counts[rank]):
            opt.zero_grad()
            F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
            opt.step()
    # the context is over: plain DDP steps work again on every rank
    F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
    out = [p.detach().numpy().copy() for p in model.parameters()]
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("world_size,counts,divide_by_initial",
                         [(2, [2, 4], True), (3, [3, 1, 2], False)])
def test_uneven_inputs_with_join_end_without_a_hang_and_average_right(world_size, counts,
                                                                      divide_by_initial):
    import tensor
    import tensor.nn.functional as F
    results = spawn_ranks(_join, world_size, counts, divide_by_initial, timeout_s=90)
    # one process replays the steps: at step s the ranks with a batch s contribute; the sum
    # is divided by the world size, or by the number of those ranks
    model = _mlp()
    params = list(model.parameters())
    data = [_batches(r, counts[r]) for r in range(world_size)]
    for s in range(max(counts)):
        active = [r for r in range(world_size) if s < counts[r]]
        total = [np.zeros_like(p.detach().numpy()) for p in params]
        for r in active:
            model.zero_grad()
            x, y = data[r][s]
            F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
            total = [t + p.grad.numpy() for t, p in zip(total, params)]
        div = world_size if divide_by_initial else len(active)
        for p, t in zip(params, total):
            p.array -= 0.5 * t / div
    for r in range(world_size):
        for i, (got, want) in enumerate(zip(results[r], params)):
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)
            assert np.array_equal(got, results[0][i])


def _steps(rank, world_size, as_view, set_to_none, n_steps):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp(), gradient_as_bucket_view=as_view)
    opt = tensor.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(n_steps):
        x, y = _data(world_size, seed=step)
        sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        opt.zero_grad(set_to_none=set_to_none)
        F.cross_entropy(model(tensor.tensor(x[sl])), tensor.tensor(y[sl])).backward()
        opt.step()
    out = [p.detach().numpy().copy() for p in model.parameters()]
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("as_view,set_to_none", [(True, False), (False, True)])
def test_several_steps_match_one_process(as_view, set_to_none):
    import tensor
    import tensor.nn.functional as F
    results = spawn_ranks(_steps, 2, as_view, set_to_none, 3, timeout_s=90)
    model = _mlp()
    opt = tensor.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        x, y = _data(2, seed=step)
        opt.zero_grad()
        F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
        opt.step()
    for got0, got1, want in zip(results[0], results[1], model.parameters()):
        assert np.array_equal(got0, got1)
        np.testing.assert_allclose(got0, want.detach().numpy(), rtol=1e-4, atol=1e-6)


def _join_throw(rank, world_size):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp())
    msg = None
    try:
        with model.join(throw_on_early_termination=True):
            for x, y in _batches(rank, 1 + rank):
                F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
    except RuntimeError as e:
        msg = str(e)
    dist.destroy_process_group()
    return msg


def test_join_throw_on_early_termination_raises_on_every_rank():
    m0, m1 = spawn_ranks(_join_throw, 2, timeout_s=60)
    assert m0 == "Rank 0 exhausted all inputs."
    assert m1 == "Detected at least one rank that exhausted inputs. Throwing across all ranks."


def _join_buffers(rank, world_size):
    import tensor
    import tensor.nn as nn
    import runtime.distributed as dist

    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("count", tensor.zeros(1))

        def forward(self, x):
            self.count.array[...] += 1
            return self.lin(x)
    dist.init_process_group(timeout=60)
    m = WithBuffer()
    model = dist.DistributedDataParallel(m)
    with model.join():
        for _ in range(1 + 2 * rank):
            model.zero_grad()
            model(tensor.ones(2, 3)).sum().backward()
    out = (m.count.numpy().copy(), m.lin.weight.grad.numpy().copy())
    dist.destroy_process_group()
    return out


def test_join_shadows_the_buffer_broadcasts_and_ends_with_the_last_joiners_buffers():
    (c0, g0), (c1, g1) = spawn_ranks(_join_buffers, 2, timeout_s=60)
    # rank 1 ran 3 forwards, each from the synced count (+1): the last joiner's value wins
    assert c0.tolist() == c1.tolist() == [3.0]
    np.testing.assert_allclose(g1, np.full((3, 3), 2 / 2))   # rank 0 joined: zeros, / 2
