"""Fused CUDA kernels (tensor/cuda/kernels): GELU, LayerNorm, softmax + cross-entropy.

Three layers: every kernel source compiles offline with NVRTC for compute_90 (needs CuPy's
NVRTC bindings, not a GPU); on the CPU the fused paths run end to end on a fake device
(tests/fakecuda: numpy transcriptions of the kernels, launch arguments checked against the
C signatures); on a GPU each fused op against its eager path on the same device,
and float64 directional-derivative checks. The optimizers' multi-tensor kernels are tested in
test_fused_optim.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import tensor
import tensor.nn.functional as F
from tensor import backend
from tests import fakecuda
from tests.helpers import requires_cupy

try:
    from cupy_backends.cuda.libs import nvrtc
    nvrtc.getVersion()   # loads libnvrtc: CuPy without the NVRTC library can't compile either
except Exception:  # CI has no CuPy
    nvrtc = None


# -- offline compile ----------------------------------------------------------------------------
@pytest.mark.skipif(nvrtc is None, reason="needs CuPy's NVRTC bindings (cupy_backends) and "
                                          "libnvrtc; no GPU needed")
@pytest.mark.parametrize("module", ["gelu", "layer_norm", "softmax_xent", "optim"])
def test_kernel_source_compiles_for_compute_90(module):
    from tensor.cuda.kernels._sources import MODULES, name_expressions
    prog = nvrtc.createProgram(MODULES[module][0], f"{module}.cu", [], [])
    names = name_expressions(module)
    for ne in names:
        nvrtc.addNameExpression(prog, ne)
    try:
        # the options CuPy 14 adds for a RawModule (cupy/cuda/compiler.py)
        nvrtc.compileProgram(prog, ["-arch=compute_90", "--device-as-default-execution-space",
                                    "-ftz=true"])
    except Exception as e:
        raise AssertionError(f"{module}: {e}\n{nvrtc.getProgramLog(prog)}") from e
    for ne in names:  # every instance the Python side asks for exists
        assert nvrtc.getLoweredName(prog, ne)


# -- CPU: dispatch stays eager, the create_graph helper, the env switch -------------------------
def test_env_switch_and_cpu_arrays_never_fuse(monkeypatch):
    from tensor.cuda import kernels
    assert not kernels.fusable(np.zeros(3, np.float32))

    fakecuda.install(monkeypatch, fused=True)  # CuPy present, the switch unset
    assert kernels.enabled()
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert not kernels.enabled()


def test_graph_backward_gives_differentiable_gradients():
    # the create_graph path of a fused op: rerun eagerly and differentiate (CPU-checkable)
    from tensor.cuda import kernels
    from tensor._tensor import from_op
    rng = np.random.default_rng(0)
    a = tensor.tensor(rng.normal(size=(4, 5)), requires_grad=True)

    def fake_fused_gelu(t):
        y = F.gelu(t).detach().array
        return from_op(y, (t,), lambda gy: kernels._graph_backward(lambda: F.gelu(t), (t,), gy),
                       "gelu")
    g1, = tensor.autograd.grad(fake_fused_gelu(a).sum(), [a], create_graph=True)
    g2, = tensor.autograd.grad(F.gelu(a).sum(), [a], create_graph=True)
    np.testing.assert_allclose(g1.detach().numpy(), g2.detach().numpy(), rtol=1e-12)
    h1, = tensor.autograd.grad((g1 * g1).sum(), [a])
    h2, = tensor.autograd.grad((g2 * g2).sum(), [a])
    np.testing.assert_allclose(h1.numpy(), h2.numpy(), rtol=1e-12)


# -- CPU: the fused paths end to end on a fake device (tests/fakecuda) --------------------------
@pytest.fixture
def fake_gpu(monkeypatch):
    return fakecuda.install(monkeypatch, fused=True)


def _fake_vs_cpu(cp, fn, arrays, gy_seed=7):
    """fn on fake-device leaves (fused) and on CPU leaves (eager): outputs and gradients."""
    out = []
    for wrap in (cp.asarray, np.array):
        leaves = [tensor.Tensor(wrap(a.copy())).requires_grad_() for a in arrays]
        y = fn(*leaves)
        gy = np.asarray(np.random.default_rng(gy_seed).normal(size=tuple(y.shape)), y.array.dtype)
        gs = tensor.autograd.grad([y], leaves, [tensor.Tensor(wrap(gy))])
        out.append((backend.to_numpy(y.array), [backend.to_numpy(g.array) for g in gs]))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fake_device_gelu(fake_gpu, dtype, approximate):
    x = (np.random.default_rng(0).normal(size=(6, 7)) * 3).astype(dtype)
    res = _fake_vs_cpu(fake_gpu, lambda t: F.gelu(t, approximate=approximate), [x])
    assert fakecuda.log.calls == ["gelu_fwd", "gelu_bwd"]
    _assert_close_pairs(res, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("xshape,nshape,has_w,has_b", LN_CASES_CPU := [
    ((4, 3, 8), (8,), True, True), ((300, 5), (5,), True, False),
    ((2, 3, 4), (3, 4), False, True), ((3, 6), (6,), False, False)])
def test_fake_device_layer_norm(fake_gpu, xshape, nshape, has_w, has_b):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=xshape) * 2 + 1]
    arrays += [rng.normal(size=nshape) + 1] if has_w else []
    arrays += [rng.normal(size=nshape)] if has_b else []

    def fn(x, *wb):
        return F.layer_norm(x, nshape, wb[0] if has_w else None, wb[-1] if has_b else None)
    res = _fake_vs_cpu(fake_gpu, fn, arrays)
    assert fakecuda.log.calls[:2] == ["ln_fwd", "ln_bwd_dx"]
    assert ("ln_bwd_dwdb_partial" in fakecuda.log.calls) == (has_w or has_b)
    _assert_close_pairs(res, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", XENT_CASES_CPU := [
    dict(), dict(reduction="sum"), dict(reduction="none", ignore_index=1),
    dict(weight=True, label_smoothing=0.1), dict(weight=True, reduction="none"),
    dict(ignore_index=2, label_smoothing=0.2, reduction="sum")])
def test_fake_device_cross_entropy(fake_gpu, kw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 5)) * 3
    t = rng.integers(0, 5, size=9)
    kw = dict(kw)
    w = rng.uniform(0.5, 2.0, size=5) if kw.pop("weight", False) else None
    if "ignore_index" in kw:
        t[::3] = kw["ignore_index"]

    def fn(logits):
        wrap = fake_gpu.asarray if isinstance(logits.array, fake_gpu.ndarray) else np.asarray
        wt = tensor.Tensor(wrap(w)) if w is not None else None
        return F.cross_entropy(logits, tensor.Tensor(wrap(t)), weight=wt, **kw)
    res = _fake_vs_cpu(fake_gpu, fn, [x])
    assert fakecuda.log.calls[0] == "xent_fwd" and fakecuda.log.calls[-1] == "xent_bwd"
    _assert_close_pairs(res, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn_name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", [((4, 7), -1), ((2, 3, 5), 2), ((3, 4), 0)])
def test_fake_device_softmax(fake_gpu, fn_name, shape, dim):
    x = np.random.default_rng(0).normal(size=shape) * 3
    res = _fake_vs_cpu(fake_gpu, lambda t: getattr(F, fn_name)(t, dim), [x])
    last = dim in (-1, len(shape) - 1)
    assert fakecuda.log.calls == (["softmax_fwd", "softmax_bwd"] if last else [])
    _assert_close_pairs(res, rtol=1e-12, atol=1e-14)


def test_fake_device_cross_entropy_flags_bad_targets_for_the_device_assert(fake_gpu):
    from tensor import _device_checks
    x = tensor.Tensor(fake_gpu.asarray(np.zeros((4, 3)))).requires_grad_()
    t = tensor.Tensor(fake_gpu.asarray(np.array([0, 3, -100, -1])))
    loss = F.cross_entropy(x, t)
    (name, (bad, slot, _)), = fakecuda.log.checks   # the mask went to the deferred assert
    assert name == "zgrad_device_assert" and bad.tolist() == [False, True, False, True]
    assert "out of bounds for 3 classes" in _device_checks._slot_info[slot][1]
    with pytest.raises(IndexError, match="out of bounds for 3 classes"):
        backend.to_numpy(loss.array)                # raised at the next host read
    assert np.isnan(loss.array.get())


def test_fake_kernel_checks_arguments_against_the_c_signature(fake_gpu):
    from tensor.cuda.kernels import kernel
    x = fake_gpu.asarray(np.zeros(4, np.float32))
    k = kernel("gelu", "gelu_fwd", np.float32)
    k((1,), (256,), (x, x.copy(), np.int64(4), np.int32(0)))
    for bad in [(x, x, np.int32(4), np.int32(0)),            # long long n given an int32
                (x, x.astype(np.float64), np.int64(4), np.int32(0)),  # T* of the wrong dtype
                (x, x, np.int64(4))]:                          # an argument missing
        with pytest.raises(AssertionError):
            k((1,), (256,), bad)


# -- GPU ----------------------------------------------------------------------------------------
def _cuda(a, requires_grad=True):
    return tensor.tensor(a, device="cuda", requires_grad=requires_grad)


_LAUNCHED = []  # kernel names the fused paths asked for, per _fused_and_eager call


def _fused_and_eager(monkeypatch, fn, *arrays):
    """(outputs, grads) of fn on fresh CUDA leaves, fused and with ZGRAD_FUSED_KERNELS=0; the
    fused run's kernel names land in _LAUNCHED (the eager run must launch none)."""
    from tensor.cuda import kernels
    from tensor.cuda.kernels import ops as kops
    real = kops.kernel
    monkeypatch.setattr(kops, "kernel", lambda m, name, dt=None: (_LAUNCHED.append(name),
                                                                  real(m, name, dt))[1])
    _LAUNCHED.clear()
    res = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.ENV_SWITCH, switch)
        n_before = len(_LAUNCHED)
        leaves = [_cuda(a) for a in arrays]
        y = fn(*leaves)
        rng = np.random.default_rng(7)
        gy = np.asarray(rng.normal(size=tuple(y.shape)), arrays[0].dtype)
        gy = tensor.tensor(gy, device="cuda")
        gs = tensor.autograd.grad([y], leaves, [gy])
        res.append((y.detach().cpu().numpy(), [g.cpu().numpy() for g in gs]))
        assert switch == "1" or len(_LAUNCHED) == n_before, "ZGRAD_FUSED_KERNELS=0 launched"
    monkeypatch.delenv(kernels.ENV_SWITCH)
    return res


