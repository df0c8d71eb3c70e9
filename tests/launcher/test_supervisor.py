"""Supervision through the real CLI: per-rank output, failures, signals, restarts, SLURM, nodes.

The workers are tests/launcher/scripts/worker.py (runtime.distributed directly); the
trainer's end-to-end jobs are in test_cli.py.
"""
import os
import signal
import subprocess

import pytest

from tests.helpers import free_port
from tests.launcher._cli import (WORKER, assert_job_gone, cli_env, job_id, wait_for_files, zgrad,
                                 zgrad_bg)


def test_script_runs_on_two_ranks_with_prefixed_output_and_logs(tmp_path):
    r = zgrad("run", "--nproc-per-node", 2, "--run-dir", tmp_path / "run", WORKER, "--segment",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        assert f"[rank {rank}] rank {rank}/2 local {rank}/2 sum 3" in r.stdout
        log = (tmp_path / "run" / "logs" / f"rank_{rank}.log").read_text()
        assert f"rank {rank}/2 local {rank}/2 sum 3" in log and "[rank" not in log
    assert_job_gone(job_id(tmp_path / "run"))


def test_crash_stops_the_others_and_reports_rank_code_and_traceback(tmp_path):
    r = zgrad("run", "--nproc-per-node", 2, "--grace-s", 2, "--run-dir", tmp_path / "run",
              WORKER, "--crash-rank", 1, "--sleep", 60, cwd=tmp_path)
    assert r.returncode == 1
    assert "rank 1 (pid" in r.stderr and "exited with code 1" in r.stderr
    assert "Traceback (most recent call last)" in r.stderr
    assert "ValueError: bad batch 7 on rank 1" in r.stderr
    assert "stopped the other workers: rank 0 (SIGTERM)" in r.stderr
    assert_job_gone(job_id(tmp_path / "run"))


def test_worker_killed_by_sigkill_ends_the_job_with_its_signal(tmp_path):
    run = tmp_path / "run"
    p = zgrad_bg("run", "--nproc-per-node", 2, "--grace-s", 2, "--run-dir", run, WORKER,
                 "--sleep", 60, "--segment", cwd=tmp_path)
    try:
        wait_for_files([run / "pid_0", run / "pid_1"], p)
        os.kill(int((run / "pid_1").read_text()), signal.SIGKILL)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 1
    assert "rank 1 (pid" in err and "was killed by SIGKILL" in err
    assert "segment True" in err          # the tail of its output
    assert "rank 0 (SIGTERM)" in err
    assert_job_gone(job_id(run))


def test_sigint_to_the_launcher_leaves_no_process_and_no_segment(tmp_path):
    run = tmp_path / "run"
    p = zgrad_bg("run", "--nproc-per-node", 2, "--grace-s", 2, "--run-dir", run, WORKER,
                 "--sleep", 60, "--segment", cwd=tmp_path)
    try:
        wait_for_files([run / "pid_0", run / "pid_1"], p)
        job = job_id(run)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "got SIGINT; stopped every worker" in err
    assert_job_gone(job)


def test_a_sigkilled_launcher_takes_its_workers_down(tmp_path):
    run = tmp_path / "run"
    p = zgrad_bg("run", "--nproc-per-node", 2, "--run-dir", run, WORKER, "--sleep", 60,
                 "--segment", cwd=tmp_path)
    try:
        wait_for_files([run / "pid_0", run / "pid_1"], p)
        job = job_id(run)
        p.kill()
        p.communicate(timeout=10)
    finally:
        p.kill()
    # PR_SET_PDEATHSIG kills the workers; the shm manager sees its root die and unlinks
    assert_job_gone(job, timeout_s=10)


def test_max_restarts_restarts_the_group_after_a_failure(tmp_path):
    # the worker crashes only when TORCHELASTIC_RESTART_COUNT is 0
    r = zgrad("run", "--nproc-per-node", 2, "--max-restarts", 1, "--grace-s", 2,
              "--run-dir", tmp_path / "run", WORKER, "--crash-rank", 0, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rank 0 (pid" in r.stderr and "restarting the group (1/1)" in r.stderr
    assert "[rank 1] rank 1/2 local 1/2 sum 3 " in r.stdout and " restart 1" in r.stdout
    log = (tmp_path / "run" / "logs" / "rank_0.log").read_text()
    assert "==== zgrad: start" in log and "==== zgrad: restart 1" in log


def _two_launchers(tmp_path, argvs_envs, timeout_s=60):
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv, env in argvs_envs]
    try:
        outs = [p.communicate(timeout=timeout_s) for p in procs]
        return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
    finally:
        for p in procs:
            p.kill()


def _job_of(path):
    import json
    with open(path) as f:
        return json.load(f)["job_id"]


def _cli(*args):
    import sys
    return [sys.executable, "-m", "launcher", *map(str, args)]


def test_slurm_style_environment_places_one_worker_per_task(tmp_path):
    port = free_port()
    jobs = []
    for rank in (0, 1):
        env = cli_env(SLURM_PROCID=rank, SLURM_NTASKS=2, SLURM_LOCALID=rank, SLURM_NODEID=0,
                      SLURM_NNODES=1, SLURM_TASKS_PER_NODE="2", SLURM_JOB_NODELIST="node[07]",
                      SLURM_JOB_ID=4242, SLURM_STEP_ID=0, MASTER_PORT=port)
        jobs.append((_cli("run", "--grace-s", 2, WORKER), env))
    results = _two_launchers(tmp_path, jobs)
    for rank, (rc, out, err) in enumerate(results):
        assert rc == 0, err
        assert f"rank {rank} of 2 (placed by slurm)" in err
        assert f"[rank {rank}] rank {rank}/2 local {rank}/2 sum 3" in out
    # both tasks agreed on the run folder (named after the SLURM job) and the shm job id
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and sorted(os.listdir(tmp_path / "runs" / runs[0] / "logs")) == \
        ["rank_0.log", "rank_1.log"]
    assert_job_gone(_job_of(tmp_path / "runs" / runs[0] / "launcher_rank0.json"))


def test_two_nodes_on_one_machine(tmp_path):
    port = free_port()
    env = cli_env(ZGRAD_SECRET="s3cret-shared-by-both-nodes")
    jobs = [(_cli("run", "--nnodes", 2, "--node-rank", r, "--master-port", port,
                  "--nproc-per-node", 1, "--run-dir", tmp_path / f"node{r}", WORKER), env)
            for r in (0, 1)]
    for r, (rc, out, err) in enumerate(_two_launchers(tmp_path, jobs)):
        assert rc == 0, err
        assert f"[rank {r}] rank {r}/2 local 0/1 sum 3" in out
    # both nodes derived the same shm job id from the shared secret and the master address
    assert _job_of(tmp_path / "node0" / "launcher_rank0.json") == \
        _job_of(tmp_path / "node1" / "launcher_rank1.json")
    assert_job_gone(_job_of(tmp_path / "node0" / "launcher_rank0.json"))


def test_multi_node_without_a_secret_is_a_clear_error(tmp_path):
    r = zgrad("run", "--nnodes", 2, "--node-rank", 1, "--master-port", 29500, WORKER,
              cwd=tmp_path)
    assert r.returncode == 2
    assert "ZGRAD_SECRET" in r.stderr and "every node" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, expect", [
    (["--nnodes", 2, "--node-rank", 0], "needs --master-port"),
    (["--nnodes", 2, "--node-rank", 2, "--master-port", 1], "--node-rank < --nnodes"),
    (["--nproc-per-node", 0], "--nproc-per-node: expected an integer >= 1"),
])
def test_bad_layout_flags_exit_2(tmp_path, args, expect):
    r = zgrad("run", *args, WORKER, cwd=tmp_path, env=cli_env(ZGRAD_SECRET="x"))
    assert r.returncode == 2 and expect in r.stderr, r.stderr
