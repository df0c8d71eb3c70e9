"""The foundation working together: data-parallel training of an MLP on digits in 2 real ranks.

Each rank reads its shard through DistributedSampler + a multi-process DataLoader, and its
gradients are averaged by async all_reduce launched from post-accumulate-grad hooks *during*
backward — the mechanism DistributedDataParallel will build on. The ranks must stay bitwise
identical and the loss must fall.
"""
import numpy as np

from tests.helpers import spawn_ranks


def _train(rank, world_size):
    import tensor
    import tensor.nn as nn
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.data import DataLoader, DistributedSampler, TensorDataset
    from sklearn.datasets import load_digits

    dist.init_process_group(timeout=60)
    digits = load_digits()
    x = tensor.tensor(digits.data[:1024] / 16.0, dtype=tensor.float32)
    y = tensor.tensor(digits.target[:1024])
    ds = TensorDataset(x, y)
    sampler = DistributedSampler(ds, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_size=64, sampler=sampler, num_workers=1, timeout=60)

    tensor.manual_seed(0)  # same initial weights on every rank
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = tensor.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    pending = []

    def launch(p):  # runs inside backward as soon as p.grad is final
        pending.append(dist.all_reduce(p.grad, op=dist.ReduceOp.AVG, async_op=True))
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(launch)

    losses, launched_during_backward = [], 0
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            launched_during_backward += len(pending)
            for w in pending:
                w.wait()
            pending.clear()
            opt.step()
            losses.append(loss.item())
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    gathered = [None] * world_size
    dist.all_gather_object(gathered, [float(v) for v in flat[:50]] + [float(flat.sum())])
    dist.destroy_process_group()
    n_params = len(list(model.parameters()))
    return losses, gathered, launched_during_backward, n_params


def test_data_parallel_training_stays_in_sync_and_learns():
    results = spawn_ranks(_train, 2, timeout_s=120)
    (l0, g0, launched, n_params), (l1, g1, _, _) = results
    assert g0[0] == g0[1], "ranks' parameters diverged"
    steps = len(l0)
    assert steps == len(l1) == 3 * 8  # 1024 samples / 2 ranks / batch 64, 3 epochs
    assert launched == steps * n_params  # every gradient's all_reduce started inside backward
    assert np.mean(l0[-4:]) < 0.5 * np.mean(l0[:4])


def _inplace_check(rank, world_size):
    import pytest
    import tensor
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    x = tensor.ones(3, requires_grad=True)
    h = x * 2
    y = (h * h).sum()          # mul saved h
    dist.all_reduce(h.detach())  # writes h's memory (detach shares the version counter)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    dist.destroy_process_group()
    return True


def test_collectives_bump_the_version_counter_of_what_they_write():
    assert spawn_ranks(_inplace_check, 2, timeout_s=60) == [True, True]