def _assert_close_pairs(res, rtol=2e-5, atol=2e-6):
    (yf, gf), (ye, ge) = res
    np.testing.assert_allclose(yf, ye, rtol=rtol, atol=atol)
    for a, b in zip(gf, ge):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _directional_check(fn, *arrays, eps=1e-6, rtol=1e-6):
    """float64: d/dt f(x + t d) at 0 by central differences vs <grad f, d>, 3 directions."""
    leaves = [_cuda(a) for a in arrays]
    gs = tensor.autograd.grad([fn(*leaves)], leaves)
    rng = np.random.default_rng(3)
    for _ in range(3):
        ds = [rng.normal(size=a.shape) for a in arrays]
        f = [float(fn(*[_cuda(a + s * eps * d, False) for a, d in zip(arrays, ds)]).cpu())
             for s in (1, -1)]
        num = (f[0] - f[1]) / (2 * eps)
        ana = sum(float((g.cpu().numpy() * d).sum()) for g, d in zip(gs, ds))
        assert abs(num - ana) <= rtol * max(1.0, abs(ana)) * 10, (num, ana)


def _fused_ran(*names):
    return all(n in _LAUNCHED for n in names)


@requires_cupy
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_fused_matches_eager(monkeypatch, approximate):
    x = np.random.default_rng(0).normal(size=(33, 257)).astype(np.float32) * 3
    _assert_close_pairs(_fused_and_eager(monkeypatch, lambda t: F.gelu(t, approximate=approximate),
                                         x))
    assert _fused_ran("gelu_fwd", "gelu_bwd")
    x64 = np.random.default_rng(1).normal(size=(5, 7)) * 2
    _directional_check(lambda t: (F.gelu(t, approximate=approximate) ** 2).sum(), x64)


