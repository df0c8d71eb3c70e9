"""The optimizers' foreach / fused / capturable flags and the multi-tensor CUDA updates.

On the CPU: PyTorch's checks and identical updates, then the multi-tensor path end to end on
a fake device (tests/fakecuda); on a GPU: the multi-tensor kernels against the
per-parameter loop, and a capturable Adam replayed from a CUDA graph.
"""
from __future__ import annotations

import numpy as np
import pytest

import tensor
import tensor.nn as nn
from tensor import optim
from tests import fakecuda
from tests.helpers import requires_cupy


# -- CPU: optimizer flags -----------------------------------------------------------------------
def _params(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(tensor.tensor(rng.normal(size=s))) for s in [(4, 3), (3,), (2, 2)][:n]]


def _run(make, steps=4, seed=0, params=None):
    ps = params if params is not None else _params(seed)
    opt = make(ps)
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        for p in ps:
            g = rng.normal(size=tuple(p.shape)).astype(p.array.dtype)
            p.grad = tensor.tensor(g, device=p.device)
        opt.step()
    return ps, opt


ADAM_KW = [dict(), dict(weight_decay=0.1), dict(amsgrad=True, maximize=True),
           dict(weight_decay=0.1, decoupled_weight_decay=True, amsgrad=True)]
SGD_KW = [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3, weight_decay=0.05),
          dict(momentum=0.9, nesterov=True, maximize=True)]
OPTS = [("Adam", kw) for kw in ADAM_KW] + [("AdamW", dict(amsgrad=True))] + \
       [("SGD", kw) for kw in SGD_KW]


@pytest.mark.parametrize("name,kw", OPTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTS)])
@pytest.mark.parametrize("flags", [dict(fused=True), dict(foreach=True),
                                   dict(foreach=False, fused=False)])
def test_flags_on_cpu_match_the_plain_update_exactly(name, kw, flags):
    cls = getattr(optim, name)
    plain, _ = _run(lambda ps: cls(ps, lr=0.05, **kw))
    flagged, opt = _run(lambda ps: cls(ps, lr=0.05, **kw, **flags))
    for a, b in zip(plain, flagged):
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    group = opt.state_dict()["param_groups"][0]
    assert group["fused"] == flags.get("fused") and group["foreach"] == flags.get("foreach")
    if name != "SGD":
        st = opt.state[flagged[0]]["step"]
        assert st.device.type == "cpu" and st.dtype == tensor.float32 and float(st) == 4.0


def test_tensor_lr_on_cpu_matches_a_float_lr():
    a, _ = _run(lambda ps: optim.Adam(ps, lr=0.05, fused=True))
    b, _ = _run(lambda ps: optim.Adam(ps, lr=tensor.tensor(0.05, dtype=tensor.float64),
                                      fused=True))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.detach().numpy(), y.detach().numpy())


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW, optim.SGD])
def test_bad_flag_combinations_raise_like_torch(cls):
    ps = _params()
    with pytest.raises(RuntimeError, match="cannot be `True` together"):
        cls(ps, foreach=True, fused=True)
    with pytest.raises(ValueError, match="1-element"):
        cls(ps, lr=tensor.tensor([0.1, 0.2]))
    with pytest.raises(RuntimeError, match="does not support `differentiable`"):
        cls(ps, fused=True, differentiable=True)
    if cls is not optim.SGD:
        with pytest.raises(ValueError, match="lr as a Tensor"):
            cls(ps, lr=tensor.tensor(0.1), foreach=True)
        opt = cls(ps, capturable=True)  # accepted; the CPU step refuses, as torch's
        for p in ps:
            p.grad = tensor.zeros_like(p)
        with pytest.raises(AssertionError, match="capturable=True"):
            opt.step()
    else:
        cls(ps, lr=tensor.tensor(0.1), foreach=True)  # SGD allows it
        with pytest.raises(TypeError):
            cls(ps, capturable=True)  # SGD has no capturable in PyTorch either


def test_fused_needs_float_params_at_step():
    p = tensor.zeros(3, dtype=tensor.int64)
    p.grad = tensor.zeros(3, dtype=tensor.int64)
    opt = optim.SGD([p], fused=True)
    with pytest.raises(RuntimeError, match="floating point"):
        opt.step()


# -- CPU: the fused paths end to end on a fake device (tests/fakecuda) --------------------------
@pytest.fixture
def fake_gpu(monkeypatch):
    return fakecuda.install(monkeypatch, fused=True)


FAKE_OPTS = OPTS + [("Adam", dict(capturable=True, amsgrad=True, weight_decay=0.1))]


@pytest.mark.parametrize("name,kw", FAKE_OPTS, ids=[f"{n}-{i}" for i, (n, _) in
                                                    enumerate(FAKE_OPTS)])
