"""Optimizers, autocast, GradScaler, factories and random draws on a device match the CPU.

The same harness and targets as test_gpu_parity.py (see tests/tensor/_parity.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from tests.helpers import requires_cupy
from tests.tensor import _parity
from tests.tensor._parity import check_case, check_optimizer, close, device_of, host

T = tensor.tensor
target = _parity.target  # the fixture: "cpu", "fake" or "cuda"

class _Clipped:
    """An optimizer whose step clips the gradients first (clip_grad_norm_ and _value_)."""

    def __init__(self, opt):
        self.opt = opt

    def step(self, closure):
        loss = closure()
        params = [p for g in self.opt.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, 0.3)
        nn.utils.clip_grad_value_(params, 0.05)
        self.opt.step()
        return loss

    def zero_grad(self):
        self.opt.zero_grad()

    def state_dict(self):
        return self.opt.state_dict()


OPTIMIZERS = {
    "SGD-clipped": lambda p: _Clipped(tensor.optim.SGD(p, lr=0.5, momentum=0.5)),
    "SGD": lambda p: tensor.optim.SGD(p, lr=0.1),
    "SGD-nesterov": lambda p: tensor.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                               weight_decay=0.01),
    "Adam": lambda p: tensor.optim.Adam(p, lr=0.01),
    "Adam-amsgrad": lambda p: tensor.optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=0.1),
    "AdamW": lambda p: tensor.optim.AdamW(p, lr=0.01),
    "RMSprop": lambda p: tensor.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "Adagrad": lambda p: tensor.optim.Adagrad(p, lr=0.1, lr_decay=0.01),
    "Adadelta": lambda p: tensor.optim.Adadelta(p, lr=1.0, weight_decay=0.01),
    "LBFGS": lambda p: tensor.optim.LBFGS(p, lr=0.5, max_iter=4, line_search_fn="strong_wolfe"),
}


def test_optimizer_table_covers_every_optimizer():
    names = {n for n in tensor.optim.__all__ if n not in ("Optimizer", "lr_scheduler")}
    assert names == {k.split("-")[0] for k in OPTIMIZERS}


@pytest.mark.parametrize("case", sorted(OPTIMIZERS))
def test_optimizer_parity(target, case):
    check_optimizer(target, OPTIMIZERS[case])


# autocast: op -> (build, specs, forward fn or None, the op class of the output: "low" for
# matmul-like ops (the autocast dtype), "f32cuda" for ops CUDA autocast runs in float32
# (softmax, norms), "f32" for losses (float32 on every device)). See Note [Autocast].
AUTOCAST_CASES = {
    "linear": (lambda: nn.Linear(8, 5), [(3, 8)], None, "low"),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), [(2, 2, 5, 5)], None, "low"),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3), [(2, 2, 7)], None, "low"),
    "matmul": (lambda: None, [(2, 3, 8), (8, 4)], lambda _, a, b: a @ b, "low"),
    "softmax": (lambda: nn.Linear(8, 6), [(3, 8)], lambda m, x: F.softmax(m(x), -1), "f32cuda"),
    "layer_norm": (lambda: nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6)), [(3, 8)], None,
                   "f32cuda"),
    "cross_entropy": (lambda: nn.Linear(8, 5), [(4, 8), ("long", 5, (4,))],
                      lambda m, x, t: F.cross_entropy(m(x), t), "f32"),
    "mse_loss": (lambda: nn.Linear(8, 5), [(4, 8), (4, 5)], lambda m, x, t: F.mse_loss(m(x), t),
                 "f32"),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", sorted(AUTOCAST_CASES))
def test_autocast_parity(target, case, dtype):
    """Under autocast the target matches the CPU's float32 result within the low precision,
    and each output has the dtype the policy gives it (bfloat16 is emulated in float32)."""
    build, specs, fn, kind = AUTOCAST_CASES[case]
    dt = getattr(tensor, dtype)
    out = check_case(target, build, specs, fn, rtol=3e-2, atol=3e-2, amp=dt)[0]
    low = tensor.float32 if dtype == "bfloat16" else tensor.float16
    on_gpu = device_of(target) == "cuda"
    # CPU autocast leaves softmax and norms to type promotion (not what this file checks)
    want = {"low": low, "f32": tensor.float32, "f32cuda": tensor.float32 if on_gpu else None}[kind]
    assert want is None or out.dtype == want, \
        f"{case} under autocast({dtype}) gave {out.dtype}, want {want}"


FACTORIES = {  # name -> (fn(device), deterministic: values must equal the CPU's)
    "zeros": (lambda d: tensor.zeros(2, 3, device=d), True),
    "ones_like": (lambda d: tensor.ones_like(tensor.zeros(2, device=d), dtype=tensor.int64), True),
    "full": (lambda d: tensor.full((2, 2), 1.5, device=d), True),
    "eye": (lambda d: tensor.eye(3, 4, device=d), True),
    "arange": (lambda d: tensor.arange(0.5, 3, 0.5, device=d), True),
    "linspace": (lambda d: tensor.linspace(-1, 1, 5, device=d), True),
    "rand": (lambda d: tensor.rand(3, 4, device=d), False),
    "randn-f16": (lambda d: tensor.randn(3, 4, dtype=tensor.float16, device=d), False),
    "randint": (lambda d: tensor.randint(0, 5, (6,), device=d), False),
    "randperm": (lambda d: tensor.randperm(7, device=d), False),
    "multinomial": (lambda d: tensor.multinomial(tensor.ones(2, 4, device=d), 3), False),
    "normal": (lambda d: tensor.normal(1.0, 2.0, size=(3,), device=d), False),
    "randn_like": (lambda d: tensor.randn_like(tensor.zeros(2, 3, device=d)), False),
    "dropout-train": (lambda d: F.dropout(tensor.ones(4, 5, device=d), 0.5), False),
    "init.kaiming_uniform_": (lambda d: nn.init.kaiming_uniform_(tensor.empty(4, 3, device=d)),
                              False),
    "init.orthogonal_": (lambda d: nn.init.orthogonal_(tensor.empty(4, 3, device=d)), False),
    "init.trunc_normal_": (lambda d: nn.init.trunc_normal_(tensor.empty(4, 3, device=d)), False),
    "Categorical.sample": (lambda d: tensor.distributions.Categorical(
        logits=tensor.zeros(2, 3, device=d)).sample((4,)), False),
    "Categorical.enumerate_support": (lambda d: tensor.distributions.Categorical(
        probs=tensor.ones(2, 3, device=d)).enumerate_support(), True),
    "Normal.rsample": (lambda d: tensor.distributions.Normal(
        tensor.zeros(3, device=d), tensor.ones(3, device=d)).rsample((2,)), False),
}


@pytest.mark.parametrize("case", sorted(FACTORIES))
def test_factories_and_sampling_on_device(target, case):
    """Creation, random draws, init and sampling land on the target with the CPU's dtype and
    shape (and, for deterministic ones, the CPU's values)."""
    fn, deterministic = FACTORIES[case]
    dev = device_of(target)
    tensor.manual_seed(0)
    want = fn("cpu")
    tensor.manual_seed(0)
    got = fn(dev)
    assert str(got.device).split(":")[0] == dev, f"{case} made a tensor on {got.device}"
    assert got.dtype == want.dtype and tuple(got.shape) == tuple(want.shape)
    if deterministic:
        np.testing.assert_array_equal(host(got), host(want))


def test_grad_scaler_parity(target):
    """GradScaler on the target: same skipped step (an inf gradient), same scale growth and
    backoff, same parameters as on the CPU."""
    dev = device_of(target)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 2))
    results = []
    for d in ("cpu", dev):
        tensor.manual_seed(0)
        m = nn.Linear(4, 2).to(d)
        opt = tensor.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        scaler = tensor.amp.GradScaler(d, init_scale=2.0 ** 10, growth_interval=2)
        scales = []
        for step in range(5):
            opt.zero_grad()
            loss = F.mse_loss(m(T(x, device=d)), T(y.astype(np.float32), device=d))
            scaler.scale(loss).backward()
            if step == 1:
                m.weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        results.append((scales, [host(p) for p in m.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[1][1], results[0][1]):
        close(a, b, "parameter after scaled steps")


def test_gradcheck_and_gradgradcheck_on_device(target):
    """autograd.gradcheck perturbs device tensors in place and reads gradients back."""
    rng = np.random.default_rng(0)
    x = T(rng.normal(size=(3, 2)), device=device_of(target), requires_grad=True)
    w = T(rng.normal(size=(2,)), device=device_of(target), requires_grad=True)
    assert tensor.autograd.gradcheck(lambda a, b: (a * b).sin(), (x, w))
    assert tensor.autograd.gradgradcheck(lambda a, b: (a * b).sin(), (x, w))


@requires_cupy
@pytest.mark.real_gpu_only("compares the names the fake served with the real CuPy module")
def test_fake_cupy_served_only_what_cupy_has(tmp_path):
    """Run after the fake cases above: every function the fake served exists in CuPy."""
    import cupy
    if not _parity.fakecuda.arrays.USED:  # run without the fake cases (pytest -m gpu): run them now
        out = tmp_path / "used.json"
        here = os.path.dirname(__file__)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-k", "fake and not served_only",
                            os.path.join(here, "test_gpu_parity.py"), __file__],
                           env=dict(os.environ, ZGRAD_FAKE_USED_OUT=str(out)),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:]
        _parity.fakecuda.arrays.USED.update((w, tuple(k)) for w, k in json.loads(out.read_text()))
    assert _parity.fakecuda.arrays.USED, "the fake cases served nothing"
    assert _parity.fakecuda.arrays.missing_in(cupy) == []


