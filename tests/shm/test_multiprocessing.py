"""shm between real processes, with the fork and the spawn start methods."""
import gc
import os
import resource

import numpy as np
import pytest

import shm
import shm.multiprocessing as mp
from tests.helpers import assert_no_new_shm, shm_listing

METHODS = ["fork", "spawn"]


@pytest.fixture(autouse=True)
def no_leaks():
    before = shm_listing()
    yield
    gc.collect()
    assert_no_new_shm(before, timeout_s=10)


def _join(p, timeout_s=30):
    p.join(timeout_s)
    if p.is_alive():
        p.kill()
        p.join(5)
        raise AssertionError(f"child pid {p.pid} did not finish within {timeout_s}s")
    assert p.exitcode == 0, f"child exited with {p.exitcode}"


def _get(q, p, timeout_s=60):
    """q.get that fails fast (with the exit code) when the child producing for q died."""
    import queue
    import time
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            if not p.is_alive() and q.empty():
                raise AssertionError(f"child pid {p.pid} died (exit code {p.exitcode})")
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing from child pid {p.pid} in {timeout_s}s")


def _child_writes(q, r):
    a, view = q.get(timeout=30)
    assert shm.is_shared(a) and shm.is_shared(view)
    assert np.shares_memory(a, view)  # the view arrived as a view of the same memory
    a[0, 0] = 1.0          # seen by the parent
    view[...] = 2.0        # a[1:, ::2].T in the parent
    mine = shm.zeros((3,), np.int64)
    mine[:] = [7, 8, 9]
    r.put((mine, float(a[3, 3])))
    assert r.__class__ and q.get(timeout=30) == "parent wrote"
    r.put(int(mine.sum()))  # the parent's write to `mine` is seen here


@pytest.mark.parametrize("method", METHODS)
def test_writes_are_seen_both_ways_and_views_survive(method):
    ctx = mp.get_context(method)
    q, r = ctx.Queue(), ctx.Queue()
    a = shm.zeros((4, 4), np.float32)
    a[3, 3] = 42.0
    p = ctx.Process(target=_child_writes, args=(q, r))
    p.start()
    q.put((a, a[1:, ::2].T))
    mine, seen = _get(r, p)
    assert seen == 42.0
    assert a[0, 0] == 1.0 and (a[1:, ::2] == 2.0).all() and a[1, 1] == 0.0
    assert list(mine) == [7, 8, 9]
    mine[:] = 100
    q.put("parent wrote")
    assert _get(r, p) == 300
    _join(p)


def _child_args(i, a, b):
    a[i] = i + 1
    b[i] = -(i + 1)


@pytest.mark.parametrize("method", METHODS)
def test_spawn_passes_shared_args_by_handle(method):
    a = shm.zeros((2,), np.int32)
    b = shm.zeros((10, 2), np.int32)[3]  # a view as a Process argument
    mp.spawn(_child_args, args=(a, b), nprocs=2, start_method=method, timeout_s=60)
    assert list(a) == [1, 2] and list(b) == [-1, -2]


def _child_raises(i, tag):
    if i == 1:
        raise ValueError(f"boom from rank {i} ({tag})")


@pytest.mark.parametrize("method", METHODS)
def test_spawn_error_carries_rank_and_traceback(method):
    with pytest.raises(mp.ProcessRaisedException) as e:
        mp.spawn(_child_raises, args=("x",), nprocs=2, start_method=method, timeout_s=60)
    assert e.value.error_index == 1
    msg = str(e.value)
    assert "Process 1" in msg and "Traceback" in msg and "_child_raises" in msg
    assert "ValueError: boom from rank 1 (x)" in msg


def _child_exits(i):
    if i == 0:
        os._exit(3)


def test_spawn_reports_exit_code():
    with pytest.raises(mp.ProcessExitedException, match="exit code 3") as e:
        mp.spawn(_child_exits, nprocs=2, start_method="fork", timeout_s=60)
    assert e.value.exit_code == 3 and e.value.error_index == 0


def _child_hangs(i):
    import time
    time.sleep(60)


def test_spawn_timeout_stops_children():
    with pytest.raises(TimeoutError, match=r"processes \[0\] still running"):
        mp.spawn(_child_hangs, nprocs=1, start_method="fork", timeout_s=0.5)


def test_spawn_bad_nprocs():
    with pytest.raises(ValueError, match="nprocs"):
        mp.spawn(_child_raises, nprocs=0)


N_MANY = 10_000


def _child_sends_many(q, separate_segments):
    # A low descriptor limit: one fd per tensor in flight would fail long before 10,000.
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    if separate_segments:
        from shm import arrays
        arrays.SMALL_BYTES = 0  # no arena packing: one segment per array
    for i in range(N_MANY):
        a = shm.empty((4,), np.int32)
        a[:] = i
        q.put(a)
        del a  # the sender lets go at once: the handle in flight keeps the memory
    q.put(None)
    q.close()
    q.join_thread()


@pytest.mark.parametrize("separate_segments", [False, True], ids=["arenas", "segments"])
def test_10k_tensors_in_flight_without_running_out_of_descriptors(separate_segments):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_sends_many, args=(q, separate_segments))
    p.start()
    got = []
    while True:
        a = _get(q, p)
        if a is None:
            break
        got.append(a)  # all 10,000 stay alive here at once
    _join(p, 60)
    assert len(got) == N_MANY
    assert all(int(a[0]) == i and shm.is_shared(a) for i, a in enumerate(got))
    assert len(os.listdir("/proc/self/fd")) < 200
    del got, a


def _fill_row(args):
    row, value = args
    row[:] = value  # in place: `row` is a view of the parent's array
    return shm.is_shared(row)


def test_pool_map_writes_through_views():
    a = shm.zeros((4, 3), np.int64)
    with mp.get_context("fork").Pool(2) as pool:
        shared = pool.map(_fill_row, [(a[i], i + 1) for i in range(4)], chunksize=1)
    assert shared == [True] * 4
    assert a.tolist() == [[1] * 3, [2] * 3, [3] * 3, [4] * 3]


def _echo_pipe(conn, sq):
    x = conn.recv()
    x *= 2
    conn.send(x[::2])
    y = sq.get()
    y += 1
    sq.put("done")


@pytest.mark.parametrize("method", METHODS)
def test_pipe_and_simple_queue(method):
    ctx = mp.get_context(method)
    parent, child = ctx.Pipe()
    sq = ctx.SimpleQueue()
    p = ctx.Process(target=_echo_pipe, args=(child, sq))
    p.start()
    a = shm.share(np.arange(6.0))
    parent.send(a)
    assert parent.poll(30), "no answer on the pipe"
    back = parent.recv()
    assert np.shares_memory(back, a) and back.tolist() == [0.0, 4.0, 8.0]
    b = shm.zeros((2,))
    sq.put(b)
    _join(p)
    assert sq.get() == "done" and b.tolist() == [1.0, 1.0]
