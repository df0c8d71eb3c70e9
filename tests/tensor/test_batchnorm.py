"""BatchNorm1d/2d/3d: running statistics over several steps, train/eval, momentum=None, affine
and track_running_stats variants against PyTorch through state_dicts; gradients against
central differences in float64; the statistics hook a SyncBatchNorm overrides."""
import numpy as np
import pytest

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from tensor.autograd import gradcheck

torch = pytest.importorskip("torch")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape) * 2 + 0.5


def _load_into_torch(zm, tm):
    tm.load_state_dict({k: torch.tensor(v.numpy()) for k, v in zm.state_dict().items()})


def _check_state(zm, tm):
    ts = tm.state_dict()
    assert list(zm.state_dict()) == list(ts)
    for k, v in zm.state_dict().items():
        np.testing.assert_allclose(v.numpy(), ts[k].numpy(), rtol=1e-12, atol=1e-12, err_msg=k)


def _torch_pair(cls, n, kw):
    """The zgrad and torch layers `cls`(n, **kw) in float64, with the same non-trivial state."""
    zm = getattr(nn, cls)(n, **kw).double()
    tm = getattr(torch.nn, cls)(n, **kw).double()
    assert repr(zm) == repr(tm)
    if zm.affine:  # non-trivial affine parameters
        with tensor.no_grad():
            zm.weight.copy_(tensor.tensor(_rand(n, seed=10)))
            if zm.bias is not None:
                zm.bias.copy_(tensor.tensor(_rand(n, seed=11)))
    _load_into_torch(zm, tm)
    return zm, tm


