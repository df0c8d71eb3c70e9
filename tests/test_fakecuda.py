"""The CPU stand-in for CuPy itself (tests/fakecuda): the behaviours of CuPy it models that
`pytest --fake-gpu` relies on, each against what CuPy 14 does."""
import warnings

import numpy as np
import pytest

from tests import fakecuda


@pytest.fixture
def cp(monkeypatch):
    return fakecuda.install(monkeypatch, import_cupy=True)


def test_integer_array_indices_wrap_as_cupy_does(cp):
    x = cp.arange(5.0)
    assert x[cp.asarray([1, 7, -1])].get().tolist() == [1.0, 2.0, 4.0]
    m = cp.arange(12).reshape(3, 4)
    assert m[..., np.array([5])].get().tolist() == [[1], [5], [9]]     # after an Ellipsis
    assert m[None, cp.asarray([4]), 1:3].get().tolist() == [[[5, 6]]]  # None takes no axis
    x[cp.asarray([6])] = -1.0
    assert x.get().tolist() == [0.0, -1.0, 2.0, 3.0, 4.0]
    assert cp.take_along_axis(m, cp.asarray([[5], [0], [4]]), 1).get().tolist() == [[1], [4], [8]]
    acc = cp.zeros(3, cp.float32)
    cp.add.at(acc, cp.asarray([4, 4], cp.int32), cp.ones(2, cp.float32))
    assert acc.get().tolist() == [0.0, 2.0, 0.0]
    with pytest.raises(IndexError):   # a scalar index is checked, as CuPy checks it on the host
        x[9]


def test_capture_runs_nothing_until_replay_and_replays_every_op(cp):
    rng = cp.random.default_rng(3)
    x, acc = cp.arange(4.0), cp.zeros(4)
    s = cp.cuda.Stream(non_blocking=True)
    side = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        y = x * 2 + 1                 # made in the capture
        acc += y                      # an in-place write of a buffer from before
        e = s.record()
        side.wait_event(e)            # side joins the capture
        with side:
            r = rng.random(4)
        g = s.end_capture()
    assert acc.get().tolist() == [0.0] * 4, "the capture wrote a buffer"
    assert np.isnan(y.get()).all() and np.isnan(r.get()).all(), "uninitialised until replay"
    assert not side.is_capturing()
    x[...] = 10.0
    g.launch(s)
    assert y.get().tolist() == [21.0] * 4 and acc.get().tolist() == [21.0] * 4
    r1 = r.get()
    g.launch(s)
    assert acc.get().tolist() == [42.0] * 4 and not np.array_equal(r.get(), r1), \
        "a replay draws fresh numbers"


def test_host_reads_in_a_capture_and_under_allow_synchronize_raise(cp):
    import cupyx
    x = cp.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with cupyx.allow_synchronize(False):
            with pytest.raises(cupyx.DeviceSynchronized):
                x.sum().item()
    assert float(x.sum()) == 3.0
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        with pytest.raises(RuntimeError, match="capturing"):
            x.get()
        s.end_capture()


def test_pointer_attributes_and_in_place_reseed(cp):
    rt = cp.cuda.runtime
    pinned = cp.cuda.alloc_pinned_memory(64)
    host = np.frombuffer(pinned, np.uint8)
    assert rt.pointerGetAttributes(host.ctypes.data).type == rt.memoryTypeHost
    assert rt.pointerGetAttributes(cp.zeros(4).data.ptr).type == rt.memoryTypeDevice
    assert rt.pointerGetAttributes(np.zeros(4).ctypes.data).type == rt.memoryTypeUnregistered
    from cupy.random._generator_api import init_curand
    rng = cp.random.default_rng(5)
    a = rng.random(3).get()
    bg = rng.bit_generator
    init_curand(bg.generator, bg._state.data.ptr, bg._seed, bg._size)   # back to seed 5
    assert np.array_equal(rng.random(3).get(), a)
