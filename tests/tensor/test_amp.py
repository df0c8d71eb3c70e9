"""tensor.amp: autocast's cast policy (bf16 emulated on the CPU, float16 real) and GradScaler's
protocol, against PyTorch's CPU autocast and torch.amp.GradScaler('cpu')."""
import numpy as np
import pytest

import tensor
import tensor.nn.functional as F
from tensor import nn
from tensor._autocast import _round_bf16_array

torch = pytest.importorskip("torch")


def test_bf16_rounding_matches_torch():
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32) * 100
    x[:3] = [np.inf, -np.inf, 0.0]
    ours = _round_bf16_array(x)
    theirs = torch.tensor(x).bfloat16().float().numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(_round_bf16_array(np.array([np.nan], np.float32))).all()


def _linear_pair(seed=0):
    rng = np.random.default_rng(seed)
    w, b, x = rng.normal(size=(5, 7)), rng.normal(size=(5,)), rng.normal(size=(3, 7))
    m = nn.Linear(7, 5)
    tm = torch.nn.Linear(7, 5)
    with tensor.no_grad():
        m.weight.copy_(tensor.tensor(w)), m.bias.copy_(tensor.tensor(b))
    with torch.no_grad():
        tm.weight.copy_(torch.tensor(w)), tm.bias.copy_(torch.tensor(b))
    return m, tm, tensor.tensor(x, dtype=tensor.float32), torch.tensor(x, dtype=torch.float32)


def test_autocast_bf16_linear_and_loss_follow_torch():
    m, tm, x, tx = _linear_pair()
    target = [1, 0, 4]
    with tensor.amp.autocast("cpu", dtype=tensor.bfloat16):
        y = m(x)
        loss = F.cross_entropy(y, tensor.tensor(target))
    with torch.amp.autocast("cpu", dtype=torch.bfloat16):
        ty = tm(tx)
        tloss = torch.nn.functional.cross_entropy(ty, torch.tensor(target))
    assert ty.dtype == torch.bfloat16 and tloss.dtype == torch.float32
    assert loss.dtype == tensor.float32  # the loss runs in float32, as in PyTorch
    # y holds bf16 values (emulated): exactly representable in bf16, and torch's to one ulp
    np.testing.assert_array_equal(_round_bf16_array(y.detach().numpy()), y.detach().numpy())
    np.testing.assert_allclose(y.detach().numpy(), ty.float().detach().numpy(), rtol=2 ** -7)
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=2e-2)
    loss.backward()
    tloss.backward()
    assert m.weight.grad.dtype == tensor.float32
    np.testing.assert_allclose(m.weight.grad.numpy(), tm.weight.grad.numpy(), rtol=3e-2,
                               atol=3e-3)


def test_autocast_is_off_outside_and_when_disabled_and_as_decorator():
    m, _, x, _ = _linear_pair()
    plain = m(x).detach().numpy()
    with tensor.amp.autocast("cpu", enabled=False):
        np.testing.assert_array_equal(m(x).detach().numpy(), plain)

    @tensor.amp.autocast("cpu")
    def f(t):
        return m(t)
    out = f(x).detach().numpy()
    assert not np.array_equal(out, plain)
    np.testing.assert_array_equal(_round_bf16_array(out), out)
    np.testing.assert_array_equal(m(x).detach().numpy(), plain)


POLICY_CASES = {
    "linear": lambda lib, F, x, t: F.linear(x, x[:3]),
    "matmul": lambda lib, F, x, t: x @ x.T,
    "softmax": lambda lib, F, x, t: F.softmax(x, 1),
    "log_softmax": lambda lib, F, x, t: F.log_softmax(x, 1),
    "cross_entropy": lambda lib, F, x, t: F.cross_entropy(x, t),
    "nll_loss": lambda lib, F, x, t: F.nll_loss(x, t),
    "mse_loss": lambda lib, F, x, t: F.mse_loss(x, x * 0.5),
    "l1_loss": lambda lib, F, x, t: F.l1_loss(x, x * 0.5),
    "smooth_l1_loss": lambda lib, F, x, t: F.smooth_l1_loss(x, x * 0.5),
    "huber_loss": lambda lib, F, x, t: F.huber_loss(x, x * 0.5),
    "bce_with_logits": lambda lib, F, x, t: F.binary_cross_entropy_with_logits(x, x.sigmoid()),
    "sum": lambda lib, F, x, t: x.sum(),
    "logsumexp": lambda lib, F, x, t: x.logsumexp(1),
    "layer_norm": lambda lib, F, x, t: F.layer_norm(x, (5,)),
}


@pytest.mark.parametrize("name", sorted(POLICY_CASES))
def test_autocast_float16_cpu_policy_matches_torch(name):
    """Under CPU float16 autocast each op's output dtype is PyTorch's (float16 inputs)."""
    x = np.random.default_rng(1).normal(size=(4, 5))
    fn = POLICY_CASES[name]
    with tensor.amp.autocast("cpu", dtype=tensor.float16):
        ours = fn(tensor, F, tensor.tensor(x, dtype=tensor.float16), tensor.tensor([0, 1, 2, 3]))
    with torch.amp.autocast("cpu", dtype=torch.float16):
        theirs = fn(torch, torch.nn.functional, torch.tensor(x, dtype=torch.float16),
                    torch.tensor([0, 1, 2, 3]))
    assert ours.dtype.name == str(theirs.dtype).split(".")[1]
    np.testing.assert_allclose(ours.float().detach().numpy(), theirs.float().detach().numpy(),
                               rtol=2e-2, atol=2e-2)


