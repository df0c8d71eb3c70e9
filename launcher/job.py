"""One job from start to end: identity, restarts, the final report and the shm sweep."""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

from .env import worker_env
from .supervisor import Supervisor

# exit codes: 1 a worker failed (torchrun's), 2 bad usage or config, 128+N a signal
EXIT_WORKER_FAILED = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the store binds it right after)."""
    with socket.socket() as s:
        s.bind((host if host.startswith("127.") else "", 0))
        return s.getsockname()[1]


def say(msg: str):
    """The launcher's own messages go to stderr, so stdout is only the workers' output."""
    print(msg, file=sys.stderr, flush=True)


def run_job(argv, placement, run_dir: str, *, secret: str, job_id: str, max_restarts: int = 0,
            grace_s: float = 5.0, device: str = "cpu", gpus: int = 0) -> int:
    """Run `argv` as every worker of this launcher until done; returns the exit code.

    A failed group is restarted up to `max_restarts` times (each restart gets
    TORCHELASTIC_RESTART_COUNT += 1; a trainer resumes from its latest checkpoint).
    """
    sup = Supervisor(os.path.join(run_dir, "logs"), grace_s=grace_s)
    sup.install_signals()
    state = {"job_id": job_id, "launcher_pid": os.getpid(), "argv": list(argv),
             "world_size": placement.world_size, "ranks": placement.ranks,
             "node_rank": placement.node_rank, "scheduler": placement.scheduler,
             "restarts": 0, "status": "running"}
    attempt, rc = 0, EXIT_WORKER_FAILED
    try:
        while True:
            if attempt and not placement.multi_launcher:   # the old port may be in TIME_WAIT
                placement.master_port = free_port(placement.master_addr)
            envs = {rank: worker_env(placement, i, secret=secret, job_id=job_id,
                                     run_dir=run_dir, restart_count=attempt,
                                     max_restarts=max_restarts, device=device, gpus=gpus)
                    for i, rank in enumerate(placement.ranks)}
            sup.start(argv, envs, attempt)
            state["workers"] = {str(w.rank): w.pid for w in sup.workers}
            _write_state(run_dir, placement, state)
            outcome = sup.wait()
            rc = _settle(sup, outcome, sup.stop(), state, attempt, max_restarts)
            if rc is not None:
                break
            attempt += 1
            state["restarts"] = attempt
    finally:
        sup.stop()
        state["swept_segments"] = sweep_segments(job_id, placement)
        state["exit_code"] = rc
        _write_state(run_dir, placement, state)
    return rc


def _settle(sup, outcome, stopped: dict, state: dict, attempt: int, max_restarts: int):
    """Report how one launch ended; the job's exit code, or None to restart the group."""
    if outcome.status == "ok":
        state["status"] = "finished"
        return 0
    if outcome.status == "interrupted":
        name = signal.Signals(outcome.signum).name
        how = ", ".join(f"rank {r}: {h}" for r, h in sorted(stopped.items())) or "none running"
        say(f"zgrad run: got {name}; stopped every worker ({how}).")
        state["status"] = f"interrupted by {name}"
        return 128 + outcome.signum
    sup.report_failure(outcome, stopped)
    state.setdefault("failures", []).append({"rank": outcome.failed.rank,
                                             "returncode": outcome.returncode})
    if attempt >= max_restarts or sup.interrupted:
        if max_restarts:
            say(f"zgrad run: no restarts left ({max_restarts} used); the job failed.")
        state["status"] = "failed"
        return EXIT_WORKER_FAILED
    say(f"zgrad run: restarting the group ({attempt + 1}/{max_restarts}); it resumes from its "
        "latest checkpoint if it wrote one.")
    return None


def _write_state(run_dir, placement, state):
    """RUN_DIR/launcher.json (launcher_rankN.json when several launchers share the job): job
    id, pids, status, restarts, failures (for people and for tests)."""
    name = "launcher.json" if not placement.multi_launcher else \
        f"launcher_rank{placement.ranks[0]}.json"
    tmp = os.path.join(run_dir, f".{name}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, name))


def sweep_segments(job_id: str, placement) -> int:
    """After the workers: remove the job's segments that nothing will remove otherwise.

    A running shm manager unlinks everything it counts when its clients are gone and the job's
    root (a launcher) is dead (Note [Shm lifetime]), so only a manager that is gone (killed)
    leaves garbage. Standalone, every process of this job id is gone by now, so whatever is
    left is garbage and is removed at once (a lingering manager exits when it sees this
    launcher, its root, die). Where other launchers may share this host and job id (two
    "nodes" on one machine), a running manager still serves them: then it is left to it.
    """
    try:
        from shm import segment
        from shm.__main__ import manager_alive
    except ImportError:  # pragma: no cover - shm always ships with zgrad
        return 0
    if placement.multi_launcher and manager_alive(job_id):
        return 0
    return len(segment.sweep(job_id))
