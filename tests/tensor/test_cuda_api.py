"""tensor.cuda (torch.cuda's API): the answers without CUDA, the protocol against a recording
fake of CuPy, and the real thing on a GPU (requires_cupy)."""
from __future__ import annotations

import numpy as np
import pytest

import tensor
import tensor.cuda as tcuda
from tensor import backend
from tensor import random as trandom
from tensor.cuda import _capture, memory
from tests import fakecuda
from tests.helpers import requires_cupy

no_cuda = pytest.mark.skipif(tcuda.is_available(), reason="checks the answers without CUDA")


# -- without CUDA: answers as torch on a CPU-only build ------------------------------------------
@no_cuda
def test_queries_answer_as_a_cpu_only_torch():
    assert tcuda.is_available() is False and tcuda.is_initialized() is False
    assert tcuda.device_count() == 0
    assert tcuda.memory_allocated() == tcuda.max_memory_allocated() == 0
    assert tcuda.memory_reserved() == tcuda.max_memory_reserved() == 0
    assert tcuda.memory_stats() == {}
    tcuda.empty_cache()
    tcuda.reset_peak_memory_stats()
    assert tcuda.is_current_stream_capturing() is False
    assert tcuda.is_bf16_supported() is False
    with tcuda.device_of(tensor.ones(2)):     # a CPU tensor: nothing to switch
        pass
    assert issubclass(tcuda.OutOfMemoryError, MemoryError)


@no_cuda
@pytest.mark.parametrize("call", [
    tcuda.CUDAGraph, tcuda.Stream, tcuda.Event, tcuda.synchronize, tcuda.current_device,
    tcuda.current_stream, tcuda.default_stream, tcuda.graph_pool_handle, tcuda.mem_get_info,
    tcuda.get_device_properties, tcuda.get_device_name, tcuda.get_device_capability,
    lambda: tcuda.set_device(0), lambda: tcuda.device(0), tcuda.init,
    lambda: tcuda.make_graphed_callables(lambda x: x, ())])
def test_device_calls_raise_a_clear_error_without_cuda(call):
    with pytest.raises(RuntimeError, match=r"tensor\.cuda\.\w+.*expected a CUDA device.*"
                                           r"is_available\(\)"):
        call()


def test_cuda_manual_seed_leaves_the_cpu_stream_alone():
    tensor.manual_seed(0)
    a = tensor.randn(5)
    tensor.manual_seed(0)
    tcuda.manual_seed(123)
    b = tensor.randn(5)
    assert np.array_equal(a.numpy(), b.numpy())
    assert tcuda.initial_seed() == 123
    tensor.manual_seed(7)           # seeds every stream, as torch.manual_seed
    assert tcuda.initial_seed() == 7 and tensor.initial_seed() == 7


def test_capture_error_names_the_op_and_the_callers_line(monkeypatch):
    class DeviceSynchronized(RuntimeError):   # what CuPy's sync detector raises
        pass

    def to_numpy(x):
        raise DeviceSynchronized("Device synchronization was detected while disallowed.")
    monkeypatch.setattr(backend, "to_numpy", to_numpy)
    try:
        tensor.ones(3).tolist()
    except DeviceSynchronized as e:
        err = _capture.explain_capture_error(e)
    assert isinstance(err, RuntimeError)
    msg = str(err)
    assert "in tolist (_tensor.py:" in msg and "called from test_cuda_api.py:" in msg
    assert ".item()" in msg and "g.replay()" in msg
    assert _capture.explain_capture_error(ValueError("unrelated")) is None


# -- the protocol, against a recording fake of CuPy ------------------------------------------------
@pytest.fixture
def fake(monkeypatch):
    cp = fakecuda.install(monkeypatch)
    monkeypatch.setattr(trandom.default_generator, "_cupy_rng", object())
    yield cp
    assert getattr(trandom._capture, "keep", None) is None


