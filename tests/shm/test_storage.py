"""shm in one process: segments, shared arrays, handles, pickling, the /dev/shm space check."""
import gc
import os
import pickle
import subprocess
import sys
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shm
from shm import _client, segment
from tests.helpers import assert_no_new_shm, shm_listing


@pytest.fixture(autouse=True)
def no_leaks():
    before = shm_listing()
    yield
    gc.collect()
    assert_no_new_shm(before)


def roundtrip(obj):
    """What a multiprocessing queue does to obj (here within one process)."""
    return pickle.loads(ForkingPickler.dumps(obj))


def test_segment_create_attach_close_unlink():
    seg = shm.Segment.create(4096, tag="test")
    assert seg.name.startswith(f"zgrad_{shm.job_id()}_") and seg.name.endswith("_test")
    assert seg.size == 4096 and os.path.exists(f"/dev/shm/{seg.name}")
    seg.buf[:5] = b"hello"
    other = shm.Segment.attach(seg.name)
    assert bytes(other.buf[:5]) == b"hello"
    arr = other.ndarray((4,), np.uint8)
    seg.close()
    other.close()
    assert bytes(arr) == b"hell"  # the array keeps the mapping alive after close()
    seg.unlink()
    assert not os.path.exists(f"/dev/shm/{seg.name}")
    arr[0] = 1  # still mapped: unlink only removes the name


def test_segment_removed_when_last_reference_goes():
    seg = shm.Segment.create(100)
    name = seg.name
    seg.close()
    del seg
    gc.collect()
    _client.sync()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_segment_bad_input():
    with pytest.raises(ValueError, match="size_bytes must be an int > 0"):
        shm.Segment.create(0)
    with pytest.raises(ValueError, match="tag must be"):
        shm.Segment.create(10, tag="has space")
    with pytest.raises(ValueError, match="expected a zgrad segment name"):
        shm.Segment.attach("/etc/passwd")
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        shm.Segment.attach(f"zgrad_{shm.job_id()}_1_999999_abcdef")


def test_empty_zeros_share_is_shared():
    a = shm.zeros((3, 5), np.float64)
    assert a.dtype == np.float64 and a.shape == (3, 5) and not a.any()
    assert shm.is_shared(a) and shm.is_shared(a[1:, ::2].T)
    assert shm.empty(4).dtype == np.float32  # zgrad's default dtype
    x = np.arange(12.0).reshape(3, 4)
    assert not shm.is_shared(x)
    s = shm.share(x)
    assert shm.is_shared(s) and np.array_equal(s, x) and not np.shares_memory(s, x)
    assert shm.share(s) is s
    big = shm.empty((300, 300))  # > 64 KiB: its own segment, not the arena
    assert shm.handle(big)[0] != shm.handle(a)[0]
    with pytest.raises(TypeError, match="numpy or CuPy"):
        shm.share([1, 2])
    with pytest.raises(TypeError, match="Python objects"):
        shm.empty(3, object)
    with pytest.raises(ValueError, match="negative dimension"):
        shm.empty((2, -1))
    with pytest.raises(ValueError, match="not in shared memory"):
        shm.handle(x)


def test_small_arrays_share_arenas_and_stay_aligned():
    arrays = [shm.empty((7,), np.int8) for _ in range(100)]
    names = {shm.handle(a)[0] for a in arrays}
    assert len(names) == 1
    assert all(a.ctypes.data % 64 == 0 for a in arrays)
    for i, a in enumerate(arrays):
        a[:] = i
    assert all((a == i).all() for i, a in enumerate(arrays))


@pytest.mark.parametrize("view", [
    lambda a: a, lambda a: a[1:, 2:], lambda a: a.T, lambda a: a[::-1, ::2],
    lambda a: a[:, 3], lambda a: a[2:2], lambda a: a.reshape(-1)[5:17].reshape(3, 4)])
def test_views_pickle_as_views_of_the_same_memory(view):
    a = shm.zeros((6, 8), np.float32)
    v = view(a)
    payload = ForkingPickler.dumps(v)
    assert len(payload) < 600  # a handle, not 192 bytes of data and growing
    w = pickle.loads(payload)
    assert w.shape == v.shape and w.strides == v.strides and w.dtype == v.dtype
    if v.size:
        assert np.shares_memory(w, a)
        w[...] = 3
        assert (v == 3).all()


