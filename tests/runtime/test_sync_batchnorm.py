"""SyncBatchNorm: batch statistics over every rank, in 2 real processes, against BatchNorm on
the whole batch in one process; convert_sync_batchnorm; the single-process fallback."""
import numpy as np
import pytest

from tests.helpers import spawn_ranks

N_PER_RANK = 6


def _net(seed=0):
    import tensor
    import tensor.nn as nn
    tensor.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))


def _data(world_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_PER_RANK * world_size, 5)).astype(np.float32) * 3 + 1
    y = rng.integers(0, 3, size=N_PER_RANK * world_size)
    return x, y


def _sync_step(rank, world_size):
    import tensor
    import tensor.nn as nn
    import tensor.nn.functional as F
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    model = dist.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(_net()))
    x, y = _data(world_size)
    sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    out = model(tensor.tensor(x[sl]))
    F.cross_entropy(out, tensor.tensor(y[sl])).backward()
    bn = model.module[1]
    res = (out.detach().numpy().copy(), [p.grad.numpy().copy() for p in model.parameters()],
           bn.running_mean.numpy().copy(), bn.running_var.numpy().copy(),
           type(bn).__name__)
    dist.destroy_process_group()
    return res


def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch():
    import tensor
    import tensor.nn.functional as F
    results = spawn_ranks(_sync_step, 2, timeout_s=60)
    x, y = _data(2)
    ref = _net()
    out = ref(tensor.tensor(x))
    F.cross_entropy(out, tensor.tensor(y)).backward()
    bn = ref[1]
    for rank, (o, grads, rm, rv, name) in enumerate(results):
        assert name == "SyncBatchNorm"
        sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        np.testing.assert_allclose(o, out.detach().numpy()[sl], rtol=1e-5, atol=1e-6)
        for g, p in zip(grads, ref.parameters()):
            np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_convert_sync_batchnorm_shares_parameters_and_buffers():
    import tensor.nn as nn
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3),
                        nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12, affine=False)))
    net.eval()
    bn2d, bn1d = net[1], net[2][1]
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(conv[1], nn.SyncBatchNorm) and isinstance(conv[2][1], nn.SyncBatchNorm)
    assert conv[1].weight is bn2d.weight and conv[1].running_var is bn2d.running_var
    assert conv[2][1].weight is None and conv[2][1].running_mean is bn1d.running_mean
    assert not conv[1].training
    assert list(conv.state_dict()) == list(net.state_dict())


def test_sync_batchnorm_without_a_process_group_is_batchnorm():
    import tensor
    import tensor.nn as nn
    x = tensor.tensor(np.random.default_rng(1).normal(size=(8, 4, 3)).astype(np.float32))
    tensor.manual_seed(0)
    a, b = nn.BatchNorm1d(4), nn.SyncBatchNorm(4)
    np.testing.assert_allclose(a(x).detach().numpy(), b(x).detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.running_var.numpy(), b.running_var.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="expected at least 2D input"):
        b(tensor.ones(4))
    with pytest.raises(RuntimeError, match="process_group was given"):
        nn.SyncBatchNorm(4, process_group=object())(x)


def _conv_forward(rank, world_size):
    import tensor
    import tensor.nn as nn
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    tensor.manual_seed(0)
    bn = nn.SyncBatchNorm(3, momentum=None)
    x = np.random.default_rng(5).normal(size=(4 + 5 + 6, 3, 4, 4)).astype(np.float32) * 2 - 1
    lo = [0, 4, 9, 15][rank]
    hi = [0, 4, 9, 15][rank + 1]
    out = [bn(tensor.tensor(x[lo:hi])).detach().numpy() for _ in range(2)]
    res = out[-1], bn.running_mean.numpy().copy(), bn.running_var.numpy().copy()
    dist.destroy_process_group()
    return res


def test_sync_batchnorm2d_with_uneven_batches_over_3_ranks():
    import tensor
    import tensor.nn as nn
    results = spawn_ranks(_conv_forward, 3, timeout_s=60)
    x = np.random.default_rng(5).normal(size=(15, 3, 4, 4)).astype(np.float32) * 2 - 1
    bn = nn.BatchNorm2d(3, momentum=None)
    out = [bn(tensor.tensor(x)).detach().numpy() for _ in range(2)][-1]
    bounds = [0, 4, 9, 15]
    for r, (o, rm, rv) in enumerate(results):
        np.testing.assert_allclose(o, out[bounds[r]:bounds[r + 1]], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rm, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rv, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