def test_streams_order_through_events(fake):
    s = tcuda.Stream()
    assert s.cupy_stream.non_blocking and s.device == tensor.device("cuda:0")
    assert tcuda.current_stream() == tcuda.default_stream()
    assert tcuda.current_stream().cuda_stream == 0
    with tcuda.stream(s):
        assert tcuda.current_stream() == s
    with s:
        assert tcuda.current_stream() == s
    assert tcuda.current_stream() != s
    main = tcuda.current_stream()
    main.wait_stream(s)           # record on s, wait on main
    (kind, ev), = s.cupy_stream.log
    assert kind == "record" and main.cupy_stream.log[-1] == ("wait", ev)
    e = tcuda.Event()
    s.wait_event(e)               # never recorded: nothing to wait for, as in CUDA
    assert ("wait", None) not in s.cupy_stream.log and e.query()
    with tcuda.stream(None):
        assert tcuda.current_stream() == main


def test_event_timing_needs_enable_timing_and_records(fake):
    a, b = tcuda.Event(enable_timing=True), tcuda.Event(enable_timing=True)
    with pytest.raises(RuntimeError, match="recorded first"):
        a.elapsed_time(b)
    a.record()
    b.record()
    assert a.elapsed_time(b) == 1.5 and not a.cupy_event.disable_timing
    c = tcuda.Event()
    c.record()
    with pytest.raises(RuntimeError, match="enable_timing=True"):
        a.elapsed_time(c)


def test_device_properties_have_torchs_names(fake):
    p = tcuda.get_device_properties(0)
    assert (p.name, p.total_memory, p.multi_processor_count, p.major, p.minor) == \
        ("Fake GPU", 8, 132, 9, 0)
    assert tcuda.get_device_capability() == (9, 0) and tcuda.get_device_name() == "Fake GPU"
    assert tcuda.is_bf16_supported()
    assert tcuda.mem_get_info() == (6, 8) and tcuda.device_count() == 1
    with pytest.raises(ValueError, match="out of range"):
        tcuda.get_device_properties(3)
    with pytest.raises(ValueError, match="expected a CUDA device"):
        tcuda.set_device("cpu")


def test_memory_peaks_are_sampled_and_reset(fake):
    pool = fakecuda.log.default_pool
    pool.used = pool.total = 0
    memory._peaks.clear()
    pool.malloc(100)
    assert tcuda.memory_allocated() == 100 and tcuda.memory_reserved() == 100
    pool.used = 40
    assert tcuda.memory_allocated() == 40 and tcuda.max_memory_allocated() == 100
    tcuda.reset_peak_memory_stats()
    assert tcuda.max_memory_allocated() == 40
    tcuda.empty_cache()
    assert tcuda.memory_reserved() == 40 and tcuda.max_memory_reserved() == 100
    assert tcuda.memory_stats()["allocated_bytes.all.peak"] == 40


def test_synchronize_reports_deferred_device_errors(fake, monkeypatch):
    seen = []
    monkeypatch.setattr(backend, "check_device_errors", lambda: seen.append(1), raising=False)
    before = fakecuda.log.syncs
    tcuda.synchronize()
    assert seen == [1] and fakecuda.log.syncs == before + 1


# -- on a GPU -------------------------------------------------------------------------------------
@requires_cupy
def test_gpu_device_queries():
    assert tcuda.is_available() and tcuda.device_count() >= 1
    idx = tcuda.current_device()
    p = tcuda.get_device_properties(idx)
    assert p.total_memory > 0 and p.multi_processor_count > 0 and p.major >= 3 and p.name
    free, total = tcuda.mem_get_info()
    assert 0 < free <= total
    with tcuda.device(idx):
        assert tcuda.current_device() == idx
    tcuda.set_device(idx)


@requires_cupy
def test_gpu_side_stream_work_is_ordered_by_wait_stream():
    s = tcuda.Stream()
    x = tensor.ones(4096, 1024, device="cuda")
    s.wait_stream(tcuda.current_stream())
    with tcuda.stream(s):
        y = x
        for _ in range(20):   # enough queued work that an unordered read would see a stale value
            y = y * 1.5 - 0.25
    tcuda.current_stream().wait_stream(s)
    z = (y + 0).cpu().numpy()
    expect = np.ones(1, np.float32)
    for _ in range(20):
        expect = expect * np.float32(1.5) - np.float32(0.25)
    np.testing.assert_allclose(z, np.broadcast_to(expect, z.shape).reshape(z.shape), rtol=1e-5)


