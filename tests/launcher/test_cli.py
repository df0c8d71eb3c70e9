"""The zgrad CLI: help, config/check, env, plot, cluster placement; the trainer's jobs end to end."""
import importlib.util
import json
import os

import pytest

from launcher import cluster
from launcher.env import job_identity, worker_env
from tests.launcher._cli import ROOT, cli_env, zgrad

DIGITS = os.path.join(ROOT, "configs", "digits_mlp.yaml")


def test_help_states_the_precedence(tmp_path):
    r = zgrad("run", "--help", cwd=tmp_path)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "defaults < the YAML file" in text and "< these flags" in text
    for flag in ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr",
                 "--master-port", "--max-restarts", "--run-dir"):
        assert flag in r.stdout


def test_unknown_run_flag_after_a_config_is_one_paragraph_exit_2(tmp_path):
    r = zgrad("run", DIGITS, "optim.lr=0.1", "--bogus", "1", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "unrecognized arguments: --bogus" in r.stderr and not (tmp_path / "runs").exists()


def test_config_prints_the_resolved_yaml_with_overrides(tmp_path):
    import yaml
    r = zgrad("config", DIGITS, "optim.lr=0.05", "train.epochs=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert cfg["optim"]["lr"] == 0.05 and cfg["train"]["epochs"] == 2
    assert cfg["scheduler"]["name"] == "cosine" and cfg["extends"] is None


def test_check_says_ok_with_a_summary(tmp_path):
    r = zgrad("check", DIGITS, cwd=tmp_path)
    assert r.returncode == 0 and "OK (model mlp" in r.stdout


def test_env_reports_versions_and_shm(tmp_path):
    r = zgrad("env", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for item in ("python:", "numpy:", "zgrad:", "pyzmq:", "cupy:", "CPUs:", "GPUs", "/dev/shm:"):
        assert item in r.stdout


def _metrics(run_dir):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for step in range(1, 21):
            f.write(json.dumps({"step": step, "epoch": 0, "loss": 1 / step, "lr": 0.01}) + "\n")
        f.write(json.dumps({"step": 20, "epoch": 1, "eval_loss": 0.1, "eval_accuracy": 0.9})
                + "\n")
        f.write('{"step": 21, "lo')    # a line cut short by a kill


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _metrics(tmp_path / "run")
    r = zgrad("plot", tmp_path / "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "loss, accuracy, lr" in r.stdout


def test_plot_without_matplotlib_or_metrics_is_a_clear_error(tmp_path):
    _metrics(tmp_path / "run")
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{tmp_path / 'fake'}{os.pathsep}{env['PYTHONPATH']}"
    r = zgrad("plot", tmp_path / "run", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "pip install 'zgrad[plot]'" in r.stderr
    r = zgrad("plot", tmp_path / "empty", cwd=tmp_path)
    assert r.returncode == 2 and "metrics.jsonl: no such file" in r.stderr


# -- placement and environment (in process: pure functions) ---------------------------------

def test_expand_nodelist_without_scontrol(monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    assert cluster.expand_nodelist("node[01-03,07],gpu1,a[8-10]-ib") == [
        "node01", "node02", "node03", "node07", "gpu1", "a8-ib", "a9-ib", "a10-ib"]
    assert cluster.expand_nodelist("single") == ["single"]


def test_slurm_placement_reads_ranks_layout_and_master(monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "2", "SLURM_TASKS_PER_NODE": "2(x3)", "SLURM_NNODES": "3",
           "SLURM_JOB_NODELIST": "gpu[03-05]", "SLURM_JOB_ID": "777", "SLURM_STEP_ID": "0"}
    p = cluster.from_scheduler(env)
    assert (p.ranks, p.local_ranks, p.world_size, p.local_world_size, p.nnodes, p.node_rank) \
        == ([5], [1], 6, 2, 3, 2)
    assert p.master_addr == "gpu03" and p.scheduler == "slurm" and p.multi_launcher
    assert p.master_port == cluster.from_scheduler(dict(env, SLURM_PROCID="0")).master_port
    assert cluster.from_scheduler(dict(env, MASTER_PORT="29400")).master_port == 29400
    assert cluster.from_scheduler({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None


def test_mpi_placement(monkeypatch):
    ompi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            "MASTER_ADDR": "host0", "MASTER_PORT": "29500"}
    p = cluster.from_scheduler(ompi)
    assert (p.ranks, p.local_ranks, p.nnodes, p.node_rank, p.master_addr, p.scheduler) == \
        ([3], [1], 2, 1, "host0", "openmpi")
    mpich = {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2",
             "MASTER_PORT": "1234"}
    p = cluster.from_scheduler(mpich)
    assert (p.ranks, p.master_addr, p.scheduler) == ([1], "127.0.0.1", "mpich")
    with pytest.raises(cluster.PlacementError, match="MASTER_ADDR"):
        cluster.from_scheduler({k: v for k, v in ompi.items() if k != "MASTER_ADDR"})


def test_worker_env_is_torchrun_compatible():
    p = cluster.from_flags(2, 2, 1, "10.0.0.1", 29500)
    secret, job = job_identity(p, {"ZGRAD_SECRET": "abc"})
    assert secret == "abc" and job == job_identity(p, {"ZGRAD_SECRET": "abc"})[1]  # every node
    env = worker_env(p, 1, secret=secret, job_id=job, run_dir="/r", restart_count=2,
                     max_restarts=3, device="cuda", gpus=2, base={})
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                                "TORCHELASTIC_RESTART_COUNT", "ZGRAD_DEVICE")} == {
        "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
        "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
        "TORCHELASTIC_RESTART_COUNT": "2", "ZGRAD_DEVICE": "cuda:1"}
    assert env["ZGRAD_JOB_ROOT_PID"] == str(os.getpid()) and env["ZGRAD_SECRET"] == "abc"
    # TORCHELASTIC_* must not push zgrad's store off MASTER_PORT (nothing holds it under zgrad)
    from runtime.distributed.rendezvous import master
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert master(None) == ("10.0.0.1", 29500)
    with pytest.raises(ValueError, match="ZGRAD_SECRET"):
        job_identity(p, {})
    standalone = cluster.from_flags(2, 1, 0, "127.0.0.1", 0)
    assert job_identity(standalone, {})[0] != job_identity(standalone, {})[0]  # fresh per job


# -- the trainer under the launcher, end to end ------------------------------------------------

needs_trainer = pytest.mark.skipif(importlib.util.find_spec("runtime.trainer") is None,
                                   reason="runtime.trainer has not landed in this checkout")

def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


@needs_trainer
def test_main_job_reaches_97_percent_on_digits_with_two_workers(tmp_path):
    run = tmp_path / "run"
    r = zgrad("run", DIGITS, "--run-dir", run, cwd=tmp_path, timeout_s=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = _summary(run)
    assert s["world_size"] == 2 and s["final_test_accuracy"] >= 0.97, s
    assert "[rank 0] trainer: final test accuracy" in r.stdout
    assert "2 workers on node 0 of 1 (world 2)" in r.stderr and "model mlp" in r.stderr
    from runtime.config import load_config
    written = load_config(run / "config.yaml")    # the resolved config the workers loaded
    assert written.distributed.nproc_per_node == 2 and written.logging.run_dir == str(run)
    assert sorted(os.listdir(run / "logs")) == ["rank_0.log", "rank_1.log"]
    assert (run / "metrics.jsonl").stat().st_size > 0


_SMALL = ["model.args.hidden_sizes=[64]", "train.epochs=2", "train.max_steps=30",
          "train.log_every_steps=5", "checkpoint.every_steps=10", "checkpoint.every_epochs=null",
          "logging.progress=false", "data.name=tests.launcher.scripts.gated:GatedDigits"]


def _arrays(ckpt):
    import safetensors.numpy
    out = {}
    for name in sorted(os.listdir(ckpt)):
        if name.endswith(".safetensors"):
            out.update({f"{name}/{k}": v for k, v in
                        safetensors.numpy.load_file(os.path.join(ckpt, name)).items()})
    return out


@needs_trainer
def test_restart_after_a_sigkill_finishes_bitwise_like_an_uninterrupted_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    a, b = tmp_path / "a", tmp_path / "b"
    gate = b / "checkpoints" / "step_000010"
    cmd = [sys.executable, "-m", "launcher", "run", DIGITS, *_SMALL, "--grace-s", "2"]
    full = subprocess.Popen(cmd + ["--run-dir", str(a)], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen(cmd + ["--run-dir", str(b), "--max-restarts", "1"], cwd=tmp_path,
                              env=cli_env(ZGRAD_TEST_GATE=gate), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not gate.is_dir():
            assert killed.poll() is None, killed.communicate()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        with open(b / "launcher.json") as f:
            os.kill(json.load(f)["workers"]["1"], signal.SIGKILL)
        out, err = killed.communicate(timeout=120)
        assert killed.returncode == 0, out[-4000:] + err[-3000:]
        full_out, full_err = full.communicate(timeout=120)
        assert full.returncode == 0, full_out[-3000:] + full_err[-3000:]
    finally:
        for p in (full, killed):
            p.kill()
            p.communicate()
    assert "rank 1 (pid" in err and "was killed by SIGKILL" in err
    assert "restarting the group (1/1)" in err and "resumed from" in out
    with open(b / "launcher.json") as f:
        state = json.load(f)
    assert state["status"] == "finished" and state["restarts"] == 1
    final_a, final_b = _arrays(a / "checkpoints" / "step_000030"), \
        _arrays(b / "checkpoints" / "step_000030")
    assert final_a.keys() == final_b.keys() and any(k.startswith("model") for k in final_a)
    for k in final_a:   # bitwise: the restarted job resumed exactly where it stopped
        assert final_a[k].dtype == final_b[k].dtype and (final_a[k] == final_b[k]).all(), k


@needs_trainer
def test_two_nodes_on_one_machine_train_with_the_trainer(tmp_path):
    import subprocess
    import sys
    from tests.helpers import free_port
    port, run = free_port(), tmp_path / "run"
    env = cli_env(ZGRAD_SECRET="node-secret")
    procs = [subprocess.Popen([sys.executable, "-m", "launcher", "run", DIGITS, *_SMALL[:2],
                               "train.max_steps=20", "logging.progress=false", "--nnodes", "2",
                               "--node-rank", str(r), "--nproc-per-node", "1",
                               "--master-port", str(port), "--run-dir", str(run)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    s = _summary(run)
    assert s["world_size"] == 2 and s["step"] == 20 and s["final_test_accuracy"] > 0.5
    assert sorted(os.listdir(run / "logs")) == ["rank_0.log", "rank_1.log"]


@needs_trainer
def test_profile_prints_a_per_op_table(tmp_path):
    r = zgrad("profile", DIGITS, "model.args.hidden_sizes=[32]", "--steps", 2, cwd=tmp_path,
              timeout_s=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 steps of 32 samples" in r.stdout
    for name in ("linear ", "LinearBackward0", "optimizer.step", "Self ms", "Total ms"):
        assert name in r.stdout
