"""runtime.trainer: the loop learns, resumes bitwise after SIGKILL, evaluates exactly on any
number of ranks, accumulates gradients like a big batch, and writes its run files."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tensor
from runtime.config import load_config
from runtime.registry import build_scheduler, loss_function, optimizer_class
from runtime.trainer import Trainer, run
from tests.helpers import free_port
from tests.runtime._trainer_helpers import spawn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_CFG = os.path.join(ROOT, "tests", "runtime", "digits_mlp_test.yaml")


def _lines(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_digits_mlp_learns_and_writes_run_files(tmp_path):
    cfg = load_config(TEST_CFG, [f"logging.run_dir={tmp_path}"])
    summary = run(cfg, str(tmp_path))
    assert summary["final_test_accuracy"] >= 0.97, summary
    assert summary["step"] == 220 and summary["epoch"] == 10   # 22 batches x 10 epochs
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert load_config(tmp_path / "config.yaml").model.args == {"hidden_sizes": [256, 256],
                                                                 "dropout": 0.1}
    lines = _lines(tmp_path)
    train = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train] == list(range(10, 221, 10))
    for r in train:
        assert {"step", "epoch", "loss", "lr", "samples_per_s"} <= set(r)
        assert r["samples_per_s"] > 0 and np.isfinite(r["loss"])
    assert train[-1]["loss"] < train[0]["loss"]
    evals = [r for r in lines if "eval_loss" in r]
    assert [(r["step"], r["epoch"]) for r in evals] == [(110, 5), (220, 10)]
    assert evals[-1]["eval_accuracy"] == summary["final_test_accuracy"]   # no val split
    assert lines[-1]["test_accuracy"] == summary["final_test_accuracy"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000110", "step_000220"]


def _trainer_proc(cfg_path, *overrides, env=None):
    e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "runtime.trainer", str(cfg_path),
                             *overrides], cwd=ROOT, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _trainer_procs(cfg_path, world_size, env=None):
    """`world_size` ranks of one job, as zgrad run / torchrun start them."""
    port = str(free_port())
    return [_trainer_proc(cfg_path, env={
        "RANK": str(r), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(r),
        "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
        **(env or {})}) for r in range(world_size)]


def _finish(procs, timeout_s=120):
    """Wait for every process; on a failure or the deadline, kill the rest."""
    procs = procs if isinstance(procs, list) else [procs]
    deadline = time.monotonic() + timeout_s
    try:
        results = []
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert p.returncode == 0, err
            results.append((out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results[0] if len(results) == 1 else results


def _resume_config(run_dir, extra=""):
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    # 22 batches per epoch in 8 steps (7 of 3 batches, 1 of 1): step 13 is at batch 15 of
    # epoch 1, so the resumed run must also know where the short group falls
    with open(path, "w") as f:
        f.write(f"""extends: {TEST_CFG}