def test_cpu_scalar_tensor_joins_a_device_op(target):
    """A 0-d CPU tensor in a binary op with a device tensor, as PyTorch allows; its gradient
    comes back on the CPU."""
    x = T(np.arange(3, dtype=np.float32), device=device_of(target), requires_grad=True)
    s = T(np.float32(2.0), requires_grad=True)
    y = x * s + s
    assert str(y.device).startswith(device_of(target))
    y.sum().backward()
    assert str(s.grad.device) == "cpu" and float(s.grad.item()) == 3.0 + 3.0
    close(x.grad, np.full(3, 2.0, np.float32), "x.grad")


def test_pool_constants_reach_the_device_once(target):
    """avg_pool2d's divisors and adaptive_avg_pool2d's averaging matrices are copied to the
    device once per geometry, not at every call (a CUDA graph capture refuses such copies)."""
    from tensor.ops import pool
    x = T(np.ones((1, 1, 4, 4), np.float32), device=device_of(target))
    pool._constants.clear()
    for _ in range(2):
        close(F.avg_pool2d(x, 2), np.ones((1, 1, 2, 2), np.float32), "avg_pool2d")
        close(F.adaptive_avg_pool2d(x, 3), np.ones((1, 1, 3, 3), np.float32), "adaptive")
        assert len(pool._constants) == (0 if target == "cpu" else 2)