def test_handle_of_large_array_is_small():
    a = shm.empty((1024, 1024))
    payload = ForkingPickler.dumps(a)
    assert len(payload) < 600
    # a handle pickled and never unpickled holds its segment until the sender exits (+grace);
    # this test is the sender, so it claims its own handle
    assert np.shares_memory(pickle.loads(payload), a)


def test_readonly_and_structured_dtypes_survive():
    s = shm.share(np.zeros(3, dtype=[("x", "<f4"), ("n", "<i8")]))
    s["n"] = [1, 2, 3]
    r = roundtrip(s)
    assert r.dtype == s.dtype and list(r["n"]) == [1, 2, 3]
    ro = shm.share(np.arange(4))
    ro.flags.writeable = False
    assert not roundtrip(ro).flags.writeable


def test_unshared_arrays_and_plain_pickle_copy():
    x = np.arange(10)
    y = roundtrip(x)
    assert np.array_equal(x, y) and not np.shares_memory(x, y)
    a = shm.zeros(1000)
    b = pickle.loads(pickle.dumps(a))  # plain pickle (disk): bytes, not a handle
    assert not shm.is_shared(b) and np.array_equal(a, b)


def test_handle_in_flight_keeps_segment_after_sender_drops_it():
    a = shm.empty((200, 200))
    a[:] = 5
    name = shm.handle(a)[0]
    payload = ForkingPickler.dumps(a)
    del a
    gc.collect()
    _client.sync()
    assert os.path.exists(f"/dev/shm/{name}")  # the handle in flight holds it
    b = pickle.loads(payload)
    assert (b == 5).all()
    del b
    gc.collect()
    _client.sync()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_too_big_for_dev_shm_is_a_clear_error(monkeypatch):
    free = shm.shm_free_bytes()
    with pytest.raises(shm.OutOfSharedMemoryError) as e:
        shm.empty((free // 4 + (1 << 30),), np.float32)
    msg = str(e.value)
    assert "cannot allocate" in msg and "free in /dev/shm" in msg and "--shm-size" in msg
    # when the free-space check passes (a race with another process), posix_fallocate fails
    # cleanly instead of a SIGBUS on first touch
    st = os.statvfs("/dev/shm")
    monkeypatch.setattr(segment, "shm_free_bytes", lambda: None)
    with pytest.raises(shm.OutOfSharedMemoryError, match="--shm-size"):
        shm.Segment.create(st.f_blocks * st.f_frsize * 2)


def test_sweep_and_cli_remove_a_dead_jobs_leftovers():
    names = [f"zgrad_deadjob1_1_{i}_abcdef" for i in range(3)]
    for n in names:
        with open(f"/dev/shm/{n}", "wb") as f:
            f.write(b"x")
    assert sorted(shm.sweep("deadjob1")) == names
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)
    with open(f"/dev/shm/{names[0]}", "wb"):
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "shm", "sweep", "--stale"], cwd=root,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"removed {names[0]}" in out.stdout
    with pytest.raises(ValueError, match="job id"):
        shm.sweep("../etc")


def test_failed_pickle_cancels_the_handles_it_put_in_flight():
    a = shm.empty((200, 200))
    name = shm.handle(a)[0]
    with pytest.raises(Exception):
        ForkingPickler.dumps((a, lambda: 0))  # the lambda fails after a's handle was made
    del a
    gc.collect()
    _client.sync()
    assert not os.path.exists(f"/dev/shm/{name}")  # no flight left holding it


def _drop_and_attach_race(iterations=3000):
    """Thread A drops its last array on a segment while thread B maps the same segment."""
    import queue
    import threading

    q = queue.Queue(maxsize=8)

    def producer():
        for i in range(iterations):
            a = shm.empty((70_000,), np.uint8)  # its own segment
            a[-1] = i % 251
            q.put(ForkingPickler.dumps(a))
            del a  # often the last reference, while the consumer maps it
        q.put(None)

    t = threading.Thread(target=producer)
    t.start()
    while (payload := q.get(timeout=60)) is not None:
        b = pickle.loads(payload)
        b[0] = b[-1]  # touches the memory: a use after unmap would crash here
        del b
    t.join()


def test_dropping_and_attaching_in_two_threads_is_safe():
    # in a child process: the failure this guards against is a segfault
    import multiprocessing
    p = multiprocessing.get_context("fork").Process(target=_drop_and_attach_race)
    p.start()
    p.join(120)
    assert p.exitcode == 0, f"exit code {p.exitcode} (negative: killed by that signal)"