@requires_cupy
def test_gpu_events_time_and_sync():
    start, end = tcuda.Event(enable_timing=True), tcuda.Event(enable_timing=True)
    start.record()
    tensor.randn(1024, 1024, device="cuda") @ tensor.randn(1024, 1024, device="cuda")
    end.record()
    end.synchronize()
    assert end.query() and start.elapsed_time(end) >= 0.0
    tcuda.synchronize()


@requires_cupy
@pytest.mark.real_gpu_only("the fake's arrays are numpy memory: no CuPy memory pool counts them")
def test_gpu_memory_stats_follow_allocations():
    tcuda.synchronize()
    before = tcuda.memory_allocated()
    x = tensor.zeros(16, 2 ** 20, device="cuda")    # 64 MiB
    assert tcuda.memory_allocated() >= before + 64 * 2 ** 20
    assert tcuda.max_memory_allocated() >= before + 64 * 2 ** 20
    assert tcuda.memory_reserved() >= tcuda.memory_allocated()
    del x
    assert tcuda.memory_allocated() < before + 64 * 2 ** 20
    tcuda.reset_peak_memory_stats()
    assert tcuda.max_memory_allocated() == tcuda.memory_allocated()
    tcuda.empty_cache()
    assert tcuda.memory_reserved() >= tcuda.memory_allocated()


@requires_cupy
def test_gpu_cuda_seed_is_independent_of_cpu_draws_and_reseeds_in_place():
    tcuda.manual_seed(5)
    a = tensor.rand(1000, device="cuda").cpu().numpy()
    state = trandom.default_generator.cupy_rng().bit_generator._state
    tcuda.manual_seed(5)
    tensor.randn(100)                 # a CPU draw in between changes nothing on the GPU
    b = tensor.rand(1000, device="cuda").cpu().numpy()
    assert np.array_equal(a, b)
    assert trandom.default_generator.cupy_rng().bit_generator._state is state   # same array
    snap = trandom.default_generator.fork_state()
    c = tensor.rand(1000, device="cuda").cpu().numpy()
    trandom.default_generator.restore_state(snap)
    d = tensor.rand(1000, device="cuda").cpu().numpy()
    assert np.array_equal(c, d) and not np.array_equal(a, c)
    st = tcuda.get_rng_state()
    e = tensor.randint(0, 10, (500,), device="cuda").cpu().numpy()
    tcuda.set_rng_state(st)
    f = tensor.randint(0, 10, (500,), device="cuda").cpu().numpy()
    assert np.array_equal(e, f) and e.min() >= 0 and e.max() < 10


# -- the CUDA random stream's bookkeeping, against the fake's device generator -------------------
@pytest.fixture
def fake_rng(monkeypatch):
    fakecuda.install(monkeypatch)   # its draws are a function of bit_generator._state
    gen = trandom.Generator()
    gen.manual_seed(11)
    return gen


def _cuda_draw(gen):
    return trandom.uniform_array((4,), "float32", "cuda", gen)


def test_cuda_stream_seeded_apart_from_cpu_draws(fake_rng):
    a = _cuda_draw(fake_rng)
    fake_rng.manual_seed(11)
    fake_rng.np_rng.random(10)            # CPU draws do not move the CUDA stream
    assert np.array_equal(_cuda_draw(fake_rng), a)
    fake_rng.manual_seed_cuda(12)
    assert not np.array_equal(_cuda_draw(fake_rng), a) and fake_rng.initial_seed() == 11


def test_fork_and_restore_copy_the_device_state(fake_rng):
    _cuda_draw(fake_rng)
    state = fake_rng._cupy_rng.bit_generator._state
    snap = fake_rng.fork_state()
    a = _cuda_draw(fake_rng)
    fake_rng.restore_state(snap)
    assert np.array_equal(_cuda_draw(fake_rng), a)
    assert fake_rng._cupy_rng.bit_generator._state is state    # restored in place, same array
    saved = fake_rng.get_state_cuda()
    b = _cuda_draw(fake_rng)
    fake_rng.set_state_cuda(saved)
    assert np.array_equal(_cuda_draw(fake_rng), b)


def test_restore_to_before_the_first_cuda_draw_restarts_the_stream(fake_rng):
    snap = fake_rng.fork_state()
    a = _cuda_draw(fake_rng)
    _cuda_draw(fake_rng)
    fake_rng.restore_state(snap)
    assert np.array_equal(_cuda_draw(fake_rng), a)
