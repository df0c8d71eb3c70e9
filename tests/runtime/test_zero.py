"""ZeroRedundancyOptimizer in 2 and 3 real processes: it matches the plain optimizer on the
whole batch, its state is sharded, and consolidate_state_dict/state_dict/load_state_dict round
trip in the wrapped optimizer's layout."""
import numpy as np
import pytest

from tests.helpers import spawn_ranks

STEPS = 3


def _mlp():
    import tensor
    import tensor.nn as nn
    tensor.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 3))


def _batch(step, rank, world_size):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(4 * world_size, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=4 * world_size)
    return x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]


def _opt(name):
    import tensor
    if name == "sgd":
        return tensor.optim.SGD, {"lr": 0.1, "momentum": 0.9}
    return tensor.optim.Adam, {"lr": 0.01}


def _zero(rank, world_size, name, as_view):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.optim import ZeroRedundancyOptimizer
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp())
    cls, kw = _opt(name)
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls,
                                  parameters_as_bucket_view=as_view, **kw)
    for step in range(STEPS):
        x, y = _batch(step, rank, world_size)
        opt.zero_grad()
        F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
        opt.step()
    params = [p.detach().numpy().copy() for p in model.parameters()]
    owned = sorted(opt._param_to_index[id(p)] for p in opt.optim.state)
    opt.consolidate_state_dict(to=0)
    sd = opt.state_dict() if rank == 0 else None
    with_error = None
    if rank == 1:
        try:
            opt.state_dict()
        except RuntimeError as e:
            with_error = str(e)
    # load the consolidated state everywhere (sent as plain arrays) and take one more step
    obj = [None if sd is None else {
        "state": {k: {n: v.numpy() for n, v in s.items()} for k, s in sd["state"].items()},
        "param_groups": sd["param_groups"]}]
    dist.broadcast_object_list(obj, src=0)
    fresh = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls,
                                    parameters_as_bucket_view=as_view, **kw)
    fresh.load_state_dict({"state": {k: {n: tensor.tensor(v) for n, v in s.items()}
                                     for k, s in obj[0]["state"].items()},
                           "param_groups": obj[0]["param_groups"]})
    x, y = _batch(STEPS, rank, world_size)
    fresh.zero_grad()
    F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
    fresh.step()
    after = [p.detach().numpy().copy() for p in model.parameters()]
    dist.destroy_process_group()
    return params, owned, obj[0], with_error, after


def _plain(name, world_size, steps):
    import tensor
    import tensor.nn.functional as F
    model = _mlp()
    cls, kw = _opt(name)
    opt = cls(model.parameters(), **kw)
    snap = None
    for step in range(steps):
        xs, ys = zip(*[_batch(step, r, world_size) for r in range(world_size)])
        opt.zero_grad()
        F.cross_entropy(model(tensor.tensor(np.concatenate(xs))),
                        tensor.tensor(np.concatenate(ys))).backward()
        opt.step()
        if step == STEPS - 1:
            sd = opt.state_dict()   # live tensors: copy them for the snapshot
            sd["state"] = {k: {n: v.numpy().copy() for n, v in st.items()}
                           for k, st in sd["state"].items()}
            snap = ([p.detach().numpy().copy() for p in model.parameters()], sd)
    return snap, [p.detach().numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize("name,world_size,as_view", [("sgd", 2, False), ("adam", 2, True),
                                                     ("adam", 3, False)])
def test_zero_matches_the_plain_optimizer_and_round_trips_its_state(name, world_size, as_view):
    results = spawn_ranks(_zero, world_size, name, as_view, timeout_s=90)
    (ref_params, ref_sd), ref_after = _plain(name, world_size, STEPS + 1)
    owned = [r[1] for r in results]
    n_params = len(ref_params)
    assert sorted(sum(owned, [])) == list(range(n_params))     # every state exactly once
    assert all(0 < len(o) < n_params for o in owned)            # and really sharded
    for params, _, sd, err, after in results:
        for a, b in zip(params, ref_params):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(params, results[0][0]):
            assert np.array_equal(a, b)
        for a, b in zip(after, ref_after):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    sd = results[0][2]
    assert sorted(sd["state"]) == sorted(ref_sd["state"])
    assert sd["param_groups"][0]["params"] == ref_sd["param_groups"][0]["params"]
    for k, st in ref_sd["state"].items():
        for n, v in st.items():
            np.testing.assert_allclose(sd["state"][k][n], v, rtol=1e-4, atol=1e-6)
    assert "consolidate_state_dict(to=0)" in results[1][3]


def _zero_join(rank, world_size, counts):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.algorithms import Join
    from runtime.distributed.optim import ZeroRedundancyOptimizer
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(_mlp())
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tensor.optim.SGD, lr=0.1)
    with Join([model, opt]):
        for step in range(counts[rank]):
            x, y = _batch(step, rank, world_size)
            opt.zero_grad()
            F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
            opt.step()
    out = [p.detach().numpy().copy() for p in model.parameters()]
    dist.destroy_process_group()
    return out


def test_zero_with_ddp_under_join_for_uneven_inputs():
    import tensor
    import tensor.nn.functional as F
    counts = [1, 3]
    results = spawn_ranks(_zero_join, 2, counts, timeout_s=90)
    model = _mlp()
    params = list(model.parameters())
    for step in range(max(counts)):
        total = [np.zeros(p.shape, np.float32) for p in params]
        for r in range(2):
            if step < counts[r]:
                x, y = _batch(step, r, 2)
                model.zero_grad()
                F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
                total = [t + p.grad.numpy() for t, p in zip(total, params)]
        for p, t in zip(params, total):
            p.array -= 0.1 * t / 2   # divided by the initial world size
    for got0, got1, want in zip(results[0], results[1], params):
        assert np.array_equal(got0, got1)
        np.testing.assert_allclose(got0, want.detach().numpy(), rtol=1e-5, atol=1e-6)