@requires_cupy
def test_gelu_fused_double_backward_matches_eager(monkeypatch):
    from tensor.cuda import kernels
    x = np.random.default_rng(2).normal(size=(4, 6))
    out = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.ENV_SWITCH, switch)
        a = _cuda(x)
        g, = tensor.autograd.grad(F.gelu(a).sum(), [a], create_graph=True)
        h, = tensor.autograd.grad((g * g).sum(), [a])
        out.append(h.cpu().numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-10)


LN_CASES = [((8, 16, 128), (128,), True, True), ((6, 5, 7), (5, 7), True, False),
            ((300, 33), (33,), False, True), ((4, 2000), (2000,), False, False)]


@requires_cupy
@pytest.mark.parametrize("xshape,nshape,has_w,has_b", LN_CASES)
def test_layer_norm_fused_matches_eager(monkeypatch, xshape, nshape, has_w, has_b):
    rng = np.random.default_rng(0)
    arrays = [(rng.normal(size=xshape) * 2 + 1).astype(np.float32)]
    if has_w:
        arrays.append((rng.normal(size=nshape) + 1).astype(np.float32))
    if has_b:
        arrays.append(rng.normal(size=nshape).astype(np.float32))

    def fn(x, *wb):
        w = wb[0] if has_w else None
        b = wb[-1] if has_b else None
        return F.layer_norm(x, nshape, w, b)
    _assert_close_pairs(_fused_and_eager(monkeypatch, fn, *arrays), rtol=1e-4, atol=2e-5)
    assert _fused_ran("ln_fwd", "ln_bwd_dx")
    arrays64 = [a.astype(np.float64) for a in arrays]
    _directional_check(lambda *t: (fn(*t) * tensor.tensor(
        np.random.default_rng(9).normal(size=xshape), device="cuda")).sum(), *arrays64)


