"""The trainer's loop against a hand-written one, and the cost of a checkpoint.

Three ways to train the digits MLP (64-256-256-10, AdamW, batch 64, one BLAS thread), in one
run, interleaved:
  trainer    runtime.trainer from a config (DataLoader, loss bookkeeping, metrics.jsonl)
  loop       a hand-written zgrad loop over pre-built tensors (randperm + indexing): the
             floor for the trainer, which adds the data loader and its bookkeeping
  torch      the same hand-written loop in PyTorch (when installed)
and the time of save_checkpoint / find_latest + load_checkpoint for the MLP 784-512-512-10
with its Adam state (about 8 MB), beside tensor.save of the same state dicts.

    python benchmarks/bench_trainer.py [--epochs 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
from runtime.config import load_config  # noqa: E402
from runtime.registry import build_datasets  # noqa: E402
from runtime.trainer import Trainer  # noqa: E402

CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                   "runtime", "digits_mlp_test.yaml")


def digits_arrays():
    train, _ = build_datasets("digits", {})
    x = np.stack([train[i][0] for i in range(len(train))]).reshape(len(train), -1)
    y = np.array([train[i][1] for i in range(len(train))], np.int64)
    return x, y


def run_trainer(epochs: int, run_dir: str) -> float:
    cfg = load_config(CFG, [f"train.epochs={epochs}", "model.args.dropout=0",
                            "train.eval_every_epochs=null", "checkpoint.every_epochs=null",
                            "checkpoint.resume=none", f"logging.run_dir={run_dir}"])
    t = Trainer(cfg, run_dir)
    try:
        summary = t.setup().fit()
    finally:
        t.close()
    return summary["samples_per_s"]


def run_loop(lib, x, y, epochs: int, batch: int = 64) -> float:
    """Samples/s of a hand-written loop, the same code on zgrad (lib=tensor) or torch."""
    lib.manual_seed(0)
    nn, F = lib.nn, lib.nn.functional
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = lib.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = lib.from_numpy(x), lib.from_numpy(y)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = lib.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
    return epochs * len(x) / (time.perf_counter() - t0)


def checkpoint_times(repeats: int) -> dict:
    """Median seconds: save_checkpoint, find_latest + load_checkpoint, tensor.save."""
    import tensor.nn as nn
    import tensor.nn.functional as F
    from runtime import checkpoint as ck
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    opt = tensor.optim.Adam(model.parameters())
    F.cross_entropy(model(tensor.randn(8, 784)), tensor.tensor(np.zeros(8, np.int64))).backward()
    opt.step()
    out = {"save_checkpoint": [], "find_latest+load": [], "tensor.save": []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(repeats):
            t0 = time.perf_counter()
            ck.save_checkpoint(d, r, model=model, optimizer=opt, keep_last=2)
            t1 = time.perf_counter()
            ck.load_checkpoint(ck.find_latest(d), model=model, optimizer=opt)
            t2 = time.perf_counter()
            tensor.save({"model": model.state_dict(), "optim": opt.state_dict()},
                        os.path.join(d, "plain.safetensors"))
            t3 = time.perf_counter()
            out["save_checkpoint"].append(t1 - t0)
            out["find_latest+load"].append(t2 - t1)
            out["tensor.save"].append(t3 - t2)
    return {k: statistics.median(v) for k, v in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    x, y = digits_arrays()
    rates = {"trainer": [], "loop": []} | ({"torch": []} if torch else {})
    with threadpool_limits(limits=1, user_api="blas"), tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            rates["trainer"].append(run_trainer(args.epochs, os.path.join(d, str(r))))
            rates["loop"].append(run_loop(tensor, x, y, args.epochs))
            if torch:
                rates["torch"].append(run_loop(torch, x, y, args.epochs))
        ck_times = checkpoint_times(max(3, args.repeats))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"digits MLP 64-256-256-10, AdamW, batch 64, {args.epochs} epochs, 1 thread, "
          f"median of {args.repeats} (samples/s):")
    for k, v in med.items():
        print(f"  {k:8s} {v:10.0f}   trainer/{k} = {med['trainer'] / v:.2f}")
    print("checkpoint of an MLP 784-512-512-10 with Adam state (~8 MB), median s:")
    for k, v in ck_times.items():
        print(f"  {k:18s} {v * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