def test_autocast_float16_backward_gives_float32_grads():
    m, _, x, _ = _linear_pair()
    with tensor.amp.autocast("cpu", dtype=tensor.float16):
        y = m(x)
        assert y.dtype == tensor.float16
        loss = F.cross_entropy(y, tensor.tensor([0, 1, 2]))
        assert loss.dtype == tensor.float32
    loss.backward()
    assert m.weight.grad.dtype == tensor.float32


def test_autocast_joins_layer_norm_and_attention_by_name():
    x = tensor.randn(2, 5, 8)
    with tensor.amp.autocast("cpu", dtype=tensor.float16):
        assert F.scaled_dot_product_attention(x, x, x).dtype == tensor.float16
        assert F.layer_norm(x.half(), (8,)).dtype == tensor.float16  # CPU: left alone
    with torch.amp.autocast("cpu", dtype=torch.float16):
        tx = torch.randn(2, 5, 8)
        assert torch.nn.functional.scaled_dot_product_attention(tx, tx, tx).dtype == torch.float16
    from tensor._autocast import FLOAT32
    assert "layer_norm" in FLOAT32["cuda"] and "layer_norm" not in FLOAT32["cpu"]


def test_bfloat16_is_a_clear_error_as_a_tensor_dtype():
    with pytest.raises(TypeError, match="autocast"):
        tensor.zeros(2, dtype=tensor.bfloat16)
    assert repr(tensor.bfloat16) == "tensor.bfloat16"


# -- GradScaler ---------------------------------------------------------------------------------
def _scaler_run(lib, grads_per_step, **kw):
    p = lib.nn.Parameter(lib.tensor(np.ones(3, np.float32)))
    opt = lib.optim.SGD([p], lr=0.1)
    scaler = lib.amp.GradScaler("cpu", **kw)
    scales, values, skipped = [], [], []
    for g in grads_per_step:
        loss = (p * lib.tensor(np.asarray(g, np.float32))).sum()
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        before = p.detach().numpy().copy()
        scaler.step(opt)
        skipped.append(bool(np.array_equal(before, p.detach().numpy())))
        scaler.update()
        scales.append(scaler.get_scale())
        values.append(p.detach().numpy().copy())
    return scales, values, skipped, scaler.state_dict()


def test_grad_scaler_matches_torch():
    grads = [[1, 2, 3], [np.inf, 0, 1], [1, 1, 1], [0.5, 0.5, 0.5], [np.nan, 1, 1], [2, 2, 2],
             [1, 1, 1]]
    kw = dict(init_scale=1024.0, growth_interval=2, growth_factor=3.0, backoff_factor=0.25)
    ours = _scaler_run(tensor, grads, **kw)
    theirs = _scaler_run(torch, grads, **kw)
    assert ours[0] == theirs[0]
    for a, b in zip(ours[1], theirs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert ours[2] == theirs[2] == [False, True, False, False, True, False, False]
    assert ours[3]["scale"] == float(theirs[3]["scale"])
    assert ours[3]["_growth_tracker"] == theirs[3]["_growth_tracker"]


def test_grad_scaler_protocol_errors_and_disabled_passthrough():
    p = nn.Parameter(tensor.ones(2))
    opt = tensor.optim.SGD([p], lr=0.1)
    s = tensor.amp.GradScaler("cpu")
    s.scale((p * 2).sum()).backward()
    s.unscale_(opt)
    with pytest.raises(RuntimeError, match="already been called"):
        s.unscale_(opt)
    np.testing.assert_allclose(p.grad.numpy(), [2.0, 2.0])  # unscaled back to the true grad
    s.step(opt)
    s.update()
    off = tensor.amp.GradScaler("cpu", enabled=False)
    loss = (p * 2).sum()
    assert off.scale(loss) is loss and off.get_scale() == 1.0 and off.state_dict() == {}
    if not tensor.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert not tensor.amp.GradScaler().is_enabled()


def test_convolutions_run_in_the_autocast_dtype():
    import tensor.nn as nn
    conv = nn.Conv2d(2, 3, 3)
    x = tensor.randn(1, 2, 6, 6)
    with tensor.amp.autocast("cpu", dtype=tensor.float16):
        y = conv(x)
    assert y.dtype == tensor.float16
    y.float().sum().backward()
    assert conv.weight.grad.dtype == tensor.float32   # gradients in the parameter's dtype
    with tensor.amp.autocast("cpu", dtype=tensor.float16):
        assert nn.ConvTranspose2d(3, 2, 3)(y.float()).dtype == tensor.float16
        assert nn.Conv1d(2, 3, 3)(tensor.randn(1, 2, 7)).dtype == tensor.float16


def test_grad_scaler_refuses_fp16_gradients_as_pytorch():
    import torch
    p = tensor.zeros(2, dtype=tensor.float16, requires_grad=True)
    p.grad = tensor.ones(2, dtype=tensor.float16)
    opt = tensor.optim.SGD([p], lr=0.1)
    scaler = tensor.amp.GradScaler("cpu")
    tp = torch.zeros(2, dtype=torch.float16, requires_grad=True)
    tp.grad = torch.ones(2, dtype=torch.float16)
    tscaler = torch.amp.GradScaler("cpu")
    tscaler.scale(torch.zeros(()))          # torch makes its scale lazily, in scale()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients."):
        tscaler.unscale_(torch.optim.SGD([tp], lr=0.1))
    scaler.scale(tensor.zeros(()))
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients."):
        scaler.unscale_(opt)
