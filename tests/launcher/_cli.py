"""Running the real ``zgrad`` CLI in a subprocess (``python3 -m launcher``), and finding what a
job left behind (processes with its job id in their environment, /dev/shm segments)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "launcher", "scripts", "worker.py")


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "PMI_", "MPI_", "ZGRAD_", "MASTER_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def zgrad(*args, cwd, timeout_s=60, env=None) -> subprocess.CompletedProcess:
    """Run ``zgrad ARGS`` to the end; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "launcher", *map(str, args)], cwd=cwd,
                          env=env or cli_env(), capture_output=True, text=True,
                          timeout=timeout_s)


def zgrad_bg(*args, cwd, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher", *map(str, args)], cwd=cwd,
                            env=env or cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_files(paths, proc=None, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not all(os.path.exists(p) for p in paths):
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the launcher exited early ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {paths}")
        time.sleep(0.05)


def job_id(run_dir) -> str:
    with open(os.path.join(run_dir, "launcher.json")) as f:
        return json.load(f)["job_id"]


def job_processes(job: str) -> list:
    """Pids of live processes whose environment carries ZGRAD_JOB_ID=`job`."""
    needle = f"ZGRAD_JOB_ID={job}".encode()
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().split(") ")[-1].startswith("Z"):
                            continue    # a zombie is dead, only not yet reaped
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def assert_job_gone(job: str, timeout_s: float = 5.0):
    """No process and no /dev/shm segment of `job` remains (within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        procs = job_processes(job)
        segs = [n for n in os.listdir("/dev/shm") if n.startswith(f"zgrad_{job}_")]
        if not procs and not segs:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} left processes {procs} and segments {segs}")
        time.sleep(0.1)
