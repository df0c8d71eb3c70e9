"""The device-parity harness: run one case on the CPU and on a target device, compare.

A case builds its module (or loss, or function) on the CPU in float32 from a fixed seed; the
harness deep-copies it to the target, feeds both the same inputs, runs forward and a backward
of a fixed random projection of every output, and compares outputs, input gradients,
parameter gradients and buffers (running statistics) within float32 tolerance. The target is
a parameter: "cpu" (a second CPU copy: checks the harness and the state copy), "fake" (the
strict CuPy stand-in of tests/fakecuda: catches numpy arrays meeting device arrays) or
"cuda" (a real GPU).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest

import tensor
from tensor import backend
from tests.helpers import requires_cupy
from tests import fakecuda

RTOL, ATOL = 2e-4, 2e-5   # float32, reduction order differs on a GPU


@pytest.fixture(params=["cpu", "fake", pytest.param("cuda", marks=requires_cupy)])
def target(request, monkeypatch):
    if request.param == "fake":
        fakecuda.install(monkeypatch)
    return request.param


def device_of(target: str) -> str:
    return "cpu" if target == "cpu" else "cuda"


def host(t):
    return None if t is None else backend.to_numpy(t.array if hasattr(t, "array") else t)


def flat(out):
    """Tensors of a (possibly nested) module output, in order."""
    if isinstance(out, tensor.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return []


def close(got, want, what, rtol=RTOL, atol=ATOL):
    got, want = host(got), host(want)
    assert got is not None and want is not None, f"{what}: missing ({got is None}, {want is None})"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    scale = float(np.abs(want).max()) if want.size and want.dtype.kind == "f" else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(1.0, scale), err_msg=what)


def make_inputs(specs, seed=0):
    """numpy inputs from specs: a shape (float32 N(0,1), requires grad), ("long", high, shape),
    ("uniform", lo, hi, shape) (requires grad), ("bool", p, shape), ("const", array)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        if isinstance(s, tuple) and s and isinstance(s[0], str):
            kind = s[0]
            if kind == "long":
                out.append((rng.integers(0, s[1], size=s[2]).astype(np.int64), False))
            elif kind == "uniform":
                out.append((rng.uniform(s[1], s[2], size=s[3]).astype(np.float32), True))
            elif kind == "bool":
                out.append((rng.random(s[2]) < s[1], False))
            elif kind == "const":
                out.append((np.asarray(s[1]), False))
            else:
                raise ValueError(f"make_inputs: unknown spec {s!r}")
        else:
            out.append((rng.standard_normal(s).astype(np.float32), True))
    return out


def to_tensors(arrays, dev, grad=True):
    return [tensor.tensor(a, device=dev, requires_grad=grad and g and a.dtype.kind == "f")
            for a, g in arrays]


def _params(m):
    return dict(m.named_parameters()) if isinstance(m, tensor.nn.Module) else {}


def _buffers(m):
    return dict(m.named_buffers()) if isinstance(m, tensor.nn.Module) else {}


def check_state_copied(m_cpu, m_dev, dev):
    """The copy holds the same values, on the target device, in its own storage."""
    for name, p in {**_params(m_cpu), **_buffers(m_cpu)}.items():
        q = {**_params(m_dev), **_buffers(m_dev)}[name]
        assert str(q.device).split(":")[0] == dev, f"{name} is on {q.device}, expected {dev}"
        assert q.array is not p.array, f"{name}: the copy shares the CPU model's array"
        np.testing.assert_array_equal(host(q), host(p), err_msg=f"state copy of {name}")


def run(fn, m, tensors, seed=1):
    """Forward fn(m, *tensors), then backward of sum(out_i * w_i) with fixed random w_i."""
    outs = flat(fn(m, *tensors))
    rng = np.random.default_rng(seed)
    loss = None
    for o in outs:
        if o.is_floating_point() and o.requires_grad:
            w = rng.standard_normal(o.shape).astype(np.float32)
            term = (o.float() * tensor.tensor(w, device=o.device)).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    return outs


