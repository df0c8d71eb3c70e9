"""Deferred device asserts, sync-free clipping and loss scaling, pinned memory and async copies.

CPU tests pin down the numpy semantics (immediate errors with today's messages, unchanged
results); the GPU tests (requires_cupy) check that the same checks wait for the next host read
there, and that a training step reads nothing back from the device.
"""
import math

import numpy as np
import pytest

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from tensor import backend
from tests import fakecuda
from tests.helpers import requires_cupy


# -- device_assert / assert_in_range on numpy: immediate ---------------------------------------
def test_device_assert_on_numpy_raises_at_once_with_the_message():
    backend.device_assert(np, np.array([False, False]), "never")
    with pytest.raises(IndexError, match="^op: bad value$"):
        backend.device_assert(np, np.array([False, True]), "op: bad value")
    with pytest.raises(ValueError, match="^precise$"):
        backend.device_assert(np, np.array([1]), "generic", ValueError,
                              host_message=lambda: "precise")


def test_assert_in_range_is_half_open_and_skips_empty_arrays():
    backend.assert_in_range(np, np.array([0, 4]), 0, 5, "never")
    backend.assert_in_range(np, np.zeros(0, np.int64), 0, 0, "never")
    for bad in ([5], [-1]):
        with pytest.raises(IndexError, match="range!"):
            backend.assert_in_range(np, np.array(bad), 0, 5, "range!")
    backend.check_device_errors()  # nothing pending on the CPU: a no-op


def test_assert_index_on_device_leaves_numpy_to_numpy():
    backend.assert_index_on_device(np, np.array([99]), 3, "never raised on numpy")


def test_host_reads_free_only_on_numpy():
    assert backend.host_reads_free(np)


# -- the deferred (CuPy) path, run against the fake CuPy (tests/fakecuda) ----------------------
@pytest.fixture
def fake_cupy(monkeypatch):
    return fakecuda.install(monkeypatch)


def test_deferred_assert_raises_at_the_next_host_read_then_clears(fake_cupy):
    xp = fake_cupy
    backend.assert_in_range(xp, xp.asarray([0, 3]), 0, 3, "first: out of range")
    backend.device_assert(xp, xp.asarray([True]), "second: bad", ValueError)
    assert [name for name, _ in fakecuda.log.checks] == [  # queued, nothing raised or read
        "zgrad_assert_range", "zgrad_device_assert"]
    with pytest.raises(IndexError, match="first: out of range .*detected on the GPU"):
        backend.to_numpy(xp.asarray([1.0]))   # .item(), printing, .cpu() all read through here
    backend.check_device_errors()             # cleared, nothing pending
    np.testing.assert_array_equal(backend.to_numpy(xp.asarray([1.0])), [1.0])
    backend.assert_in_range(xp, xp.asarray([0, 2]), 0, 3, "first: out of range")
    backend.check_device_errors()             # in range: no error
    backend.device_assert(xp, xp.asarray([False, True]), "second: bad", ValueError)
    with pytest.raises(ValueError, match="second: bad"):
        backend.to_device(xp.asarray([1.0]), "cpu")


def test_deferred_checks_on_another_stream_are_waited_for(fake_cupy):
    xp, main = fake_cupy, fake_cupy.cuda.get_current_stream()
    with xp.cuda.Stream(non_blocking=True) as side:
        backend.device_assert(xp, xp.asarray([True]), "side: bad")
    with pytest.raises(IndexError, match="side: bad"):
        backend.check_device_errors()
    assert [e.recorded_on for e in main.waited] == [side] and side.waited == []


def test_deferred_checks_past_the_slot_limit_share_one_generic_slot(fake_cupy, monkeypatch):
    from tensor import _device_checks
    monkeypatch.setattr(_device_checks, "_N_SLOTS", 3)
    xp = fake_cupy
    for k in range(4):
        backend.device_assert(xp, xp.asarray([k == 3]), f"check {k}")
    with pytest.raises(RuntimeError, match="a device-side check failed"):
        backend.check_device_errors()


