"""CUDA graphs (tensor.cuda.CUDAGraph / graph): the capture protocol against a recording fake
of CuPy, and captured training steps against the same eager steps on a GPU (requires_cupy)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import tensor
import tensor.cuda as tcuda
from tensor import nn
from tensor import random as trandom
from tensor.cuda import graphs, memory
from tests import fakecuda
from tests.helpers import requires_cupy


@pytest.fixture
def fake(monkeypatch):
    cp = fakecuda.install(monkeypatch)
    monkeypatch.setattr(trandom.default_generator, "_cupy_rng", object())
    yield cp
    assert graphs._graph_in_capture() is None and fakecuda.runtime.state.allocator is None
    assert getattr(trandom._capture, "keep", None) is None


# -- protocol (fake CuPy) -------------------------------------------------------------------------
def test_capture_uses_a_side_stream_and_a_private_pool(fake):
    g = tcuda.CUDAGraph()
    with tcuda.graph(g):
        s = fake.cuda.get_current_stream()
        assert s.ptr != 0 and s.non_blocking and s.capturing == 0   # "global"
        assert tcuda.is_current_stream_capturing()
        assert fakecuda.runtime.state.allocator == g.pool().malloc
        fakecuda.runtime.state.allocator(256)               # an array made in the capture
    assert fake.cuda.get_current_stream().ptr == 0 and not s.is_capturing()
    assert g.pool().mempool.mallocs == [256] and g.pool() in memory._graph_pools
    assert trandom.default_generator._cupy_rng in g._keep          # its state is baked in
    g.replay()
    assert fake.cuda.get_current_stream().log[-1] == ("launch", g._graph)
    side = tcuda.Stream()
    with tcuda.stream(side):
        g.replay()                                                   # on the current stream
    assert side.cupy_stream.log == [("launch", g._graph)]
    with pytest.raises(RuntimeError, match="already holds a capture"):
        g.capture_begin()
    g.reset()
    with pytest.raises(RuntimeError, match="nothing was captured"):
        g.replay()


def test_replays_mark_the_device_asserts_captured_in_them_pending(fake, monkeypatch):
    from tensor import _device_checks
    monkeypatch.setattr(_device_checks, "_pending", {})
    quiet, checked = tcuda.CUDAGraph(), tcuda.CUDAGraph()
    with tcuda.graph(quiet):
        pass
    with tcuda.graph(checked):
        s = fake.cuda.get_current_stream()
        _device_checks._pending.setdefault(0, {})[s.ptr] = s   # a device assert in the step
    _device_checks._pending.clear()                            # the first host read checked it
    quiet.replay()
    assert _device_checks._pending == {}
    checked.replay()              # its flags were written again: the next host read reads them
    cur = fake.cuda.get_current_stream()
    assert _device_checks._pending == {0: {cur.ptr: cur}}
    checked.reset()
    assert checked._flags == ()


def test_graphs_share_a_pool_through_handles(fake):
    g1, g2, g3 = tcuda.CUDAGraph(), tcuda.CUDAGraph(), tcuda.CUDAGraph()
    with tcuda.graph(g1):
        s1 = fake.cuda.get_current_stream()
    with tcuda.graph(g2, pool=g1.pool()):
        assert fake.cuda.get_current_stream() is s1   # one capture stream: one arena per pool
    assert g2.pool() is g1.pool()
    h = tcuda.graph_pool_handle()
    with tcuda.graph(g3, pool=h, capture_error_mode="relaxed"):
        assert fake.cuda.get_current_stream().capturing == 2
    assert g3.pool() is h and h is not g1.pool()
    with pytest.raises(TypeError, match="graph_pool_handle"):
        with tcuda.graph(tcuda.CUDAGraph(), pool="mine"):
            pass
    with pytest.raises(ValueError, match="capture_error_mode"):
        with tcuda.graph(tcuda.CUDAGraph(), capture_error_mode="strict"):
            pass


def test_a_host_sync_in_capture_ends_it_cleanly_with_a_clear_error(fake):
    class DeviceSynchronized(RuntimeError):   # what CuPy's sync detector raises
        pass
    g = tcuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="synchronized the host with the device") as info:
        with tcuda.graph(g):
            s = fake.cuda.get_current_stream()
            raise DeviceSynchronized()
    assert "test_cuda_graphs.py:" in str(info.value) and not s.is_capturing()
    with pytest.raises(RuntimeError, match="nothing was captured"):
        g.replay()
    with pytest.raises(ValueError, match="unrelated"):   # other errors pass through unchanged
        with tcuda.graph(g):
            raise ValueError("unrelated")
    with tcuda.graph(g):                                 # the graph and stream are reusable
        pass
    g.replay()


def test_matmul_is_rerouted_in_the_capturing_thread_only(fake, monkeypatch):
    import threading
    from tensor.cuda import _blas
    calls = []
    monkeypatch.setattr(_blas, "matmul", lambda a, b: calls.append("ours") or "ours")
    x = fake.asarray(np.eye(2))
    orig_op, orig_fn = fake.ndarray.__matmul__, fake.matmul
    assert isinstance(x @ x, fake.ndarray)
    with tcuda.graph(tcuda.CUDAGraph()):
        assert x @ x == "ours" and fake.matmul(x, x) == "ours"
        assert isinstance(fake.matmul(x, x, out=x), fake.ndarray)  # what ours doesn't take: CuPy
        other = []
        t = threading.Thread(target=lambda: other.append(x @ x))
        t.start()
        t.join()
        assert isinstance(other[0], fake.ndarray)       # another thread keeps CuPy's path
        graphs.keep_alive("table")                       # a fused optimizer's pointer table
    assert fake.ndarray.__matmul__ is orig_op and fake.matmul is orig_fn
    assert "__matmul__" not in vars(fake.ndarray)       # the inherited (fast) slot is back
    assert isinstance(x @ x, fake.ndarray) and calls == ["ours", "ours"]
    graphs.keep_alive("ignored outside a capture")


def test_capture_refuses_the_default_stream_and_nesting(fake):
    g = tcuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="default stream"):
        g.capture_begin()
    assert g._capture is None
    with tcuda.graph(g):
        with pytest.raises(RuntimeError, match="don't nest"):
            tcuda.CUDAGraph().capture_begin()


def test_random_streams_in_capture(fake):
    gen = tensor.Generator()
    with tcuda.graph(tcuda.CUDAGraph()):
        with pytest.raises(RuntimeError, match="first time inside the capture"):
            gen.cupy_rng()
        gen._cupy_rng = object()
        with pytest.raises(RuntimeError, match="manual_seed: called during CUDA graph capture"):
            gen.manual_seed_cuda(3)
        assert gen.cupy_rng() in trandom._capture.keep


def test_empty_cache_refuses_to_free_during_capture(fake):
    with tcuda.graph(tcuda.CUDAGraph()):
        with pytest.raises(RuntimeError, match="during CUDA graph capture"):
            tcuda.empty_cache()


# -- on a GPU: captured steps against the same eager steps ----------------------------------------
def _batches(n, d_in, d_out, classes=False, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = tensor.tensor(rng.normal(size=(8, d_in)).astype(np.float32), device="cuda")
        y = rng.integers(0, d_out, size=8) if classes else rng.normal(size=(8, d_out))
        out.append((x, tensor.tensor(y if classes else y.astype(np.float32), device="cuda")))
    return out


def _graphed_vs_eager(loss_fn, make_opt, batches, n_warmup=3):
    tensor.manual_seed(0)
    model_g = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to("cuda")
    model_e = copy.deepcopy(model_g)
    opt_g, opt_e = make_opt(model_g.parameters()), make_opt(model_e.parameters())

    def step(model, opt, x, y):
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    s = tcuda.Stream()                       # warm-up on a side stream, as PyTorch recommends
    s.wait_stream(tcuda.current_stream())
    with tcuda.stream(s):
        for _ in range(n_warmup):
            opt_g.zero_grad(set_to_none=True)
            step(model_g, opt_g, static_x, static_y)
    tcuda.current_stream().wait_stream(s)
    for _ in range(n_warmup):
        opt_e.zero_grad(set_to_none=True)
        step(model_e, opt_e, *batches[0])

    g = tcuda.CUDAGraph()
    opt_g.zero_grad(set_to_none=True)
    with tcuda.graph(g):
        static_loss = step(model_g, opt_g, static_x, static_y)
    for x, y in batches[1:]:
        static_x.copy_(x)
        static_y.copy_(y)
        g.replay()
        opt_e.zero_grad(set_to_none=True)
        loss_e = step(model_e, opt_e, x, y)
        assert static_loss.item() == pytest.approx(loss_e.item(), rel=1e-5, abs=1e-6)
    for pg, pe in zip(model_g.parameters(), model_e.parameters()):
        np.testing.assert_allclose(pg.detach().cpu().numpy(), pe.detach().cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)


def _mse(out, y):
    return ((out - y) ** 2).mean()


@requires_cupy
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gpu_graphed_mlp_sgd_step_matches_eager(momentum):
    _graphed_vs_eager(_mse, lambda ps: tensor.optim.SGD(ps, lr=0.05, momentum=momentum),
                      _batches(6, 16, 4))


@requires_cupy
def test_gpu_graphed_mlp_cross_entropy_step_matches_eager():
    # needs nll_loss's bounds check on the device (no host sync): the syncfree change
    _graphed_vs_eager(tensor.nn.functional.cross_entropy,
                      lambda ps: tensor.optim.SGD(ps, lr=0.1), _batches(6, 16, 4, classes=True))


@requires_cupy
def test_gpu_graphed_adam_capturable_step_matches_eager():
    ps = [nn.Parameter(tensor.zeros(2, device="cuda"))]
    try:
        tensor.optim.Adam(ps, lr=1e-2, capturable=True)
    except TypeError:
        pytest.skip("Adam(capturable=True) comes with the fused-optimizer change")
    _graphed_vs_eager(_mse, lambda ps: tensor.optim.Adam(ps, lr=1e-2, capturable=True),
                      _batches(6, 16, 4))


@requires_cupy
def test_gpu_elementwise_chain_and_in_place_state_replay():
    rng = np.random.default_rng(1)
    x = tensor.tensor(rng.normal(size=1000).astype(np.float32), device="cuda")
    w = tensor.ones(1000, device="cuda")
    (x * 2.0 + 1.0).tanh() * w                # warm-up: kernels compiled outside the capture
    w.mul_(1.0)
    tcuda.synchronize()
    g = tcuda.CUDAGraph()
    with tcuda.graph(g):
        y = (x * 2.0 + 1.0).tanh() * w
        w.mul_(0.5)
    scale = np.float32(1.0)
    for _ in range(4):
        xn = rng.normal(size=1000).astype(np.float32)
        x.copy_(tensor.tensor(xn, device="cuda"))
        g.replay()
        np.testing.assert_allclose(y.cpu().numpy(), np.tanh(xn * 2 + 1) * scale, rtol=1e-5,
                                   atol=1e-6)
        scale = scale * np.float32(0.5)
    np.testing.assert_allclose(w.cpu().numpy(), np.full(1000, scale), rtol=0)


@requires_cupy
def test_gpu_dropout_draws_fresh_masks_at_every_replay():
    x = tensor.ones(20000, device="cuda")
    nn.functional.dropout(x, 0.5)             # the generator's device state exists before capture
    g = tcuda.CUDAGraph()
    with tcuda.graph(g):
        y = nn.functional.dropout(x, 0.5)
    g.replay()
    a = y.cpu().numpy().copy()
    g.replay()
    b = y.cpu().numpy()
    assert not np.array_equal(a, b)
    for m in (a, b):
        assert 0.45 < (m == 0).mean() < 0.55 and set(np.unique(m)) <= {0.0, 2.0}


@requires_cupy
def test_gpu_graphs_share_a_pool_and_replay_in_capture_order():
    x = tensor.zeros(4096, device="cuda")
    x * 3.0 + 1.0                             # warm-up: kernels compiled outside the capture
    tcuda.synchronize()
    g1, g2 = tcuda.CUDAGraph(), tcuda.CUDAGraph()
    with tcuda.graph(g1):
        y1 = x * 3.0
    with tcuda.graph(g2, pool=g1.pool()):
        y2 = y1 + 1.0
    assert g2.pool() is g1.pool()
    assert tcuda.memory_allocated() >= 2 * 4096 * 4     # graph pools count, as in PyTorch
    xn = np.arange(4096, dtype=np.float32)
    x.copy_(tensor.tensor(xn, device="cuda"))
    g1.replay()
    g2.replay()
    np.testing.assert_allclose(y2.cpu().numpy(), xn * 3 + 1)
    s = tcuda.Stream()
    s.wait_stream(tcuda.current_stream())
    x.copy_(tensor.tensor(-xn, device="cuda"))
    s.wait_stream(tcuda.current_stream())
    with tcuda.stream(s):                     # replay on a side stream
        g1.replay()
        g2.replay()
    s.synchronize()
    np.testing.assert_allclose(y2.cpu().numpy(), -xn * 3 + 1)


@requires_cupy
def test_gpu_host_sync_in_capture_raises_and_leaves_cuda_usable():
    x = tensor.randn(8, device="cuda")
    (x * 2).sum(), x + 1                      # warm-up: kernels compiled outside the capture
    tcuda.synchronize()
    g = tcuda.CUDAGraph()
    with pytest.raises(RuntimeError, match=r"CUDA graph capture: an operation in item "
                                           r"\(_tensor\.py:\d+\), called from "
                                           r"test_cuda_graphs\.py:\d+"):
        with tcuda.graph(g):
            (x * 2).sum().item()
    assert not tcuda.is_current_stream_capturing()
    assert float((x * 0).sum()) == 0.0
    g2 = tcuda.CUDAGraph()
    with tcuda.graph(g2):
        y = x + 1
    g2.replay()
    np.testing.assert_allclose(y.cpu().numpy(), x.cpu().numpy() + 1, rtol=1e-6)
    with pytest.raises(RuntimeError, match="default stream"):
        tcuda.CUDAGraph().capture_begin()


@requires_cupy
def test_gpu_make_graphed_callables_module_trains_as_eager():
    tensor.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to("cuda")
    ref = copy.deepcopy(model)
    batches = _batches(5, 16, 4)
    graphed = tcuda.make_graphed_callables(model, (batches[0][0].clone(),))
    assert graphed is model
    opt, opt_ref = tensor.optim.SGD(model.parameters(), lr=0.1), \
        tensor.optim.SGD(ref.parameters(), lr=0.1)
    for x, y in batches:
        for m, o in ((graphed, opt), (ref, opt_ref)):
            o.zero_grad(set_to_none=True)
            loss = _mse(m(x), y)
            loss.backward()
            o.step()
            if m is graphed:
                got = loss.item()
        assert got == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    for p, q in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(p.detach().cpu().numpy(), q.detach().cpu().numpy(),
                                   rtol=1e-5, atol=1e-6)
    model.eval()                                  # the other mode runs eagerly
    np.testing.assert_allclose(model(batches[0][0]).detach().cpu().numpy(),
                               ref(batches[0][0]).detach().cpu().numpy(), rtol=1e-5, atol=1e-6)


@requires_cupy
def test_gpu_make_graphed_callables_function_gives_input_grads():
    def f(a):
        return (a * 2.0).tanh()
    sample = tensor.randn(64, device="cuda").requires_grad_()
    graphed = tcuda.make_graphed_callables(f, (sample,))
    for _ in range(2):
        a = tensor.randn(64, device="cuda").requires_grad_()
        b = a.detach().clone().requires_grad_()
        (graphed(a) * 3.0).sum().backward()
        (f(b) * 3.0).sum().backward()
        np.testing.assert_allclose(a.grad.cpu().numpy(), b.grad.cpu().numpy(), rtol=1e-5,
                                   atol=1e-6)


# -- the capturable matmul's cuBLAS bookkeeping, checked against numpy on the CPU ----------------
def _cublas_gemm_on_numpy(out, first, second, m, n, k, batch):
    """What cublasGemm(StridedBatched)Ex computes, column-major, on the same buffers."""
    def cm(op, x, rows, cols):   # the (rows x cols) column-major operand cuBLAS reads, op applied
        r, c = (rows, cols) if op.op == 0 else (cols, rows)
        v = np.lib.stride_tricks.as_strided(op.array, (batch, r, c), (
            op.stride * x.itemsize, x.itemsize, op.ld * x.itemsize))
        return v if op.op == 0 else v.transpose(0, 2, 1)
    c = np.lib.stride_tricks.as_strided(out, (batch, m, n), (
        m * n * out.itemsize, out.itemsize, m * out.itemsize))
    c[...] = cm(first, first.array, m, k) @ cm(second, second.array, k, n)


@pytest.mark.parametrize("case", [
    ((5, 3), (3, 4), None), ((5, 3), (4, 3), "bT"), ((3, 5), (3, 4), "aT"),
    ((3, 5), (4, 3), "abT"), ((7,), (7, 2), None), ((4, 7), (7,), None), ((6,), (6,), None),
    ((2, 5, 3), (3, 4), None), ((5, 3), (2, 3, 4), None), ((2, 1, 5, 3), (1, 3, 3, 4), None),
    ((2, 5, 3), (2, 4, 3), "bT"), ((4, 6), (6, 0), None), ((4, 0), (0, 3), None),
    ((5, 8), (8, 3), "slice"), ((5, 3), (3, 4), "flip"), ((1, 3), (3, 1), None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_capturable_matmul_plan_matches_numpy(case, dtype):
    from tensor.cuda import _blas
    sa, sb, how = case
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=sa).astype(dtype), rng.normal(size=sb).astype(dtype)
    if how in ("bT", "abT"):
        b = np.swapaxes(b, -1, -2)            # a transposed view: column-major for cuBLAS
    if how in ("aT", "abT"):
        a = np.swapaxes(a, -1, -2)
    if how == "slice":
        a = np.ascontiguousarray(np.pad(a, ((0, 0), (0, 5))))[:, :8]   # row stride > width
    if how == "flip":
        a = a[::-1]                           # negative stride: copied first
    result, call = _blas.plan(np, a, b)
    if call is not None:
        _cublas_gemm_on_numpy(*call)
    np.testing.assert_allclose(result, a @ b, rtol=1e-6, atol=1e-12)
    assert result.shape == (a @ b).shape and result.dtype == (a @ b).dtype


def test_capturable_matmul_declines_what_cublas_cannot_do():
    from tensor.cuda import _blas
    ints = np.ones((2, 2), np.int64)
    assert _blas.plan(np, ints, ints) is None                      # CuPy's integer kernels
    assert _blas.plan(np, np.ones((2, 3)), np.ones((4, 2))) is None  # CuPy reports the mismatch
    assert _blas.plan(np, np.ones(()), np.ones((2,))) is None
    assert _blas.plan(np, np.ones((2, 2, 3)), np.ones((3, 3, 4))) is None   # batch mismatch