XENT_CASES = [dict(), dict(reduction="sum"), dict(reduction="none"),
              dict(weight=True), dict(weight=True, label_smoothing=0.1),
              dict(ignore_index=2, label_smoothing=0.2), dict(weight=True, reduction="none",
                                                             ignore_index=1)]


@requires_cupy
@pytest.mark.parametrize("kw", XENT_CASES, ids=[str(i) for i in range(len(XENT_CASES))])
@pytest.mark.parametrize("N,C", [(64, 10), (5, 3000)])
def test_cross_entropy_fused_matches_eager(monkeypatch, kw, N, C):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, C)) * 3).astype(np.float32)
    t_np = rng.integers(0, C, size=N)
    if "ignore_index" in kw:
        t_np[::4] = kw["ignore_index"]
    kw = dict(kw)
    w_np = rng.uniform(0.5, 2.0, size=C) if kw.pop("weight", False) else None

    def fn(logits):
        t = tensor.tensor(t_np, device="cuda")
        w = tensor.tensor(w_np.astype(logits.array.dtype), device="cuda") if w_np is not None \
            else None
        return F.cross_entropy(logits, t, weight=w, **kw)
    _assert_close_pairs(_fused_and_eager(monkeypatch, fn, x), rtol=1e-4, atol=1e-6)
    assert _fused_ran("xent_fwd", "xent_bwd")
    _directional_check(lambda t: fn(t).sum(), x.astype(np.float64))


@requires_cupy
@pytest.mark.parametrize("fn_name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(64, 10), (3, 5, 3000)])
def test_softmax_fused_matches_eager(monkeypatch, fn_name, shape):
    x = (np.random.default_rng(0).normal(size=shape) * 3).astype(np.float32)
    fn = getattr(F, fn_name)
    _assert_close_pairs(_fused_and_eager(monkeypatch, lambda t: fn(t, -1), x), rtol=1e-5,
                        atol=1e-6)
    assert _fused_ran("softmax_fwd", "softmax_bwd")
    w = tensor.tensor(np.random.default_rng(4).normal(size=(4, 6)), device="cuda")
    _directional_check(lambda t: (fn(t, -1) * w).sum(),
                       np.random.default_rng(2).normal(size=(4, 6)))


@requires_cupy
def test_cross_entropy_out_of_range_target_is_nan_or_a_deferred_index_error():
    from tensor import backend
    x = _cuda(np.zeros((3, 4), np.float32))
    loss = F.cross_entropy(x, tensor.tensor([0, 9, 1], device="cuda"))
    if getattr(backend, "check_device_errors", None) is None:
        assert np.isnan(float(loss.cpu()))
    else:  # the deferred device assert of tensor.backend raises at the next host read
        with pytest.raises(IndexError, match="out of bounds"):
            float(loss.cpu())
            backend.check_device_errors()
