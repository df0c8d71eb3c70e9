"""The one place a worker's environment is built (what torchrun's env:// contract promises).

A worker learns everything about its place in the job from these variables; ``runtime`` reads
them (``init_process_group()``, shm's job id), so a worker runs the same under ``zgrad run``,
torchrun, srun or mpirun.
"""
from __future__ import annotations

import hashlib
import os
import secrets

import launcher

# the checkout (or site-packages folder) this launcher runs from: workers import the same zgrad
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(launcher.__file__)))
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def job_identity(placement, environ=None) -> tuple:
    """(secret, job id) for this job.

    Standalone: a fresh secret and a random job id. Several launchers (nodes, scheduler tasks):
    the secret must come from $ZGRAD_SECRET (every node needs the same), and the job id is
    derived from it and the rendezvous address, so launchers on one host agree on the id their
    shared-memory segments carry (see Note [Shm lifetime] in shm/segment.py).
    """
    env = os.environ if environ is None else environ
    secret = env.get("ZGRAD_SECRET")
    if not placement.multi_launcher:
        return secret or secrets.token_hex(32), secrets.token_hex(4)
    # nodes started by hand (--nnodes) share nothing but what the user gives them; scheduler
    # tasks that all sit on one host may derive a key from the scheduler's job id instead
    if not secret and (placement.scheduler is None or not _loopback(placement.master_addr)):
        raise ValueError(
            f"zgrad run: a job across {placement.nnodes} nodes needs the same job secret on "
            "every node, and $ZGRAD_SECRET is not set. Run, on every node: export "
            "ZGRAD_SECRET=<the same value> (make one with: python3 -c 'import secrets; "
            "print(secrets.token_hex(32))'), then zgrad run again.")
    if not secret:   # several scheduler tasks on one host: the key only needs to agree
        secret = hashlib.sha256(f"{placement.job_key}|{os.getuid()}".encode()).hexdigest()
    digest = hashlib.sha256(f"{secret}|{placement.master_addr}:{placement.master_port}|"
                            f"{placement.job_key}".encode()).hexdigest()
    return secret, "j" + digest[:10]


def _terminal_columns() -> int:
    """The width of the launcher's terminal, or 0 when its stdout is not one."""
    try:
        return os.get_terminal_size(1).columns if os.isatty(1) else 0
    except OSError:
        return 0


def _loopback(addr: str) -> bool:
    return addr in ("localhost", "::1") or addr.startswith("127.")


def worker_env(placement, index: int, *, secret: str, job_id: str, run_dir: str,
               restart_count: int, max_restarts: int, device: str = "cpu", gpus: int = 0,
               base=None) -> dict:
    """The environment of worker `index` (of ``placement.ranks``) for one launch of the group.

    Args:
        placement: the job's shape (launcher.cluster.Placement).
        index: which of this launcher's workers.
        device: the config's train.device ("cpu", "cuda", "auto"): with GPUs present a worker
            gets ``ZGRAD_DEVICE=cuda:<local_rank % gpus>``, one GPU per local rank.
        restart_count: how many times the group was restarted (TORCHELASTIC_RESTART_COUNT).
    """
    env = dict(os.environ if base is None else base)
    rank, local_rank = placement.ranks[index], placement.local_ranks[index]
    env.update({
        "RANK": str(rank), "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": str(placement.world_size),
        "LOCAL_WORLD_SIZE": str(placement.local_world_size),
        "GROUP_RANK": str(placement.node_rank), "NODE_RANK": str(placement.node_rank),
        "MASTER_ADDR": placement.master_addr, "MASTER_PORT": str(placement.master_port),
        "ZGRAD_SECRET": secret,
        # shm: segment names carry the job id; the launcher is the job's root (its death ends
        # the job for the segment manager, see Note [Shm lifetime])
        "ZGRAD_JOB_ID": job_id, "ZGRAD_JOB_ROOT_PID": str(os.getpid()),
        "ZGRAD_RUN_DIR": run_dir,
        "ZGRAD_RESTART_COUNT": str(restart_count), "TORCHELASTIC_RESTART_COUNT": str(restart_count),
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
        "PYTHONUNBUFFERED": "1",     # lines reach the log as they are printed
    })
    # the TORCHELASTIC_*/GROUP_RANK names above are for scripts that read them; they would
    # also make rendezvous take this for torchrun, whose agent keeps a store on MASTER_PORT and
    # pushes zgrad's to the port beside it. No launcher process holds MASTER_PORT here, so the
    # store is on it, as users and firewalls expect (unless the user set it explicitly)
    env.setdefault("ZGRAD_STORE_PORT", str(placement.master_port))
    if _terminal_columns():
        # the workers write into a pipe, but the launcher shows rank 0's lines on a terminal:
        # a progress bar may draw (the launcher redraws it in place) at the terminal's width
        env["ZGRAD_TTY"] = "1"
        env.setdefault("COLUMNS", str(_terminal_columns() - len(f"[rank {rank}] ")))
    if gpus and device != "cpu":
        env["ZGRAD_DEVICE"] = f"cuda:{local_rank % gpus}"
    else:
        env["ZGRAD_DEVICE"] = "cpu"
    # BLAS threads: the workers of one host share its cores (torchrun sets 1; we split them)
    threads = str(max(1, (os.cpu_count() or 1) // placement.local_world_size))
    for var in _THREAD_VARS:
        env.setdefault(var, threads)
    path = env.get("PYTHONPATH", "")
    # a checkout run with PYTHONPATH or `python -m launcher` from its folder: a user's script
    # elsewhere must still import this zgrad (an installed one is on the path anyway)
    if _ROOT not in path.split(os.pathsep) and os.path.isdir(os.path.join(_ROOT, "runtime")) \
            and os.path.basename(_ROOT) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = _ROOT + (os.pathsep + path if path else "")
    return env