def _check_train_step(zm, tm, shape, step):
    """One forward and backward of both layers on the same batch: outputs, input and parameter
    gradients and state (running statistics) agree."""
    x = _rand(*shape, seed=step)
    xz, xt = tensor.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yz, yt = zm(xz), tm(xt)
    np.testing.assert_allclose(yz.detach().numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    gy = _rand(*shape, seed=100 + step)
    yz.backward(tensor.tensor(gy))
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(xz.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-10)
    if zm.affine:
        np.testing.assert_allclose(zm.weight.grad.numpy(), tm.weight.grad.numpy(), rtol=1e-9)
        if zm.bias is not None:
            np.testing.assert_allclose(zm.bias.grad.numpy(), tm.bias.grad.numpy(), rtol=1e-9)
    _check_state(zm, tm)


def _check_eval(zm, tm, shape):
    """In eval mode both layers give the same output."""
    zm.eval()
    tm.eval()
    x = _rand(*shape, seed=50)
    np.testing.assert_allclose(zm(tensor.tensor(x)).detach().numpy(),
                               tm(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls,shape,kw", [
    ("BatchNorm1d", (8, 5), {}),
    ("BatchNorm1d", (4, 5, 3), dict(momentum=0.3)),
    ("BatchNorm2d", (4, 5, 3, 2), {}),
    ("BatchNorm2d", (4, 5, 3, 2), dict(momentum=None)),
    ("BatchNorm2d", (4, 5, 3, 2), dict(affine=False, eps=1e-3)),
    ("BatchNorm2d", (4, 5, 3, 2), dict(track_running_stats=False)),
    ("BatchNorm2d", (4, 5, 3, 2), dict(bias=False)),
    ("BatchNorm3d", (2, 5, 3, 2, 2), {}),
])
def test_batchnorm_steps_and_eval_match_torch(cls, shape, kw):
    zm, tm = _torch_pair(cls, 5, kw)
    for step in range(4):  # running statistics over several training steps
        _check_train_step(zm, tm, shape, step)
    _check_eval(zm, tm, shape)
    _check_state(zm, tm)  # eval does not touch the running statistics


def test_running_stats_values_and_momentum_none():
    m = nn.BatchNorm1d(3, momentum=None).double()
    xs = [_rand(6, 3, seed=s) for s in range(3)]
    for x in xs:
        m(tensor.tensor(x))
    # momentum=None: the cumulative average of the batch means and unbiased variances
    np.testing.assert_allclose(m.running_mean.numpy(), np.mean([x.mean(0) for x in xs], 0))
    np.testing.assert_allclose(m.running_var.numpy(), np.mean([x.var(0, ddof=1) for x in xs], 0))
    assert int(m.num_batches_tracked.item()) == 3
    m2 = nn.BatchNorm1d(3, momentum=0.25).double()
    m2(tensor.tensor(xs[0]))
    np.testing.assert_allclose(m2.running_mean.numpy(), 0.25 * xs[0].mean(0))
    np.testing.assert_allclose(m2.running_var.numpy(), 0.75 + 0.25 * xs[0].var(0, ddof=1))
    m2.reset_running_stats()
    assert m2.running_mean.numpy().tolist() == [0, 0, 0]
    assert int(m2.num_batches_tracked.item()) == 0


def test_state_dict_from_torch_loads():
    tm = torch.nn.BatchNorm2d(4)
    tm.train()
    for s in range(3):
        tm(torch.tensor(_rand(3, 4, 2, 2, seed=s), dtype=torch.float32))
    tm.eval()
    zm = nn.BatchNorm2d(4)
    zm.load_state_dict({k: tensor.tensor(v.numpy()) for k, v in tm.state_dict().items()})
    zm.eval()
    x = _rand(3, 4, 2, 2, seed=9).astype(np.float32)
    np.testing.assert_allclose(zm(tensor.tensor(x)).detach().numpy(),
                               tm(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert zm.num_batches_tracked.dtype == np.int64 and int(zm.num_batches_tracked.item()) == 3


def test_no_running_stats_buffers():
    m = nn.BatchNorm2d(3, track_running_stats=False, affine=False)
    assert list(m.state_dict()) == []
    m.eval()  # without running statistics eval mode still uses the batch's
    y = m(tensor.tensor(_rand(4, 3, 2, 2).astype(np.float32))).numpy()
    np.testing.assert_allclose(y.mean((0, 2, 3)), 0, atol=1e-5)


@pytest.mark.parametrize("shape,training", [((5, 3), True), ((3, 2, 3, 2), True),
                                            ((3, 2, 3, 2), False)])
def test_batch_norm_gradcheck(shape, training):
    rm, rv = tensor.tensor(_rand(shape[1], seed=3)), tensor.tensor(np.abs(_rand(shape[1])) + 0.5)
    x = tensor.tensor(_rand(*shape), requires_grad=True)
    w = tensor.tensor(_rand(shape[1], seed=1), requires_grad=True)
    b = tensor.tensor(_rand(shape[1], seed=2), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, 0.0, 1e-3),
                     (x, w, b))


def test_functional_batch_norm_matches_torch():
    x = _rand(4, 3, 5)
    rz, vz = tensor.zeros(3, dtype="float64"), tensor.ones(3, dtype="float64")
    rt, vt = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    yz = F.batch_norm(tensor.tensor(x), rz, vz, training=True, momentum=0.2)
    yt = torch.nn.functional.batch_norm(torch.tensor(x), rt, vt, training=True, momentum=0.2)
    np.testing.assert_allclose(yz.numpy(), yt.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rz.numpy(), rt.numpy(), rtol=1e-12)
    np.testing.assert_allclose(vz.numpy(), vt.numpy(), rtol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(tensor.randn(1, 3))
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(3)(tensor.randn(2, 3))
    with pytest.raises(ValueError, match="expected 3 channels"):
        nn.BatchNorm1d(3)(tensor.randn(4, 5))


class _PooledBatchNorm1d(nn.BatchNorm1d):
    """A stand-in for SyncBatchNorm: statistics over this batch *and* a fixed other batch,
    as if another rank held it (the override point is only _batch_stats)."""

    def __init__(self, n, other):
        super().__init__(n)
        self.other = other

    def _batch_stats(self, input, dims):
        both = tensor.cat([input, self.other], 0)
        return both.mean(dims), both.var(dims, correction=0), both.shape[0]


def test_statistics_hook_for_sync_subclass():
    x, other = _rand(4, 3), _rand(6, 3, seed=1)
    m = _PooledBatchNorm1d(3, tensor.tensor(other)).double()
    ref = nn.BatchNorm1d(3).double()
    xz = tensor.tensor(x, requires_grad=True)
    y = m(xz)
    full = tensor.tensor(np.concatenate([x, other]), requires_grad=True)
    yr = ref(full)
    # forward, running statistics and the gradient through the pooled statistics all match
    np.testing.assert_allclose(y.detach().numpy(), yr.detach().numpy()[:4], rtol=1e-12)
    np.testing.assert_allclose(m.running_var.numpy(), ref.running_var.numpy(), rtol=1e-12)
    gy = _rand(4, 3, seed=5)
    y.backward(tensor.tensor(gy))
    yr.backward(tensor.tensor(np.concatenate([gy, np.zeros((6, 3))])))
    np.testing.assert_allclose(xz.grad.numpy(), full.grad.numpy()[:4], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls,shape,kw", [
    ("InstanceNorm2d", (3, 4, 5, 6), {}),
    ("InstanceNorm1d", (3, 4, 7), dict(affine=True, track_running_stats=True)),
    ("InstanceNorm2d", (4, 5, 6), dict(affine=True)),  # unbatched (C, H, W)
    ("InstanceNorm3d", (2, 4, 3, 3, 2), dict(track_running_stats=True, momentum=0.3)),
])
def test_instance_norm_matches_torch(cls, shape, kw):
    zm, tm = _torch_pair(cls, 4, kw)
    for step in range(3):
        _check_train_step(zm, tm, shape, step)
    _check_eval(zm, tm, shape)


def test_instance_norm_gradcheck():
    x = tensor.tensor(_rand(2, 3, 4), requires_grad=True)
    w = tensor.tensor(_rand(3, seed=1), requires_grad=True)
    b = tensor.tensor(_rand(3, seed=2), requires_grad=True)
    assert gradcheck(lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-3), (x, w, b))
