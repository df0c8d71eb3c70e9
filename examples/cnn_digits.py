"""Train a LeNet-style CNN on scikit-learn's digits (8x8 images, 10 classes) with zgrad.

    python examples/cnn_digits.py              # >= 95% test accuracy in a few seconds on a CPU
    python examples/cnn_digits.py --batch-norm --epochs 10

The model is runtime/models/cnn.py's CNN (the one configs/digits_cnn.yaml trains under the
launcher); the split (75% train / 25% test, stratified) and the weights are seeded, so a run
repeats exactly. The loop is the PyTorch one with `torch` replaced by `tensor`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
import tensor.nn.functional as F  # noqa: E402
from runtime.models.cnn import CNN  # noqa: E402
from tensor import optim  # noqa: E402


def load_digits_images(seed: int):
    """(N, 1, 8, 8) float32 images in [0, 1] and int64 labels, split 75/25 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed,
                                              stratify=y)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


def evaluate(model, x, y) -> float:
    model.eval()
    with tensor.no_grad():
        pred = model(x).argmax(1)
    model.train()
    return float((pred == y).float().mean().item())


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS threads (default 1: small matrices, and a busy machine); "
                        "0 = BLAS default")
    args = p.parse_args(argv)
    if args.threads > 0:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=args.threads, user_api="blas"):
            return _train(args)
    return _train(args)


def _train(args) -> float:
    tensor.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = load_digits_images(args.seed)
    dev = args.device
    x_tr, y_tr = tensor.tensor(x_tr, device=dev), tensor.tensor(y_tr, device=dev)
    x_te, y_te = tensor.tensor(x_te, device=dev), tensor.tensor(y_te, device=dev)

    model = CNN(image_size=8, channels=(16, 32), dropout=args.dropout,
                batch_norm=args.batch_norm).to(dev)
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
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(x_tr):.4f}  "
                  f"test acc {evaluate(model, x_te, y_te):.4f}")
    elapsed = time.perf_counter() - t0
    acc = evaluate(model, x_te, y_te)
    print(f"test accuracy {acc:.4f} ({int(round(acc * len(y_te)))}/{len(y_te)}) "
          f"in {elapsed:.2f} s of training ({args.epochs} epochs, device {dev})")
    return acc


if __name__ == "__main__":
    main()
