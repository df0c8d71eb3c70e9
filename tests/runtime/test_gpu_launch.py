"""One GPU per local rank: the worker resolves and *selects* its GPU before building anything
(checked on a CPU with a stand-in for CuPy's device calls), the ready CUDA config loads, and
on a GPU `zgrad run configs/digits_mlp_cuda.yaml` trains end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runtime.config import load_config
from runtime.rank_env import resolve_device
from tensor import backend
from tests import fakecuda
from tests.helpers import requires_cupy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name,env,local_rank,want", [
    ("cuda", "cuda:1", 0, 1),        # zgrad run's choice wins
    ("cuda", "cpu", 3, 1),           # no launcher choice: local rank mod 2 GPUs
    ("cuda", None, 2, 0),
    ("auto", "cuda:0", 1, 0),
    ("cuda:1", None, 0, 1),
])
def test_resolve_device_selects_the_ranks_gpu(monkeypatch, name, env, local_rank, want):
    fakecuda.install(monkeypatch, device_count=2)
    if env is None:
        monkeypatch.delenv("ZGRAD_DEVICE", raising=False)
    else:
        monkeypatch.setenv("ZGRAD_DEVICE", env)
    assert resolve_device(name, local_rank) == f"cuda:{want}"
    assert fakecuda.log.devices_used == [want], \
        "the GPU must be made current before the model is built"


def test_resolve_device_errors_and_cpu(monkeypatch):
    monkeypatch.setattr(backend, "cupy", None)
    assert resolve_device("auto", 0) == "cpu" and resolve_device("cpu", 3) == "cpu"
    with pytest.raises(RuntimeError, match="needs CuPy and a CUDA GPU"):
        resolve_device("cuda", 0)
    fakecuda.install(monkeypatch, device_count=2)
    with pytest.raises(ValueError, match="sees 2 GPU"):
        resolve_device("cuda:2", 0)


def test_cuda_config_loads():
    cfg = load_config(os.path.join(ROOT, "configs", "digits_mlp_cuda.yaml"))
    assert cfg.train.device == "cuda" and cfg.distributed.backend == "auto"
    assert cfg.model.name == "mlp" and cfg.data.name == "digits"


@requires_cupy
@pytest.mark.parametrize("backend_name", ["nccl", "zmq"])
def test_zgrad_run_cuda_config_trains_on_the_gpu(tmp_path, backend_name):
    import cupy
    nproc = 2 if backend_name == "zmq" or cupy.cuda.runtime.getDeviceCount() >= 2 else 1
    cmd = [sys.executable, "-m", "launcher", "run", "configs/digits_mlp_cuda.yaml",
           "--run-dir", str(tmp_path), "--nproc-per-node", str(nproc),
           f"distributed.backend={backend_name}", "train.epochs=3", "logging.progress=false"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_test_accuracy"] >= 0.9, summary
