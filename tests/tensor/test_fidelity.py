"""The names real PyTorch scripts reach for, checked against PyTorch where it has them:
ordering ops, diag, elu and the robust losses, legacy constructors, accelerator/backends
probes, Variable, module hooks, load_state_dict(assign=True), in-place activations."""
import numpy as np
import pytest

import tensor
import tensor.nn.functional as F
from tensor import nn
from tests.helpers import check_grad

torch = pytest.importorskip("torch")
TF = torch.nn.functional

rng = np.random.default_rng(0)


def _both(x, requires_grad=False):
    return (tensor.tensor(x, requires_grad=requires_grad),
            torch.tensor(x, requires_grad=requires_grad))


# -- ordering ops and diag ---------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(k=2), dict(k=3, dim=0, largest=False),
                                dict(k=1, dim=-1, largest=True, sorted=True)])
def test_topk_matches_torch(kw):
    x = rng.permutation(24).reshape(4, 6).astype(np.float64)
    a, b = _both(x)
    ours, theirs = a.topk(**kw), b.topk(**kw)
    np.testing.assert_array_equal(ours.values.numpy(), theirs.values.numpy())
    np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
    assert ours.indices.dtype == tensor.int64


@pytest.mark.parametrize("kw", [dict(), dict(dim=0, descending=True), dict(stable=True)])
def test_sort_and_argsort_match_torch(kw):
    x = np.array([[3.0, 1.0, 2.0, 1.0], [0.5, 0.5, -1.0, 4.0]])
    a, b = _both(x)
    ours, theirs = tensor.sort(a, **kw), torch.sort(b, **kw)
    np.testing.assert_array_equal(ours.values.numpy(), theirs.values.numpy())
    np.testing.assert_array_equal(a.argsort(**kw).numpy(), b.argsort(**kw).numpy())


def test_topk_sort_diag_gradcheck():
    x = rng.permutation(20).reshape(4, 5) / 7.0  # distinct values: no ties
    w = rng.normal(size=(4, 2))
    check_grad(lambda t: (t.topk(2, dim=1).values * tensor.tensor(w)).sum(), x)
    check_grad(lambda t: (tensor.sort(t, 0, descending=True).values ** 2).sum(), x)
    check_grad(lambda t: (tensor.diag(t, 1) ** 2).sum(), x)
    w6 = tensor.tensor(rng.normal(size=(6, 6)))
    check_grad(lambda v: (tensor.diag(v, -1) * w6).sum(), rng.normal(size=(5,)))


@pytest.mark.parametrize("shape,d", [((4,), 0), ((3,), 2), ((3,), -1), ((3, 5), 0), ((4, 3), -2)])
def test_diag_matches_torch(shape, d):
    x = rng.normal(size=shape)
    a, b = _both(x)
    np.testing.assert_array_equal(tensor.diag(a, d).numpy(), torch.diag(b, d).numpy())


# -- elu and losses ----------------------------------------------------------------------------
LOSSES = [("l1_loss", {}), ("smooth_l1_loss", {}), ("smooth_l1_loss", dict(beta=0.3)),
          ("smooth_l1_loss", dict(beta=0.0, reduction="sum")), ("huber_loss", {}),
          ("huber_loss", dict(delta=0.4, reduction="none"))]


@pytest.mark.parametrize("name,kw", LOSSES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(LOSSES)])
def test_losses_match_torch_and_gradcheck(name, kw):
    x, y = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    (a, b), (c, d) = _both(x, True), _both(y)
    ours, theirs = getattr(F, name)(a, c, **kw), getattr(TF, name)(b, d, **kw)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), rtol=1e-12)
    ours.sum().backward()
    theirs.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12)
    check_grad(lambda p, q: getattr(F, name)(p, q, **kw).sum(), x, y)


def test_loss_modules_match_functional():
    x, y = tensor.randn(4, 3), tensor.randn(4, 3)
    assert nn.SmoothL1Loss(beta=0.5)(x, y).item() == F.smooth_l1_loss(x, y, beta=0.5).item()
    assert nn.HuberLoss(delta=2.0)(x, y).item() == F.huber_loss(x, y, delta=2.0).item()
    assert nn.L1Loss(reduction="sum")(x, y).item() == F.l1_loss(x, y, reduction="sum").item()


def test_elu_matches_torch_and_gradcheck():
    x = rng.uniform(0.1, 2, size=(3, 4)) * rng.choice([-1, 1], size=(3, 4))
    a, b = _both(x, True)
    F.elu(a, 0.7).sum().backward()
    TF.elu(b, 0.7).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(nn.ELU(0.7)(a).detach().numpy(), TF.elu(b, 0.7).detach().numpy())
    check_grad(lambda t: (F.elu(t, 1.3) ** 2).sum(), x)
    tensor.autograd.gradgradcheck(lambda t: F.elu(t), [tensor.tensor(x, requires_grad=True)])


@pytest.mark.parametrize("act", ["silu", "relu", "leaky_relu", "elu"])
def test_inplace_activations_write_into_the_input_and_keep_gradients(act):
    x = rng.normal(size=(3, 4))
    a, b = _both(x, True)
    ha, hb = a * 2, b * 2
    ra, rb = getattr(F, act)(ha, inplace=True), getattr(TF, act)(hb, inplace=True)
    assert ra is ha and ra._version == 1
    np.testing.assert_allclose(ha.detach().numpy(), hb.detach().numpy(), rtol=1e-12)
    (ra * ra).sum().backward()
    (rb * rb).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12)
    module = {"silu": nn.SiLU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}[act]
    h = tensor.tensor(x)
    assert module(inplace=True)(h) is h


