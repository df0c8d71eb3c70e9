"""A job's root process for test_lifetime: shares memory with children, then waits to be SIGKILLed.

Run as ``python -m tests.shm._killed_parent fork|spawn`` in a fresh job (no ZGRAD_JOB_ID).
Prints one JSON line with the job id, the children's pids and the segment names, then sleeps.
"""
import json
import os
import sys
import time

import numpy as np

import shm
import shm.multiprocessing as mp


def orphan_exits(arrays, q, parent_pid):
    """Holds the parent's arrays and one of its own until the parent is gone, then exits."""
    mine = shm.zeros((100_000,), np.float32)  # its own segment
    q.put(shm.handle(mine)[0])
    while os.getppid() == parent_pid:
        time.sleep(0.05)
    assert all(a.sum() == 0 for a in arrays)  # still mapped and readable after the parent died


def sleeps_forever(arrays, q):
    kept = shm.share(np.ones(10))
    q.put(shm.handle(kept)[0])
    time.sleep(600)


def main(method):
    ctx = mp.get_context(method)
    small, big = shm.zeros((10,)), shm.zeros((100_000,))
    q = ctx.Queue()
    p1 = ctx.Process(target=orphan_exits, args=([small, big], q, os.getpid()), daemon=True)
    p2 = ctx.Process(target=sleeps_forever, args=([small[2:], big[::-1]], q), daemon=True)
    p1.start()
    p2.start()
    names = [q.get(timeout=60), q.get(timeout=60), shm.handle(small)[0], shm.handle(big)[0]]
    r, w = ctx.Pipe(duplex=False)
    w.send(shm.zeros((50_000,)))  # a handle in flight that nobody will ever receive
    print(json.dumps({"job": shm.job_id(), "pids": [p1.pid, p2.pid], "names": names}),
          flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1])