# -- CPU messages and results unchanged ---------------------------------------------------------
def test_cpu_bound_errors_keep_their_messages():
    logp = tensor.randn(3, 4).log_softmax(1)
    with pytest.raises(IndexError, match=r"nll_loss: target 7 is out of bounds for 4 classes; "
                       r"expected targets in \[0, 3\] or ignore_index=-100\."):
        F.nll_loss(logp, tensor.tensor([0, 7, 1]))
    F.nll_loss(logp, tensor.tensor([0, -100, 3]))  # ignored targets are not checked
    with pytest.raises(IndexError, match=r"target -2 is out of bounds"):
        F.cross_entropy(tensor.randn(2, 4), tensor.tensor([-2, 0]))
    with pytest.raises(IndexError, match=r"embedding: index out of range; indices span "
                       r"\[0, 5\] but the table has 5 rows\."):
        F.embedding(tensor.tensor([0, 5]), tensor.randn(5, 2))
    with pytest.raises(RuntimeError, match=r"one_hot: class values must be in \[0, 2\], "
                       r"got \[0, 3\]"):
        F.one_hot(tensor.tensor([0, 3]), 3)
    with pytest.raises(IndexError, match="out of bounds"):
        tensor.randn(2, 3).gather(1, tensor.tensor([[3]]))
    with pytest.raises(IndexError, match="out of bounds"):
        tensor.zeros(2, 3).scatter_add(1, tensor.tensor([[3]]), tensor.ones(1, 1))


def test_masked_fill_takes_a_tensor_value_without_item():
    a = tensor.tensor([[1.0, 2.0], [3.0, 4.0]])
    m = tensor.tensor([[True, False], [False, True]])
    out = a.masked_fill(m, tensor.tensor(-1.5))
    np.testing.assert_array_equal(out.numpy(), [[-1.5, 2.0], [3.0, -1.5]])
    assert out.dtype == a.dtype
    with pytest.raises(ValueError, match="item"):
        a.masked_fill(m, tensor.tensor([1.0, 2.0]))


def _reference_clip(grads, max_norm, norm_type):
    """The pre-change algorithm: host norm, scale only when the coefficient is below 1."""
    if math.isinf(norm_type):
        total = max(float(np.abs(g).max()) for g in grads)
    else:
        total = sum(float((np.abs(g.astype(np.float64)) ** norm_type).sum()) for g in grads)
        total = total ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    out = [g * g.dtype.type(coef) if coef < 1.0 or math.isnan(coef) else g.copy()
           for g in grads]
    return total, out


@pytest.mark.parametrize("max_norm,norm_type", [(0.5, 2.0), (100.0, 2.0), (0.3, 1.0),
                                                (0.2, float("inf"))])
def test_clip_grad_norm_matches_the_host_algorithm(max_norm, norm_type):
    rng = np.random.default_rng(0)
    params = [nn.Parameter(tensor.zeros(*s)) for s in [(4, 3), (3,), (2, 2)]]
    raw = [rng.normal(size=p.shape).astype(np.float32) for p in params]
    for p, g in zip(params, raw):
        p.grad = tensor.tensor(g.copy())
    total_ref, want = _reference_clip(raw, max_norm, norm_type)
    total = nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    assert total.dtype == tensor.float32 and total.shape == ()
    np.testing.assert_allclose(float(total), total_ref, rtol=1e-6)
    for p, w in zip(params, want):
        np.testing.assert_array_equal(p.grad.numpy(), w)


def test_clip_grad_norm_nonfinite():
    p = nn.Parameter(tensor.zeros(3))
    p.grad = tensor.tensor([1.0, float("nan"), 2.0])
    assert math.isnan(float(nn.utils.clip_grad_norm_([p], 1.0)))
    assert np.isnan(p.grad.numpy()).all()  # scaled by a NaN coefficient, as PyTorch
    p.grad = tensor.tensor([1.0, float("inf")])
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


# -- GradScaler: one read of found_inf per optimizer step ---------------------------------------
def _scaler_step(monkeypatch, grads):
    from tensor.amp import GradScaler
    scaler = GradScaler("cpu", init_scale=4.0, growth_interval=1)
    p = nn.Parameter(tensor.ones(len(grads)))
    opt = tensor.optim.SGD([p], lr=1.0)
    p.grad = tensor.tensor(grads)
    reads = []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda a: reads.append(1) or real(a))
    scaler.unscale_(opt)
    assert not reads, "unscale_ keeps found_inf on the device"
    scaler.step(opt)
    scaler.update()
    return scaler, p, len(reads)


def test_grad_scaler_reads_found_inf_once_and_skips_bad_steps(monkeypatch):
    scaler, p, n = _scaler_step(monkeypatch, [4.0, 8.0])
    assert n == 1
    np.testing.assert_array_equal(p.numpy(force=True), [0.0, -1.0])  # unscaled grads 1, 2
    assert scaler.get_scale() == 8.0  # grown after a clean step (growth_interval=1)
    scaler, p, n = _scaler_step(monkeypatch, [4.0, float("inf")])
    assert n == 1
    np.testing.assert_array_equal(p.numpy(force=True), [1.0, 1.0])  # step skipped
    assert scaler.get_scale() == 2.0  # backed off