# -- names and probes --------------------------------------------------------------------------
def test_legacy_constructors_and_variable():
    assert tensor.LongTensor([1, 2]).dtype == tensor.int64
    assert tensor.FloatTensor(2, 3).shape == (2, 3) and tensor.FloatTensor(2, 3).dtype == tensor.float32
    assert tensor.DoubleTensor([1.5]).dtype == tensor.float64
    assert tensor.IntTensor([1]).dtype == tensor.int32
    assert tensor.BoolTensor([True]).dtype == tensor.bool
    assert isinstance(tensor.ones(2), tensor.FloatTensor)
    assert not isinstance(tensor.ones(2), tensor.LongTensor)
    from tensor.autograd import Variable
    x = tensor.ones(3)
    v = Variable(x, requires_grad=True)
    assert v.requires_grad and not x.requires_grad and isinstance(x, Variable)
    v.array[0] = 5.0  # same storage, as in PyTorch
    assert x[0].item() == 5.0


def test_accelerator_and_backends_probes():
    has = tensor.cuda.is_available()
    assert tensor.accelerator.is_available() == has
    assert tensor.accelerator.device_count() == tensor.cuda.device_count()
    acc = tensor.accelerator.current_accelerator(check_available=True)
    assert (acc is not None) == has and (acc is None or acc.type == "cuda")
    assert tensor.backends.mps.is_available() is False
    assert tensor.backends.cuda.is_built() == (tensor.backend.cupy is not None)
    cudnn = tensor.backends.cudnn
    old = (cudnn.enabled, cudnn.benchmark, cudnn.deterministic)
    try:
        cudnn.benchmark, cudnn.deterministic = True, True
        assert cudnn.benchmark and cudnn.deterministic
    finally:
        cudnn.enabled, cudnn.benchmark, cudnn.deterministic = old


def test_set_default_device():
    assert tensor.get_default_device().type == "cpu"
    tensor.set_default_device("cpu")
    assert tensor.zeros(2).device.type == "cpu"
    if not tensor.cuda.is_available():
        with pytest.raises(RuntimeError, match="CuPy"):
            tensor.set_default_device("cuda")
    tensor.set_default_device(None)
    assert tensor.get_default_device().type == "cpu"


def test_default_seed_is_documented_truthfully():
    g = tensor.Generator()
    assert g.initial_seed() == torch.Generator().initial_seed() == 67280421310721
    assert str(g.initial_seed()) in tensor.random.__doc__


# -- module hooks ------------------------------------------------------------------------------
def _hooked_run(lib):
    lib.manual_seed(0)
    m = lib.nn.Sequential(lib.nn.Linear(4, 3), lib.nn.Tanh(), lib.nn.Linear(3, 2)).double()
    with lib.no_grad():
        for p, a in zip(m.parameters(), [np.linspace(-1, 1, 12).reshape(3, 4), np.ones(3) * .1,
                                         np.linspace(1, -1, 6).reshape(2, 3), np.zeros(2)]):
            p.copy_(lib.tensor(a, dtype=p.dtype))
    seen = []
    m[0].register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    m[0].register_forward_hook(lambda mod, args, kwargs, out: out + 1, with_kwargs=True)
    m[2].register_full_backward_pre_hook(lambda mod, go: (go[0] * 3,))
    m[1].register_full_backward_hook(
        lambda mod, gi, go: seen.append((gi[0].detach().numpy().copy(),
                                         go[0].detach().numpy().copy())) or (gi[0] * 0.5,))
    m[0].register_full_backward_hook(lambda mod, gi, go: seen.append(gi))  # input needs no grad
    x = lib.tensor(np.linspace(0, 1, 8).reshape(2, 4), dtype=lib.float64)
    out = m(x)
    out.sum().backward()
    return out.detach().numpy(), [p.grad.numpy() for p in m.parameters()], seen


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_module_hooks_match_torch():
    ours, theirs = _hooked_run(tensor), _hooked_run(torch)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
    for a, b in zip(ours[1], theirs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    (gi, go), gi0 = ours[2][0], ours[2][1]
    np.testing.assert_allclose(gi, theirs[2][0][0], rtol=1e-10)
    np.testing.assert_allclose(go, theirs[2][0][1], rtol=1e-10)
    assert gi0 == (None,) and theirs[2][1] == (None,)


def test_forward_hooks_with_kwargs_prepend_and_removal():
    m = nn.Linear(2, 2)
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, a, kw: calls.append("a") or (a, kw),
                                     with_kwargs=True)
    m.register_forward_pre_hook(lambda mod, a: calls.append("b"), prepend=True)
    m(tensor.ones(2))
    assert calls == ["b", "a"]
    h1.remove()
    m(tensor.ones(2))
    assert calls == ["b", "a", "b"]


# -- load_state_dict(assign=True) --------------------------------------------------------------
def test_load_state_dict_assign_takes_the_tensors():
    src = nn.Linear(3, 2).double()
    m = nn.Linear(3, 2)
    m.bias.requires_grad_(False)
    sd = src.state_dict()
    m.load_state_dict(sd, assign=True)
    assert m.weight.dtype == tensor.float64 and m.weight.array is sd["weight"].array
    assert isinstance(m.weight, nn.Parameter) and m.weight.requires_grad
    assert not m.bias.requires_grad  # the module's requires_grad is kept, as in PyTorch
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.Linear(4, 2).load_state_dict(sd, assign=True)
    tm = torch.nn.Linear(3, 2)
    tm.load_state_dict({k: torch.tensor(v.numpy()) for k, v in sd.items()}, assign=True)
    assert tm.weight.dtype == torch.float64
