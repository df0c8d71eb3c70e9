"""LayerNorm, GroupNorm (and Embedding's padding_idx / max_norm): float64 gradient checks and
values and gradients against PyTorch through state_dicts."""
import numpy as np
import pytest

import tensor
from tensor import nn
from tensor.nn import functional as F
from tests.helpers import check_grad, requires_cupy

torch = pytest.importorskip("torch")


def _t(a):
    return tensor.tensor(np.asarray(a))


def _close(z, t, what):
    np.testing.assert_allclose(z.detach().numpy(), t.detach().numpy(), rtol=1e-9, atol=1e-10,
                               err_msg=what)


@pytest.mark.parametrize("shape,norm", [((3, 5), 5), ((2, 3, 4, 5), (4, 5)), ((7,), 7)])
def test_layer_norm_gradcheck(shape, norm):
    rng = np.random.default_rng(0)
    nshape = (norm,) if isinstance(norm, int) else norm
    w = _t(rng.normal(size=shape))
    check_grad(lambda x, g, b: (F.layer_norm(x, norm, g, b, eps=1e-3) * w).sum(),
               rng.normal(size=shape), rng.normal(size=nshape), rng.normal(size=nshape))
    check_grad(lambda x: (F.layer_norm(x, norm) * w).sum(), rng.normal(size=shape))


def test_layer_norm_double_backward_matches_pytorch():
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(4,))
    zx, zg = _t(x).requires_grad_(), _t(g).requires_grad_()
    tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
    zy = (F.layer_norm(zx, (4,), zg) ** 3).sum()
    ty = (torch.nn.functional.layer_norm(tx, (4,), tg) ** 3).sum()
    zgx, = tensor.autograd.grad(zy, [zx], create_graph=True)
    tgx, = torch.autograd.grad(ty, [tx], create_graph=True)
    _close(zgx, tgx, "first order")
    _close(tensor.autograd.grad((zgx ** 2).sum(), [zg])[0],
           torch.autograd.grad((tgx ** 2).sum(), [tg])[0], "second order")


@pytest.mark.parametrize("kwargs", [dict(), dict(elementwise_affine=False), dict(bias=False),
                                    dict(eps=1e-2)])
def test_layer_norm_module_matches_pytorch(kwargs):
    torch.manual_seed(0)
    tm = torch.nn.LayerNorm((3, 4), **kwargs).double()
    zm = nn.LayerNorm((3, 4), **kwargs).double()
    assert list(zm.state_dict()) == list(tm.state_dict())
    with torch.no_grad():
        for p in tm.parameters():
            p.normal_()
    zm.load_state_dict({k: _t(v.numpy()) for k, v in tm.state_dict().items()})
    x = np.random.default_rng(2).normal(size=(2, 3, 4)) * 3 + 1
    zx, tx = _t(x).requires_grad_(), torch.tensor(x, requires_grad=True)
    zo, to = zm(zx), tm(tx)
    _close(zo, to, "output")
    (zo ** 2).sum().backward()
    (to ** 2).sum().backward()
    _close(zx.grad, tx.grad, "input grad")
    for (n, zp), (_, tp) in zip(zm.named_parameters(), tm.named_parameters()):
        _close(zp.grad, tp.grad, n)


@pytest.mark.parametrize("groups,shape", [(2, (3, 4, 5)), (3, (2, 6, 2, 3)), (1, (2, 3)),
                                          (4, (2, 4, 3))])
def test_group_norm_matches_pytorch_and_gradcheck(groups, shape):
    C = shape[1]
    torch.manual_seed(0)
    tm = torch.nn.GroupNorm(groups, C).double()
    zm = nn.GroupNorm(groups, C).double()
    with torch.no_grad():
        for p in tm.parameters():
            p.normal_()
    zm.load_state_dict({k: _t(v.numpy()) for k, v in tm.state_dict().items()})
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape)
    zx, tx = _t(x).requires_grad_(), torch.tensor(x, requires_grad=True)
    w = rng.normal(size=shape)
    zo, to = zm(zx), tm(tx)
    _close(zo, to, "output")
    (zo * _t(w)).sum().backward()
    (to * torch.tensor(w)).sum().backward()
    _close(zx.grad, tx.grad, "input grad")
    _close(zm.weight.grad, tm.weight.grad, "weight grad")
    _close(zm.bias.grad, tm.bias.grad, "bias grad")
    check_grad(lambda a, g, b: (F.group_norm(a, groups, g, b) * _t(w)).sum(), x,
               rng.normal(size=C), rng.normal(size=C))


def test_norm_errors():
    with pytest.raises(RuntimeError, match="normalized_shape"):
        F.layer_norm(tensor.zeros(2, 3), (4,))
    with pytest.raises(ValueError, match="divisible"):
        nn.GroupNorm(4, 6)
    with pytest.raises(RuntimeError, match="num_groups"):
        F.group_norm(tensor.zeros(2, 6), 4)


def test_embedding_padding_idx_and_max_norm_match_pytorch():
    torch.manual_seed(0)
    tm = torch.nn.Embedding(6, 3, padding_idx=1, max_norm=1.5).double()
    zm = nn.Embedding(6, 3, padding_idx=1, max_norm=1.5).double()
    with torch.no_grad():
        tm.weight.mul_(2)
        tm.weight[3] = torch.tensor([3.0, 0.0, 0.0])
    zm.load_state_dict({k: _t(v.numpy().copy()) for k, v in tm.state_dict().items()})
    idx = np.array([[0, 1, 4], [4, 2, 1]])
    zo, to = zm(_t(idx)), tm(torch.tensor(idx))
    _close(zo, to, "output")
    _close(zm.weight, tm.weight, "weight after renormalising rows 0, 2, 4 in place")
    w = np.random.default_rng(4).normal(size=to.shape)
    (zo * _t(w)).sum().backward()
    (to * torch.tensor(w)).sum().backward()
    _close(zm.weight.grad, tm.weight.grad, "weight grad (zero at padding_idx)")
    assert not zm.weight.grad.numpy()[1].any()
    assert zm.weight.detach().numpy()[3].tolist() == [3.0, 0.0, 0.0]  # unused: untouched


@requires_cupy
def test_norms_and_embedding_on_gpu_match_cpu():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 3))
    idx = np.array([[0, 2, 2], [3, 1, 0]])
    results = []
    for dev in ("cpu", "cuda"):
        tensor.manual_seed(0)
        ln, gn = nn.LayerNorm((6, 3)).double().to(dev), nn.GroupNorm(3, 6).double().to(dev)
        emb = nn.Embedding(4, 3, padding_idx=1, max_norm=1.0).double().to(dev)
        xt = tensor.tensor(x, device=dev, requires_grad=True)
        y = ln(xt) * gn(xt) + emb(tensor.tensor(idx, device=dev)).sum()
        (y ** 2).sum().backward()
        results.append([t.detach().cpu().numpy() for t in
                        [y, xt.grad, ln.weight.grad, gn.bias.grad, emb.weight.grad,
                         emb.weight]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
