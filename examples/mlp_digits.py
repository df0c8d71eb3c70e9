"""Train an MLP on scikit-learn's digits (8x8 images, 10 classes) with zgrad.

    python examples/mlp_digits.py              # ~98% test accuracy in a few seconds on a CPU
    python examples/mlp_digits.py --epochs 5 --device cuda

The split (75% train / 25% test, stratified) and the weights are seeded, so a run repeats
exactly. The loop is the PyTorch one with `torch` replaced by `tensor`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
import tensor.nn as nn  # noqa: E402
import tensor.nn.functional as F  # noqa: E402
from tensor import optim  # noqa: E402


def load_digits_split(seed: int):
    """Standardised float32 features and int64 labels, split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed,
                                              stratify=y)
    # statistics of the training set only; pixels that are (nearly) constant in training get
    # unit scale, so a test image with ink there is not blown up by a tiny std
    mean, std = x_tr.mean(0), np.maximum(x_tr.std(0), 1.0)
    norm = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return norm(x_tr), y_tr.astype(np.int64), norm(x_te), y_te.astype(np.int64)


def make_model(hidden: int, dropout: float) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )


def evaluate(model: nn.Module, x: tensor.Tensor, y: tensor.Tensor) -> float:
    model.eval()
    with tensor.no_grad():
        pred = model(x).argmax(1)
    model.train()
    return float((pred == y).float().mean().item())


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: these matrices are too small to gain from "
                        "more, and extra threads spin badly on a busy machine); 0 = BLAS default")
    args = p.parse_args(argv)
    if args.threads > 0:
        # threadpoolctl comes with scikit-learn, which this example needs anyway
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=args.threads, user_api="blas"):
            return _train(args)
    return _train(args)


def _train(args) -> float:

    tensor.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_digits_split(args.seed)
    dev = args.device
    x_tr, y_tr = tensor.tensor(x_tr, device=dev), tensor.tensor(y_tr, device=dev)
    x_te, y_te = tensor.tensor(x_te, device=dev), tensor.tensor(y_te, device=dev)

    model = make_model(args.hidden, args.dropout).to(dev)
    opt = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x_tr) // args.batch_size)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = tensor.randperm(len(x_tr)).to(dev)
        total = 0.0
        for i in range(0, len(x_tr), args.batch_size):
            idx = perm[i:i + args.batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(x_tr):.4f}  "
                  f"test acc {evaluate(model, x_te, y_te):.4f}")
    elapsed = time.perf_counter() - t0
    acc = evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} ({int(round(acc * len(y_te)))}/{len(y_te)}) "
          f"in {elapsed:.2f} s of training ({args.epochs} epochs, device {dev})")
    return acc


if __name__ == "__main__":
    main()
