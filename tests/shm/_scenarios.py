"""Scenarios that need a job of their own (own manager, own env), run by test_lifetime.py as
``python -m tests.shm._scenarios NAME``; each asserts, prints "ok" and exits 0."""
import gc
import os
import signal
import sys
import time

import shm
import shm.multiprocessing as mp
from shm import _client


def _wait(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _exists(name):
    return os.path.exists(f"/dev/shm/{name}")


def _put_and_exit(q):
    q.put(shm.zeros((100_000,)))
    q.close()
    q.join_thread()


def unclaimed_handle_expires():
    """A dead sender's handle that nobody receives is released after the grace period."""
    assert os.environ["ZGRAD_SHM_FLIGHT_GRACE_S"] == "0.5"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_put_and_exit, args=(q,))
    p.start()
    p.join(30)
    _wait(lambda: _client.stats()["flights"] == 0, 10, "the orphan handle was not released")
    _wait(lambda: not [n for n in os.listdir("/dev/shm") if n.startswith(f"zgrad_{shm.job_id()}_")],
          10, "its segment is still in /dev/shm")
    # the message itself is still in the queue: receiving it now fails clearly
    try:
        q.get(timeout=10)
    except FileNotFoundError as e:
        assert "no longer exists" in str(e)
    else:
        raise AssertionError("attaching an expired handle should fail")


def manager_killed_and_replaced():
    """If the manager is SIGKILLed, the next message starts a new one that learns our holds."""
    a = shm.zeros((100_000,))
    name = shm.handle(a)[0]
    old = _client.stats()["pid"]
    os.kill(old, signal.SIGKILL)
    time.sleep(0.2)
    b = shm.zeros((100_000,))  # reconnects: a fresh manager
    st = _client.stats()
    assert st["pid"] != old and st["segments"] == 2, st
    del a, b
    gc.collect()
    _wait(lambda: not _exists(name), 10, "a was not removed by the new manager")


def manager_killed_then_normal_exit():
    """Manager SIGKILLed, then this process drops its array and exits normally: the release
    reaches a fresh manager that never counted the segment; it must still be removed.
    Prints the segment's name; the test checks /dev/shm after this process is gone."""
    a = shm.zeros((100_000,))
    name = shm.handle(a)[0]
    os.kill(_client.stats()["pid"], signal.SIGKILL)
    time.sleep(0.2)
    del a
    gc.collect()
    print(name)


if __name__ == "__main__":
    globals()[sys.argv[1]]()
    print("ok")