@pytest.mark.parametrize("flags", [dict(fused=True), dict()])
def test_fake_device_multi_tensor_optimizers(fake_gpu, name, kw, flags):
    cls = getattr(optim, name)
    ref, _ = _run(lambda ps: cls(ps, lr=0.05, **{k: v for k, v in kw.items()
                                                 if k != "capturable"}))
    fake_params = [nn.Parameter(tensor.Tensor(fake_gpu.asarray(p.detach().numpy())))
                   for p in _params()]
    got, opt = _run(lambda ps: cls(ps, lr=0.05, **kw, **flags), params=fake_params)
    kname = "sgd_mt" if name == "SGD" else "adam_mt"
    assert fakecuda.log.calls.count(kname) == 4  # one launch per step for all three params
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.array.get(), a.detach().numpy(), rtol=1e-12)
    if name != "SGD":
        st = opt.state[got[0]]["step"].array
        on_dev = bool(flags.get("fused") or kw.get("capturable"))
        assert isinstance(st, fake_gpu.ndarray) == on_dev and float(st) == 4.0
        assert fakecuda.log.calls.count("zg_inc_steps") == (4 if on_dev else 0)
    n_tables, n_calls = len(opt._mt_tables), fakecuda.log.calls.count(kname)
    assert 1 <= n_tables <= 4  # fresh gradient arrays: a table per distinct set of pointers
    opt.step()  # the same arrays again: the cached table, still one launch
    assert len(opt._mt_tables) == n_tables and fakecuda.log.calls.count(kname) == n_calls + 1


def _cuda(a, requires_grad=True):
    return tensor.tensor(a, device="cuda", requires_grad=requires_grad)


def test_fake_device_table_miss_during_a_capture_uses_the_spare_pinned_block(fake_gpu):
    # the graph recipe: warm-up step, zero_grad(set_to_none), capture -> fresh gradient arrays
    ps = [nn.Parameter(tensor.Tensor(fake_gpu.asarray(p.detach().numpy()))) for p in _params()]
    ref = _params()
    opt = optim.Adam(ps, lr=0.05, capturable=True)
    ref_opt = optim.Adam(ref, lr=0.05)
    rng = np.random.default_rng(1)
    held = []  # old gradients stay alive: new ones get fresh addresses, as from a capture's pool
    for step in range(2):
        gs = [rng.normal(size=tuple(p.shape)) for p in ps]
        for p, q, g in zip(ps, ref, gs):
            held.append(p.grad)
            p.grad = tensor.Tensor(fake_gpu.asarray(g))
            q.grad = tensor.tensor(g.copy())
        fakecuda.runtime.set_capturing(step == 1)
        opt.step()
        graph = fakecuda.runtime.set_capturing(False)
        if graph is not None:  # the captured step runs at its replay
            graph.launch()
        ref_opt.step()
    tables = opt._mt_tables
    assert [e.pinned_forever for e in tables._entries.values()] == [False, True]
    assert tables._spare[2] > 0  # carved from the block set aside by the warm-up's miss
    for a, b in zip(ref, ps):
        np.testing.assert_allclose(b.array.get(), a.detach().numpy(), rtol=1e-12)
    fakecuda.runtime.set_capturing(True)
    for p in ps:  # a second miss in a capture: the spare is used up
        p.grad = tensor.Tensor(fake_gpu.asarray(np.ones(tuple(p.shape))))
    tables._spare[2] = tables._spare[1]
    with pytest.raises(RuntimeError, match="warm-up"):
        opt.step()


@pytest.mark.parametrize("kw", [dict(fused=True), dict(capturable=True), dict(foreach=True)])
def test_fake_device_state_dict_round_trip_keeps_step_where_torch_does(fake_gpu, kw):
    ps = [nn.Parameter(tensor.Tensor(fake_gpu.asarray(p.detach().numpy()))) for p in _params()]
    _, opt = _run(lambda ps: optim.Adam(ps, lr=0.05, **kw), steps=2, params=ps)
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    opt2 = optim.Adam(ps, lr=0.05, **kw)
    opt2.load_state_dict(sd)
    on_dev = "foreach" not in kw
    for st in opt2.state.values():
        assert isinstance(st["step"].array, fake_gpu.ndarray) == on_dev
        assert st["step"].array.dtype == np.float32 and float(st["step"].array) == 2.0
        assert isinstance(st["exp_avg"].array, fake_gpu.ndarray)


