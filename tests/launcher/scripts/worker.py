"""A tiny worker for the launcher's tests: joins the job, all-reduces, then does what it is told.

    worker.py [--crash-rank R] [--sleep S] [--exit-code C] [--segment]

--segment puts an array in shared memory first, so the tests can check that none leaks.
"""
import argparse
import os
import sys
import time

import numpy as np

import runtime.distributed as dist
import tensor

ap = argparse.ArgumentParser()
ap.add_argument("--crash-rank", type=int, default=-1)
ap.add_argument("--sleep", type=float, default=0.0)
ap.add_argument("--exit-code", type=int, default=0)
ap.add_argument("--segment", action="store_true")
args = ap.parse_args()

rank = int(os.environ["RANK"])
dist.init_process_group("zmq")
t = tensor.tensor(np.full(4, rank + 1.0, dtype=np.float32))
dist.all_reduce(t)
ws = dist.get_world_size()
print(f"rank {rank}/{ws} local {os.environ['LOCAL_RANK']}/{os.environ['LOCAL_WORLD_SIZE']} "
      f"sum {t.array[0]:g} job {os.environ['ZGRAD_JOB_ID']} "
      f"restart {os.environ['TORCHELASTIC_RESTART_COUNT']}", flush=True)
if args.segment:
    import shm
    keep = shm.zeros((1024,))
    print(f"segment {shm.is_shared(keep)}", flush=True)
with open(os.path.join(os.environ["ZGRAD_RUN_DIR"], f"pid_{rank}"), "w") as f:
    f.write(str(os.getpid()))
if rank == args.crash_rank and int(os.environ["TORCHELASTIC_RESTART_COUNT"]) == 0:
    def load_batch(i):
        raise ValueError(f"bad batch {i} on rank {rank}")
    load_batch(7)
time.sleep(args.sleep)
dist.destroy_process_group()
sys.exit(args.exit_code)