# -- pinned memory and non_blocking without CUDA ------------------------------------------------
@pytest.mark.skipif(backend.cuda_is_available(), reason="checks the CPU-only behaviour")
def test_pin_memory_without_cuda_raises_like_cpu_only_torch():
    t = tensor.tensor([1.0, 2.0])
    assert t.is_pinned() is False
    with pytest.raises(RuntimeError, match="accelerator device when none is available"):
        t.pin_memory()
    assert t.to("cpu", non_blocking=True) is t
    assert t.cpu() is t
    if backend.cupy is None:
        with pytest.raises(RuntimeError, match="CuPy is not installed"):
            t.cuda(non_blocking=True)
        with pytest.raises(RuntimeError, match="CuPy is not installed"):
            t.to("cuda", non_blocking=True)


# -- GPU ----------------------------------------------------------------------------------------
@requires_cupy
def test_gpu_bad_target_raises_at_the_next_item_not_in_the_op():
    logits = tensor.randn(4, 3, device="cuda")
    loss = F.cross_entropy(logits, tensor.tensor([0, 1, 5, 2], device="cuda"))  # no raise here
    # the fused kernel (the default on a GPU) names cross_entropy; ZGRAD_FUSED_KERNELS=0, nll_loss
    with pytest.raises(IndexError, match="(cross_entropy|nll_loss): a target is out of bounds "
                                         "for 3 classes"):
        loss.item()
    ok = F.cross_entropy(logits, tensor.tensor([0, 1, 2, 2], device="cuda"))
    want = F.cross_entropy(logits.cpu(), tensor.tensor([0, 1, 2, 2]))
    assert abs(ok.item() - want.item()) < 1e-5  # the flags were cleared by the first raise


@requires_cupy
def test_gpu_index_checks_raise_at_host_reads():
    w = tensor.randn(5, 2, device="cuda")
    e = F.embedding(tensor.tensor([1, 7], device="cuda"), w)
    with pytest.raises(IndexError, match="embedding: index out of range; the table has 5 rows"):
        e.tolist()
    g = w.gather(1, tensor.tensor([[0], [2], [0], [0], [0]], device="cuda"))
    with pytest.raises(IndexError, match="gather: index out of bounds for dim 1 with size 2"):
        repr(g)
    s = w.index_select(0, tensor.tensor([9], device="cuda"))
    with pytest.raises(IndexError, match="index_select: index out of bounds"):
        s.cpu()
    h = F.one_hot(tensor.tensor([0, 4], device="cuda"), 3)
    with pytest.raises(RuntimeError, match=r"one_hot: class values must be in \[0, 2\]"):
        bool(h.sum() > 0)
    ok = w.gather(1, tensor.tensor([[-1], [1], [0], [0], [0]], device="cuda"))  # numpy's range
    np.testing.assert_array_equal(ok.cpu().numpy(), w.cpu().gather(1, tensor.tensor(
        [[-1], [1], [0], [0], [0]])).numpy())


@requires_cupy
def test_gpu_assert_on_a_side_stream_is_seen_from_the_current_stream():
    cupy = backend.cupy
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        backend.device_assert(cupy, cupy.asarray([False, True]), "side: bad")
    with pytest.raises(IndexError, match="side: bad"):
        backend.check_device_errors()
    backend.check_device_errors()  # cleared


@requires_cupy
def test_gpu_non_blocking_copies_from_pinned_memory():
    rng = np.random.default_rng(0)
    x = tensor.tensor(rng.normal(size=(256, 64)).astype(np.float32))
    p = x.pin_memory()
    assert p.is_pinned() and not x.is_pinned()
    assert p.pin_memory() is p
    np.testing.assert_array_equal(p.numpy(), x.numpy())
    y = p.to("cuda", non_blocking=True)
    z = x.cuda(non_blocking=True)  # pageable: an ordinary copy
    tensor.cuda.synchronize()
    np.testing.assert_array_equal(y.cpu().numpy(), x.numpy())
    np.testing.assert_array_equal(z.cpu().numpy(), x.numpy())
    back = (y * 2).to("cpu", non_blocking=True)
    assert back.is_pinned()
    tensor.cuda.synchronize()
    np.testing.assert_array_equal(back.numpy(), x.numpy() * 2)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


@requires_cupy
def test_gpu_mlp_training_step_does_not_sync():
    import cupyx
    tensor.manual_seed(0)
    model = _MLP().to("cuda")
    opt = tensor.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = tensor.randn(8, 16, device="cuda")
    y = tensor.tensor(np.arange(8) % 4, device="cuda")

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    step()  # warm-up: kernels compiled, optimizer state and assert flags allocated
    reads = []
    real = backend.to_numpy
    backend.to_numpy = lambda a: reads.append(1) or real(a)
    try:
        with cupyx.allow_synchronize(False):  # CuPy raises DeviceSynchronized on a host read
            loss = step()
    finally:
        backend.to_numpy = real
    assert not reads
    assert math.isfinite(loss.item())