def check_case(target, build, specs, fn=None, train=True, rtol=RTOL, atol=ATOL, amp=None):
    """Compare build()'s forward and backward on the CPU and on `target`.

    With amp (a dtype), the target runs under autocast(target's device type, amp) and its
    outputs are compared after a cast to the CPU's float32; returns the target's outputs.
    """
    fn = fn or (lambda m, *xs: m(*xs))
    dev = device_of(target)
    fn_dev = fn if amp is None else _autocast(fn, dev, amp)
    tensor.manual_seed(0)
    m_cpu = build()
    if isinstance(m_cpu, tensor.nn.Module):
        m_cpu.train(train)
        m_dev = copy.deepcopy(m_cpu).to(dev)
        check_state_copied(m_cpu, m_dev, dev)
    else:
        m_dev = m_cpu
    arrays = make_inputs(specs)
    x_cpu, x_dev = to_tensors(arrays, "cpu"), to_tensors(arrays, dev)
    outs_cpu, outs_dev = run(fn, m_cpu, x_cpu), run(fn_dev, m_dev, x_dev)
    assert len(outs_cpu) == len(outs_dev)
    for i, (a, b) in enumerate(zip(outs_dev, outs_cpu)):
        assert str(a.device).split(":")[0] == dev, f"output {i} is on {a.device}, not {dev}"
        close(a if amp is None else a.to(b.dtype), b, f"output {i}", rtol, atol)
    for i, (a, b) in enumerate(zip(x_dev, x_cpu)):
        if b.requires_grad and (a.grad is not None or b.grad is not None):
            close(a.grad, b.grad, f"grad of input {i}", rtol, atol)
    p_dev = _params(m_dev)
    for name, p in _params(m_cpu).items():
        if p.grad is not None or p_dev[name].grad is not None:
            close(p_dev[name].grad, p.grad, f"grad of {name}", rtol, atol)
    b_dev = _buffers(m_dev)
    for name, b in _buffers(m_cpu).items():
        if b is not None:
            close(b_dev[name], b, f"buffer {name}", rtol, atol)
    return outs_dev


def _autocast(fn, dev, dtype):
    def wrapped(m, *xs):
        with tensor.amp.autocast(dev, dtype=dtype):
            return fn(m, *xs)
    return wrapped


def check_optimizer(target, make_opt, steps=3):
    """A few steps of make_opt(params) on a small MLP: parameters match after every step."""
    dev = device_of(target)
    tensor.manual_seed(0)
    nn = tensor.nn
    m_cpu = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    m_dev = copy.deepcopy(m_cpu).to(dev)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = rng.standard_normal((5, 3)).astype(np.float32)
    pairs = []
    for m, d in ((m_cpu, "cpu"), (m_dev, dev)):
        xt, yt = tensor.tensor(x, device=d), tensor.tensor(y, device=d)
        opt = make_opt(m.parameters())

        def closure(m=m, opt=opt, xt=xt, yt=yt):
            opt.zero_grad()
            loss = tensor.nn.functional.mse_loss(m(xt), yt)
            loss.backward()
            return loss
        pairs.append((m, opt, closure))
    for step in range(steps):
        losses = [opt.step(closure) for _, opt, closure in pairs]
        close(losses[1], losses[0], f"loss at step {step}")
        for (name, p), q in zip(m_cpu.named_parameters(), m_dev.parameters()):
            close(q, p, f"{name} after step {step}")
    sd_cpu, sd_dev = pairs[0][1].state_dict(), pairs[1][1].state_dict()
    for k, st in sd_cpu["state"].items():
        for name, v in st.items():
            if isinstance(v, tensor.Tensor):
                close(sd_dev["state"][k][name], v, f"optimizer state {k}.{name}")
