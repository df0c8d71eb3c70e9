"""runtime.checkpoint: layout, atomic writes, keep-last, corruption detection, exact state."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tensor
import tensor.nn.functional as F
from runtime import checkpoint as ck
from runtime.data import DataLoader, TensorDataset
from runtime.models import build_model
from tensor import optim
from tests.runtime._trainer_helpers import spawn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Job:
    """A tiny training job: MLP with dropout, AdamW, cosine schedule, a shuffling loader."""

    def __init__(self, seed=0):
        tensor.manual_seed(seed)
        self.model = build_model("mlp", {"hidden_sizes": [16], "dropout": 0.2},
                                 {"in_features": 4, "num_classes": 3})
        self.opt = optim.AdamW(self.model.parameters(), lr=1e-2)
        self.sched = optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=20)
        rng = np.random.default_rng(0)
        ds = TensorDataset(tensor.tensor(rng.normal(size=(22, 4)).astype(np.float32)),
                           tensor.tensor(np.arange(22) % 3))
        self.loader = DataLoader(ds, batch_size=4, shuffle=True,
                                 generator=tensor.Generator().manual_seed(1))

    def step(self, x, y):
        self.opt.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.opt.step()
        self.sched.step()

    def save(self, d, step, **kw):
        return ck.save_checkpoint(d, step, model=self.model, optimizer=self.opt,
                                  scheduler=self.sched, loader=self.loader, epoch=0, **kw)

    def weights(self):
        return {k: v.numpy().copy() for k, v in self.model.state_dict().items()}


def _draws():
    return random.random(), float(np.random.rand()), float(tensor.rand(1).item())


def test_resume_mid_epoch_continues_exactly(tmp_path):
    a = _Job()
    it = iter(a.loader)
    for _ in range(2):
        a.step(*next(it))
    path = a.save(tmp_path, 2)
    rest_a = []
    for x, y in it:                       # the rest of the epoch, then one more
        rest_a.append(x.numpy().copy())
        a.step(x, y)
    for x, y in a.loader:
        rest_a.append(x.numpy().copy())
        a.step(x, y)
    draws_a = _draws()

    b = _Job(seed=123)                    # different weights and RNG until loaded
    meta = ck.load_checkpoint(path, model=b.model, optimizer=b.opt, scheduler=b.sched,
                              loader=b.loader)
    assert meta["step"] == 2 and meta["epoch"] == 0
    rest_b = []
    for _ in range(2):
        for x, y in b.loader:
            rest_b.append(x.numpy().copy())
            b.step(x, y)
    assert len(rest_b) == len(rest_a) == 4 + 6
    assert all(np.array_equal(p, q) for p, q in zip(rest_a, rest_b))
    assert _draws() == draws_a            # python, numpy and zgrad RNG continue identically
    wa, wb = a.weights(), b.weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert b.sched.get_last_lr() == a.sched.get_last_lr()


def test_layout_manifest_and_keep_last(tmp_path):
    job = _Job()
    for step in (1, 2, 3, 4):
        job.save(tmp_path, step, keep_last=2, extra={"note": "x"})
    assert sorted(os.listdir(tmp_path)) == ["step_000003", "step_000004"]   # no .tmp left
    path = tmp_path / "step_000004"
    assert sorted(os.listdir(path)) == ["manifest.json", "meta.json", "model.safetensors",
                                        "optim.safetensors", "rank_0"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 4 and manifest["world_size"] == 1
    assert set(manifest["files"]) == {"meta.json", "model.safetensors", "optim.safetensors",
                                      "rank_0/state.safetensors"}
    import hashlib
    for rel, rec in manifest["files"].items():
        data = (path / rel).read_bytes()
        assert rec["size_bytes"] == len(data)
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    meta = json.loads((path / "meta.json").read_text())
    assert meta["extra"] == {"note": "x"} and meta["scheduler"]["last_epoch"] == 0
    import safetensors.numpy   # other frameworks can read the tensors
    assert "layers.1.weight" in safetensors.numpy.load_file(str(path / "model.safetensors"))
    assert ck.find_latest(tmp_path) == str(path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_manifest", "bad_manifest",
                                    "missing_file"])
def test_damaged_latest_is_skipped_with_warning(tmp_path, damage):
    job = _Job()
    job.save(tmp_path, 1)
    new = job.save(tmp_path, 2)
    target = os.path.join(new, "model.safetensors" if damage != "missing_file"
                          else "rank_0/state.safetensors")
    if damage == "flip":
        with open(target, "r+b") as f:
            f.seek(-3, os.SEEK_END)
            b = f.read(1)
            f.seek(-3, os.SEEK_END)
            f.write(bytes([b[0] ^ 0xFF]))
    elif damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    elif damage == "no_manifest":
        os.remove(os.path.join(new, "manifest.json"))
    elif damage == "bad_manifest":
        with open(os.path.join(new, "manifest.json"), "w") as f:
            f.write('{"format": "zgrad-check')
    else:
        os.remove(target)
    expect = {"flip": "sha256", "truncate": "truncated", "no_manifest": "missing",
              "bad_manifest": "not valid JSON", "missing_file": "missing"}[damage]
    with pytest.warns(ck.CheckpointWarning, match=expect):
        assert ck.find_latest(tmp_path) == str(tmp_path / "step_000001")
    with pytest.raises(ck.CheckpointError, match="cannot be loaded"):
        ck.load_checkpoint(new, model=job.model)


def test_all_damaged_means_none_with_warning(tmp_path):
    job = _Job()
    path = job.save(tmp_path, 1)
    os.remove(os.path.join(path, "manifest.json"))
    with pytest.warns(ck.CheckpointWarning) as record:
        assert ck.find_latest(tmp_path) is None
    messages = [str(w.message) for w in record]
    assert "manifest.json is missing" in messages[0]
    assert "starting from scratch" in messages[-1]
    assert ck.find_latest(tmp_path / "nowhere") is None


def test_failing_write_leaves_previous_intact(tmp_path, monkeypatch):
    job = _Job()
    job.save(tmp_path, 1)
    before = job.weights()
    calls = []
    real = ck._write

    def failing(folder, rel, write):
        calls.append(rel)
        if rel == "optim.safetensors":
            raise OSError(28, "No space left on device")
        return real(folder, rel, write)

    monkeypatch.setattr(ck, "_write", failing)
    with pytest.raises(ck.CheckpointError, match="rank.*0.*No space left"):
        job.save(tmp_path, 2)
    monkeypatch.undo()
    assert "optim.safetensors" in calls
    assert not (tmp_path / "step_000002").exists()
    assert ck.find_latest(tmp_path) == str(tmp_path / "step_000001")
    other = _Job(seed=9)
    ck.load_checkpoint(ck.find_latest(tmp_path), model=other.model)
    assert all(np.array_equal(before[k], v) for k, v in other.weights().items())
    job.save(tmp_path, 3)                 # the next save clears the leftover .tmp folder
    assert sorted(os.listdir(tmp_path)) == ["step_000001", "step_000003"]


def test_process_killed_mid_save_leaves_previous_intact(tmp_path):
    # a real SIGKILL in the middle of writing checkpoint 2 (after its model file is on disk)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from tests.runtime.test_checkpoint import _Job
        from runtime import checkpoint as ck
        job = _Job()
        job.save({str(tmp_path)!r}, 1)
        real = ck._write
        def dying(folder, rel, write):
            out = real(folder, rel, write)
            if rel == "model.safetensors":
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        ck._write = dying
        job.save({str(tmp_path)!r}, 2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(os.listdir(tmp_path)) == [".step_000002.tmp", "step_000001"]
    assert ck.find_latest(tmp_path) == str(tmp_path / "step_000001")
    ck.load_checkpoint(tmp_path / "step_000001", model=_Job().model)


def test_rng_state_roundtrip_through_files(tmp_path):
    job = _Job()
    random.seed(5)
    np.random.seed(6)
    tensor.manual_seed(7)
    np.random.standard_normal()   # leaves a cached gaussian in numpy's legacy state
    path = job.save(tmp_path, 1)
    expect = _draws()
    random.seed(0)
    np.random.seed(0)
    tensor.manual_seed(0)
    ck.load_checkpoint(path)
    assert _draws() == expect


def test_world_size_change_restores_shared_state_only(tmp_path):
    job = _Job()
    path = job.save(tmp_path, 1)
    meta = json.loads(open(os.path.join(path, "meta.json")).read())
    meta["world_size"] = 2
    other = _Job(seed=3)
    (tmp_path / "step_000001" / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(ck.CheckpointWarning, match="written by 2 ranks"):
        ck.load_checkpoint(path, model=other.model, loader=other.loader, verify=False)
    assert all(np.array_equal(job.weights()[k], v) for k, v in other.weights().items())


def _two_rank_save(rank, world_size, directory, fail_rank):
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    try:
        job = _Job()
        tensor.manual_seed(100 + rank)          # ranks' RNG streams differ
        next(iter(job.loader))
        job.loader.load_state_dict(job.loader.state_dict())
        ck.save_checkpoint(directory, 1, model=job.model, optimizer=job.opt,
                           scheduler=job.sched, loader=job.loader)
        expect = float(tensor.rand(1).item())
        tensor.manual_seed(0)
        latest = ck.find_latest(directory)
        ck.load_checkpoint(latest)
        got = float(tensor.rand(1).item())
        if rank == fail_rank:
            ck._write = lambda *a: (_ for _ in ()).throw(OSError("disk on fire"))
        try:
            ck.save_checkpoint(directory, 2, model=job.model)
            err = None
        except ck.CheckpointError as e:
            err = str(e)
        return {"expect": expect, "got": got, "err": err, "latest": latest}
    finally:
        dist.destroy_process_group()


def test_two_ranks_write_their_own_state_and_fail_together(tmp_path):
    out = spawn(_two_rank_save, 2, str(tmp_path), 1, timeout_s=60)
    path = tmp_path / "step_000001"
    assert sorted(os.listdir(path)) == ["manifest.json", "meta.json", "model.safetensors",
                                        "optim.safetensors", "rank_0", "rank_1"]
    assert [o["latest"] for o in out] == [str(path)] * 2
    assert [o["got"] for o in out] == [o["expect"] for o in out]   # each rank its own RNG
    assert out[0]["expect"] != out[1]["expect"]
    for o in out:   # rank 1's failure is reported on both ranks, and nothing hangs
        assert o["err"] is not None and "rank(s) [1]" in o["err"] and "disk on fire" in o["err"]
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == ["step_000001"]


def _zero_rank(rank, world_size, directory):
    import runtime.distributed as dist
    from runtime.distributed.optim import ZeroRedundancyOptimizer
    dist.init_process_group(timeout=30)
    try:
        def make(seed):
            job = _Job(seed)
            job.opt = ZeroRedundancyOptimizer(job.model.parameters(), optimizer_class=optim.Adam,
                                              lr=1e-2)
            job.sched = optim.lr_scheduler.StepLR(job.opt, step_size=1, gamma=0.5)
            return job
        x, y = next(iter(_Job().loader))
        a = make(0)
        for _ in range(2):
            a.step(x, y)   # same batch on both ranks: same gradients, no DDP needed
        path = ck.save_checkpoint(directory, 2, model=a.model, optimizer=a.opt,
                                  scheduler=a.sched)
        b = make(5)
        ck.load_checkpoint(path, model=b.model, optimizer=b.opt, scheduler=b.sched)
        rng = ck.rng_state()   # a and b share this process's generator (dropout)
        a.step(x, y)
        ck.set_rng_state(rng)
        b.step(x, y)
        same = all(np.array_equal(a.weights()[k], v) for k, v in b.weights().items())
        try:
            ck.load_checkpoint(path, optimizer=_Job().opt)
            err = None
        except ck.CheckpointError as e:
            err = str(e)
        return {"same": same, "files": sorted(os.listdir(os.path.join(path, f"rank_{rank}"))),
                "lr": b.opt.param_groups[0]["lr"], "err": err}
    finally:
        dist.destroy_process_group()


def _has_zero() -> bool:
    try:
        from runtime.distributed.optim import ZeroRedundancyOptimizer  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _has_zero(), reason="needs runtime.distributed.optim's ZeRO")
def test_zero_optimizer_shards_are_saved_per_rank(tmp_path):
    out = spawn(_zero_rank, 2, str(tmp_path), timeout_s=60)
    assert "optim.safetensors" not in os.listdir(tmp_path / "step_000002")
    for o in out:
        assert o["same"] and o["files"] == ["optim.safetensors", "state.safetensors"]
        assert o["lr"] == pytest.approx(1e-2 * 0.5 ** 3)
        assert "ZeroRedundancyOptimizer shards of 2 ranks" in o["err"]