# -- GPU optimizers -----------------------------------------------------------------------------
def _cuda_params(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return [nn.Parameter(tensor.tensor(rng.normal(size=s).astype(dtype), device="cuda"))
            for s in [(64, 33), (33,), (7, 5, 3), (1,)]]


GPU_OPTS = OPTS + [("Adam", dict(capturable=True, amsgrad=True, weight_decay=0.1))]


@requires_cupy
@pytest.mark.parametrize("name,kw", GPU_OPTS, ids=[f"{n}-{i}" for i, (n, _) in
                                                   enumerate(GPU_OPTS)])
@pytest.mark.parametrize("flags", [dict(fused=True), dict(foreach=True), dict()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_tensor_optimizers_match_the_loop_on_cuda(name, kw, flags, dtype):
    cls = getattr(optim, name)
    ref, _ = _run(lambda ps: cls(ps, lr=0.05, foreach=False, fused=False, **kw),
                  params=_cuda_params(dtype))
    got, opt = _run(lambda ps: cls(ps, lr=0.05, **kw, **flags), params=_cuda_params(dtype))
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-13)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().cpu().numpy(), **tol)
    assert len(opt.__dict__.get("_mt_tables", ())) >= 1  # the multi-tensor path ran
    if name != "SGD":
        st = opt.state[got[0]]["step"]
        dev = "cuda" if flags.get("fused") or kw.get("capturable") else "cpu"
        assert st.device.type == dev and float(st.cpu()) == 4.0


@requires_cupy
def test_capturable_adam_replayed_from_a_cuda_graph_equals_eager_steps():
    import cupy
    n_replays = 5
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=s).astype(np.float32) for s in [(64, 33), (33,), (7, 5, 3), (1,)]]

    def setup(**kw):
        ps = _cuda_params()
        for p, g in zip(ps, grads):
            p.grad = tensor.tensor(g, device="cuda")  # static gradients, as in a captured step
        return ps, optim.Adam(ps, lr=tensor.tensor(0.01, dtype=tensor.float64, device="cuda"),
                              amsgrad=True, weight_decay=0.01, **kw)
    ref, ref_opt = setup(foreach=False)
    for _ in range(1 + n_replays):
        ref_opt.step()
    ps, opt = setup(capturable=True)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        opt.step()  # warm-up: state, compiled kernels and the cached table
        graphs = getattr(tensor.cuda, "CUDAGraph", None)
        if graphs is not None and hasattr(tensor.cuda, "graph"):
            g = tensor.cuda.CUDAGraph()
            with tensor.cuda.graph(g):
                opt.step()
            replay = g.replay
        else:
            stream.begin_capture()
            opt.step()
            g = stream.end_capture()
            replay = lambda: g.launch(stream)  # noqa: E731
        for p in ps:  # the capture ran nothing: still one step
            assert float(opt.state[p]["step"].cpu()) == 1.0
        for _ in range(n_replays):
            replay()
        stream.synchronize()
    for a, b in zip(ref, ps):
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert float(opt.state[ps[0]]["step"].cpu()) == 1.0 + n_replays


@requires_cupy
def test_graphed_training_step_with_fused_ops_and_capturable_adam():
    # PyTorch's whole-step recipe (tensor/cuda/graphs.py) on a model whose ops take the fused
    # kernels; the gradients are re-allocated inside the capture (zero_grad(set_to_none)).
    if not hasattr(tensor.cuda, "CUDAGraph"):
        pytest.skip("tensor.cuda.CUDAGraph is not on this branch yet")
    import tensor.nn.functional as F
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(8, 16)).astype(np.float32) for _ in range(4)]
    ys = [rng.integers(0, 5, size=8) for _ in range(4)]

    def build():
        tensor.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 5))
        model.cuda()
        return model, optim.Adam(model.parameters(), lr=1e-2, capturable=True)

    def step(model, opt, x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss
    ref, ref_opt = build()
    for x, y in zip(xs, ys):
        step(ref, ref_opt, tensor.tensor(x, device="cuda"), tensor.tensor(y, device="cuda"))
    model, opt = build()
    static_x, static_y = tensor.tensor(xs[0], device="cuda"), tensor.tensor(ys[0], device="cuda")
    s = tensor.cuda.Stream()
    s.wait_stream(tensor.cuda.current_stream())
    with tensor.cuda.stream(s):
        step(model, opt, static_x, static_y)  # the warm-up is the first real step
    tensor.cuda.current_stream().wait_stream(s)
    g = tensor.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with tensor.cuda.graph(g):
        static_loss = F.cross_entropy(model(static_x), static_y)
        static_loss.backward()
        opt.step()
    for x, y in zip(xs[1:], ys[1:]):
        static_x.array[...] = tensor.tensor(x, device="cuda").array
        static_y.array[...] = tensor.tensor(y, device="cuda").array
        g.replay()
    tensor.cuda.synchronize()
    for a, b in zip(ref.parameters(), model.parameters()):
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().cpu().numpy(),
                                   rtol=1e-4, atol=1e-5)
