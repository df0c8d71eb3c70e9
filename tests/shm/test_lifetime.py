"""Segment lifetime across process death: see Note [Shm lifetime] in shm/segment.py."""
import gc
import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shm
import shm.multiprocessing as mp
from tests.helpers import assert_no_new_shm, shm_listing
from tests.shm.test_multiprocessing import _get, _join

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def no_leaks():
    before = shm_listing()
    yield
    gc.collect()
    assert_no_new_shm(before, timeout_s=10)


def _wait_gone(names, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/dev/shm/{n}") for n in names):
        if time.monotonic() > deadline:
            left = [n for n in names if os.path.exists(f"/dev/shm/{n}")]
            raise AssertionError(f"segments still in /dev/shm after {timeout_s}s: {left}")
        time.sleep(0.05)


def _holds_then_sleeps(q, r):
    got = q.get(timeout=30)
    own = shm.zeros((100_000,))                       # held only by this child
    back = shm.zeros((10,), np.int64)                 # sent to the parent
    back[:] = 5
    r.put((shm.handle(own)[0], back, shm.is_shared(got)))
    time.sleep(600)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigkill_of_a_child_releases_what_it_held(method):
    ctx = mp.get_context(method)
    q, r = ctx.Queue(), ctx.Queue()
    a = shm.zeros((100_000,))
    p = ctx.Process(target=_holds_then_sleeps, args=(q, r), daemon=True)
    p.start()
    q.put(a)
    own_name, back, ok = _get(r, p)
    assert ok and os.path.exists(f"/dev/shm/{own_name}")
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    _wait_gone([own_name])                            # the child's own segment went with it
    assert (back == 5).all() and a.sum() == 0         # ours stay usable
    back[:] = 1
    assert os.path.exists(f"/dev/shm/{shm.handle(a)[0]}")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigkill_of_the_parent_leaves_nothing(method):
    env = {k: v for k, v in os.environ.items() if k not in ("ZGRAD_JOB_ID", "ZGRAD_JOB_ROOT_PID")}
    parent = subprocess.Popen([sys.executable, "-m", "tests.shm._killed_parent", method],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([parent.stdout], [], [], 60)
        assert ready, "the parent did not report within 60s"
        info = json.loads(parent.stdout.readline())
        job = info["job"]
        assert job != shm.job_id()
        assert all(os.path.exists(f"/dev/shm/{n}") for n in info["names"])
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        time.sleep(0.3)
        os.kill(info["pids"][1], signal.SIGKILL)      # the other child dies too (as by a launcher)
        deadline = time.monotonic() + 15
        while [n for n in os.listdir("/dev/shm") if n.startswith(f"zgrad_{job}_")]:
            if time.monotonic() > deadline:
                left = [n for n in os.listdir("/dev/shm") if n.startswith(f"zgrad_{job}_")]
                raise AssertionError(f"job {job} left {left} in /dev/shm")
            time.sleep(0.05)
        # and the job's manager has exited
        from shm.__main__ import manager_alive
        deadline = time.monotonic() + 10
        while manager_alive(job):
            assert time.monotonic() < deadline, f"the shm manager of job {job} is still running"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        parent.stdout.close()


def _reshares_after_parent_dropped(a, q, dropped):
    assert dropped.wait(30)   # the parent has let go and its manager has seen the release
    a[:] = 3
    q.put(a[1:])     # by name: the segment must still exist


def test_fork_child_keeps_segment_the_parent_dropped_at_start():
    ctx = mp.get_context("fork")
    q, dropped = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_reshares_after_parent_dropped,
                    args=(shm.zeros((100_000,)), q, dropped))
    p.start()  # Process.start() drops its args in the parent: the child is the only holder
    gc.collect()
    from shm import _client
    _client.sync()   # the release is processed before the child re-shares: the race, always
    dropped.set()
    v = _get(q, p)
    assert v.shape == (99_999,) and (v == 3).all()
    _join(p)


def _puts_and_exits(q):
    a = shm.zeros((100_000,), np.float32)
    a[:] = 9
    q.put(a)
    q.close()
    q.join_thread()  # the bytes are in the pipe; this process now exits with a handle in flight


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_result_put_by_a_child_that_exited_is_still_there(method):
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_puts_and_exits, args=(q,))
    p.start()
    _join(p)
    a = q.get(timeout=30)
    assert (a == 9).all()


@pytest.mark.parametrize("scenario", ["unclaimed_handle_expires", "manager_killed_and_replaced"])
def test_scenario_in_a_job_of_its_own(scenario):
    env = {k: v for k, v in os.environ.items() if k not in ("ZGRAD_JOB_ID", "ZGRAD_JOB_ROOT_PID")}
    env["ZGRAD_SHM_FLIGHT_GRACE_S"] = "0.5"
    out = subprocess.run([sys.executable, "-m", "tests.shm._scenarios", scenario], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def test_manager_sigkill_then_normal_exit_leaves_no_segment():
    env = {k: v for k, v in os.environ.items() if k not in ("ZGRAD_JOB_ID", "ZGRAD_JOB_ROOT_PID")}
    out = subprocess.run([sys.executable, "-m", "tests.shm._scenarios",
                          "manager_killed_then_normal_exit"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
    name = out.stdout.split()[0]
    deadline = time.monotonic() + 10
    while os.path.exists(f"/dev/shm/{name}"):
        assert time.monotonic() < deadline, f"{name} leaked after the manager was killed"
        time.sleep(0.05)


def _drops_inherited_then_reports(box, q):
    name = shm.handle(box[0])[0]
    box.clear()  # the only reference (the Process object keeps the list, not the array)
    gc.collect()
    from shm import _client
    _client.sync()
    q.put(name)
    time.sleep(600)  # stays alive: its holds must already be gone


def test_fork_child_that_drops_an_inherited_array_lets_go_of_it():
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_drops_inherited_then_reports, args=([shm.zeros((100_000,))], q),
                    daemon=True)
    p.start()
    gc.collect()  # the parent's reference went with Process.start()
    try:
        name = _get(q, p)
        _wait_gone([name])  # while the child is still alive
    finally:
        p.kill()
        p.join(10)


def _receives_and_drops(q, n_box):
    n = 0
    while q.get(timeout=60) is not None:   # each tensor dropped at once: its arena mapping too
        n += 1
    n_box.value = n


def test_small_tensors_streamed_and_dropped_on_both_sides_all_arrive():
    """A receiver's claim and release can overtake the sender's hold and flight (different
    connections); the arena must not be unlinked under handles still in flight."""
    ctx = mp.get_context("fork")
    q, n_box = ctx.Queue(), ctx.Value("i", -1)
    p = ctx.Process(target=_receives_and_drops, args=(q, n_box))
    p.start()
    import tensor
    sent, t0 = 0, time.monotonic()
    while sent < 3000 and p.is_alive():
        t = tensor.zeros(1024).share_memory_()   # 4 KiB: packed into 1 MiB arenas
        q.put(t)
        del t                                   # dropped right away
        sent += 1
        ahead = t0 + sent / 1000 - time.monotonic()   # 1,000 a second: an arena lives for
        if ahead > 0:                                 # a tensor or two
            time.sleep(ahead)
    q.put(None)
    _join(p)
    assert p.exitcode == 0 and n_box.value == sent == 3000