data: {{name: "tests.runtime._trainer_helpers:GatedDigits"}}
scheduler: {{name: cosine, warmup_steps: 3}}
train: {{max_steps: 20, grad_accum_steps: 3, eval_every_steps: 10, log_every_steps: 5}}
checkpoint: {{every_steps: 13, every_epochs: null}}
""" + extra)
    return path


def _arrays(path):
    """Every tensor of a checkpoint: model, optimizer (or its ZeRO shards), and each rank's
    RNG and loader state."""
    import safetensors.numpy
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            if name.endswith(".safetensors"):
                rel = os.path.relpath(os.path.join(folder, name), path)
                for k, v in safetensors.numpy.load_file(os.path.join(folder, name)).items():
                    out[f"{rel}/{k}"] = v
    return out


def _same_run(dir_a, dir_b, step):
    a = _arrays(os.path.join(dir_a, "checkpoints", f"step_{step:06d}"))
    b = _arrays(os.path.join(dir_b, "checkpoints", f"step_{step:06d}"))
    assert a.keys() == b.keys() and any(k.startswith("model.") for k in a)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k   # bitwise
    drop = ("samples_per_s",)
    la = [{k: v for k, v in r.items() if k not in drop} for r in _lines(dir_a)]
    lb = [{k: v for k, v in r.items() if k not in drop} for r in _lines(dir_b)]
    assert la == lb


def _kill_after_checkpoint(procs, gate, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not os.path.isdir(gate):
        for p in procs:
            assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL


def test_exact_resume_after_sigkill_one_process(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    full = _trainer_proc(_resume_config(a))
    gate = os.path.join(b, "checkpoints", "step_000013")
    killed = _trainer_proc(_resume_config(b), env={"ZGRAD_TEST_GATE": gate})
    _finish(full)
    _kill_after_checkpoint([killed], gate)
    assert sorted(os.listdir(os.path.join(b, "checkpoints"))) == ["step_000013"]
    _, err = _finish(_trainer_proc(os.path.join(b, "config.yaml")))
    assert "resumed from" in err and "step 13, epoch 1" in err
    _same_run(a, b, 20)


def test_exact_resume_after_sigkill_two_processes(tmp_path):
    # DDP with no_sync micro-steps, per-rank data and RNG, and ZeRO's optimizer shards saved
    # per rank; one case only, as 6 processes take a while on 2 cores (the launcher's restart
    # test covers DDP without ZeRO)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    extra = "optim: {zero: true}\n"
    full = _trainer_procs(_resume_config(a, extra), 2)
    gate = os.path.join(b, "checkpoints", "step_000013")
    killed = _trainer_procs(_resume_config(b, extra), 2, env={"ZGRAD_TEST_GATE": gate})
    _finish(full)
    _kill_after_checkpoint(killed, gate)
    ckpt = os.path.join(b, "checkpoints", "step_000013")
    assert sorted(os.listdir(ckpt)) == ["manifest.json", "meta.json", "model.safetensors",
                                        "rank_0", "rank_1"]
    assert sorted(os.listdir(os.path.join(ckpt, "rank_1"))) == ["optim.safetensors",
                                                                "state.safetensors"]
    (_, err), _ = _finish(_trainer_procs(os.path.join(b, "config.yaml"), 2))
    # 11 batches per rank and epoch, in steps of 3, 3, 3, 2: step 13 is mid-epoch 3
    assert "resumed from" in err and "step 13, epoch 3" in err
    _same_run(a, b, 20)


def test_two_processes_learn_digits(tmp_path):
    import shutil
    shutil.copy(TEST_CFG, tmp_path / "config.yaml")
    _finish(_trainer_procs(tmp_path / "config.yaml", 2))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 110   # 11 batches per rank
    assert summary["final_test_accuracy"] >= 0.97, summary


def test_cli_error_exits_nonzero_with_traceback(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"extends: {TEST_CFG}\nmodel: {{name: no_such_model}}\n")
    proc = _trainer_proc(path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in err and "model 'no_such_model' is not registered" in err
    assert "mlp" in err   # the known names are listed


def _small_run(tmp_path, name, *overrides):
    cfg = load_config(TEST_CFG, ["model.args.dropout=0", "optim.name=sgd", "optim.lr=0.1",
                                 "scheduler.name=null", "train.max_steps=4",
                                 "train.eval_every_epochs=null", "checkpoint.every_epochs=null",
                                 "checkpoint.resume=none", *overrides])
    trainer = Trainer(cfg, str(tmp_path / name))
    try:
        trainer.setup().fit()
        return {k: v.numpy().copy() for k, v in trainer.module.state_dict().items()}
    finally:
        trainer.close()


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    big = _small_run(tmp_path, "big", "data.batch_size=64")
    accum = _small_run(tmp_path, "accum", "data.batch_size=32", "train.grad_accum_steps=2")
    small = _small_run(tmp_path, "small", "data.batch_size=32")
    for k in big:
        np.testing.assert_allclose(accum[k], big[k], rtol=1e-5, atol=1e-6)
    assert not all(np.allclose(small[k], big[k], rtol=1e-5, atol=1e-6) for k in big)


def _eval_rank(rank, world_size, x, y, w, b):
    import runtime.distributed as dist
    from runtime.data import DataLoader, DistributedSampler, TensorDataset
    from runtime.metrics import evaluate
    from tensor import nn
    dist.init_process_group(timeout=30)
    try:
        model = nn.Linear(x.shape[1], w.shape[0])
        model.load_state_dict({"weight": tensor.tensor(w), "bias": tensor.tensor(b)})
        ds = TensorDataset(tensor.tensor(x), tensor.tensor(y))
        loader = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, shuffle=False))
        return evaluate(model, loader, loss_function("cross_entropy"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 3])
def test_distributed_eval_counts_each_sample_once(world_size):
    rng = np.random.default_rng(0)
    n = 7   # divisible by neither 2 nor 3: the sampler pads with the first samples
    x = rng.normal(size=(n, 5)).astype(np.float32)
    w, b = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    logits = x.astype(np.float64) @ w.T + b   # the reference in float64
    y = logits.argmax(1)
    y[:2] = (y[:2] + 1) % 3   # the padded (repeated) samples are the wrong ones
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    per = -logp[np.arange(n), y]
    out = spawn(_eval_rank, world_size, x, y, w, b, timeout_s=60)
    assert out[0] == out[-1]
    assert out[0]["samples"] == n
    assert out[0]["accuracy"] == pytest.approx(5 / 7, abs=1e-12)
    assert out[0]["loss"] == pytest.approx(per.mean(), rel=1e-6)   # float32 model
    padded = np.concatenate([per, per[:-n % world_size]])   # what counting padding gives
    assert abs(padded.mean() - per.mean()) > 1e-3


def test_registries_build_what_configs_name():
    from tensor import nn, optim
    from tensor.optim import lr_scheduler as lrs
    params = nn.Linear(2, 2).parameters()
    assert optimizer_class("sgd") is optim.SGD and optimizer_class("AdamW") is optim.AdamW
    assert optimizer_class("tensor.optim:RMSprop") is optim.RMSprop
    opt = optim.SGD(params, lr=1.0)
    cos = build_scheduler("cosine", opt, {}, total_steps=10)
    assert isinstance(cos, lrs.CosineAnnealingLR) and cos.T_max == 10
    warm = build_scheduler("cosine", opt, {}, total_steps=10, warmup_steps=2)
    assert isinstance(warm, lrs.SequentialLR)
    assert isinstance(build_scheduler("StepLR", opt, {"step_size": 3}, 10), lrs.StepLR)
    assert build_scheduler(None, opt, {}, 10) is None
    with pytest.raises(ValueError, match="cosine"):
        build_scheduler("nope", opt, {}, 10)
    with pytest.raises(ValueError, match="bad scheduler.args"):
        build_scheduler("step", opt, {"bogus": 1}, 10)
    loss = loss_function("cross_entropy")   # sequence logits (B, T, V) are flattened
    logits = tensor.tensor(np.zeros((2, 3, 4), np.float32))
    target = tensor.tensor(np.zeros((2, 3), np.int64))
    assert loss(logits, target).item() == pytest.approx(np.log(4))


def test_data_registry_splits_without_leaks():
    from runtime.registry import build_datasets, dataset_info
    text = "".join(chr(97 + i % 26) for i in range(400))
    train, test = build_datasets("char", {"text": text, "block_size": 8, "test_fraction": 0.25})
    last_train_window = train.indices[-1] + 8   # the last text position a training sample sees
    assert last_train_window < test.indices[0] == 300
    assert list(test.indices) == list(range(300, 392, 8))   # non-overlapping windows
    assert dataset_info(train)["vocab_size"] == 26 and dataset_info(train)["block_size"] == 8
    tr, te = build_datasets("digits", {})
    assert len(tr) + len(te) == 1797 and not set(tr.indices) & set(te.indices)
    x = np.stack([tr[i][0] for i in range(len(tr))])   # standardised with training statistics
    assert abs(x.mean()) < 1e-4
    assert dataset_info(tr) == {"in_features": 64, "in_channels": 1, "image_size": 8,
                                "num_classes": 10, "vocab_size": None, "block_size": None}
    with pytest.raises(ValueError, match="mnist"):
        build_datasets("imagenet", {})


def test_sequence_eval_counts_tokens():
    from runtime.data import DataLoader, TensorDataset
    from runtime.metrics import evaluate
    from tensor import nn
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 3, 4)).astype(np.float32)   # (B, T, V)
    y = rng.integers(0, 4, size=(5, 3))

    class Fixed(nn.Module):
        def forward(self, idx):
            return tensor.tensor(logits)[idx.array]

    loader = DataLoader(TensorDataset(tensor.arange(5), tensor.tensor(y)), batch_size=2)
    res = evaluate(Fixed(), loader, loss_function("cross_entropy"))
    lg = logits.astype(np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, y[..., None], -1)
    assert res["samples"] == 5
    assert res["loss"] == pytest.approx(nll.mean(), rel=1e-6)
    assert res["accuracy"] == pytest.approx((logits.argmax(-1) == y).mean(), abs=1e-12)


def test_rank_env_and_thread_cap(monkeypatch):
    from threadpoolctl import threadpool_info
    from runtime.rank_env import limit_threads, rank_env
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert rank_env() == (1, 2, 1, 2)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK"):
        rank_env()
    limiter = limit_threads(None, local_world_size=len(os.sched_getaffinity(0)))
    try:
        blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    finally:
        limiter.restore_original_limits()
    from runtime import rank_env as env
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(env.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert env.default_threads(1) == 8 and env.default_threads(2) == 4
    monkeypatch.setattr(env.os, "getloadavg", lambda: (5.7, 0.0, 0.0))   # 6 cores busy
    assert env.default_threads(1) == 2 and env.default_threads(4) == 1


def test_resume_skips_a_corrupt_latest_and_refuses_a_named_one(tmp_path, capsys):
    from runtime.checkpoint import CheckpointWarning
    cfg = load_config(TEST_CFG, ["train.max_steps=4", "checkpoint.every_steps=2",
                                 "train.eval_every_epochs=null"])
    run(cfg, str(tmp_path))
    path = tmp_path / "checkpoints" / "step_000004"
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(100)
    cfg.train.max_steps = 6
    with pytest.warns(CheckpointWarning, match="step_000004 is corrupt.*truncated"):
        assert run(cfg, str(tmp_path))["step"] == 6
    assert f"resumed from {path.parent / 'step_000002'} (step 2," in capsys.readouterr().err
    # the resumed run wrote step 4 again over the corrupt one (keep_last 2 dropped step 2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000004", "step_000006"]
    cfg.checkpoint.resume = str(tmp_path / "named")
    shutil.copytree(tmp_path / "checkpoints" / "step_000006", cfg.checkpoint.resume)
    with open(os.path.join(cfg.checkpoint.resume, "meta.json"), "a") as f:
        f.write(" ")
    with pytest.raises(RuntimeError, match="meta.json has .* bytes.*truncated"):
        run(cfg, str(tmp_path))


def test_user_model_and_gradient_clipping(tmp_path):
    # SGD with lr 1 and gradients clipped to norm 1e-3: each step moves the weights by
    # exactly that much (the raw gradient norm is far larger)
    path = tmp_path / "config.yaml"
    path.write_text("model: {name: 'tests.runtime._trainer_helpers:FlatNet'}\n"
                    "optim: {name: sgd, lr: 1.0}\n"
                    "train: {max_steps: 1, clip_grad_norm: 0.001, eval_every_epochs: null}\n"
                    "logging: {progress: false}\n")
    cfg = load_config(path)
    trainer = Trainer(cfg, str(tmp_path))
    try:
        trainer.setup()
        before = [p.detach().numpy().copy() for p in trainer.module.parameters()]
        trainer.fit()
        delta = [p.detach().numpy() - b for p, b in zip(trainer.module.parameters(), before)]
    finally:
        trainer.close()
    assert type(trainer.module).__name__ == "Sequential"
    norm = np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in delta))
    assert norm == pytest.approx(1e-3, rel=1e-3)


def test_tensorboard_scalars_beside_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboardX")
    cfg = load_config(TEST_CFG, ["train.max_steps=2", "train.log_every_steps=1",
                                 "train.eval_every_epochs=null", "logging.tensorboard=true"])
    run(cfg, str(tmp_path))
    (events,) = os.listdir(tmp_path / "tensorboard")
    data = (tmp_path / "tensorboard" / events).read_bytes()
    assert b"samples_per_s" in data and b"test_accuracy" in data


def test_training_steps_leave_the_loss_on_its_device(tmp_path, monkeypatch):
    """No host read of the loss per step (on a GPU each would wait for the step's kernels):
    the losses are read in one copy at each log, and the logged mean is what reading each
    loss at once and summing in float64 gives."""
    import runtime.trainer as trainer_mod
    seen, reads = [], [0]
    step = trainer_mod.Trainer._micro_step
    item = tensor.Tensor.item

    def counting_item(t):
        reads[0] += 1
        return item(t)

    class Recording(list):   # every loss the step hands over, before a log folds them
        def append(self, t):
            seen.append(float(t.numpy()))
            super().append(t)

    def micro_step(self, x, y, n):
        if not isinstance(self._losses, Recording):
            self._losses = Recording(self._losses)
        with monkeypatch.context() as m:
            m.setattr(tensor.Tensor, "item", counting_item)
            step(self, x, y, n)
    monkeypatch.setattr(trainer_mod.Trainer, "_micro_step", micro_step)
    cfg = load_config(TEST_CFG, [f"logging.run_dir={tmp_path}", "train.epochs=1"])
    run(cfg, str(tmp_path))
    assert reads[0] == 0, f"{reads[0]} Tensor.item() calls in {len(seen)} training steps"
    first = [r for r in _lines(tmp_path) if "loss" in r][0]
    want = 0.0
    for v in seen[:10]:
        want += v
    assert first["step"] == 10 and first["loss"] == want / 10
