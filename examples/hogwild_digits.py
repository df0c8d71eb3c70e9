"""Hogwild: N processes train ONE model in shared memory, without locks (Recht et al., 2011).

The model's parameters live in shared memory (``model.share_memory()``); each worker gets the
model by handle (no copy), runs its own SGD on its own shuffle of the digits data, and writes
its updates straight into the shared storage. Same recipe as PyTorch's mnist_hogwild example,
with torch -> tensor and torch.multiprocessing -> shm.multiprocessing.

    python examples/hogwild_digits.py [--procs 4] [--epochs 8] [--start-method spawn|fork]
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shm  # noqa: E402
import shm.multiprocessing as mp  # noqa: E402
import tensor  # noqa: E402
import tensor.nn as nn  # noqa: E402
import tensor.nn.functional as F  # noqa: E402
import tensor.optim as optim  # noqa: E402


def load_data(seed: int = 0):
    """sklearn's 8x8 digits, scaled to [0, 1], split 80/20; arrays in shared memory."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    # shared: every worker maps the same bytes instead of getting a pickled copy
    return (shm.share(x[idx[:cut]]), shm.share(y[idx[:cut]]),
            shm.share(x[idx[cut:]]), shm.share(y[idx[cut:]]))


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with tensor.no_grad():
        pred = model(tensor.from_numpy(x)).numpy().argmax(axis=1)
    return float((pred == y).mean())


def train(rank: int, model, x, y, x_test, y_test, epochs: int, lr: float, batch_size: int,
          progress):
    """One Hogwild worker: plain SGD on the shared parameters."""
    tensor.manual_seed(1000 + rank)
    rng = np.random.default_rng(rank)
    assert all(p.is_shared() for p in model.parameters()), "the model must arrive shared"
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            b = order[start:start + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(tensor.from_numpy(x[b])), tensor.from_numpy(y[b]))
            loss.backward()
            opt.step()  # in place on the shared storage: every process sees it
        if rank == 0:
            progress.put((epoch, float(loss.item()), accuracy(model, x_test, y_test)))
    if rank == 0:
        progress.put(None)


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--start-method", default="spawn", choices=["spawn", "fork", "forkserver"])
    args = ap.parse_args(argv)

    tensor.manual_seed(0)
    x, y, x_test, y_test = load_data()
    model = make_model()
    model.share_memory()
    acc0 = accuracy(model, x_test, y_test)
    print(f"hogwild: {args.procs} processes ({args.start_method}) share one "
          f"{sum(p.numel() for p in model.parameters())}-parameter MLP; "
          f"test accuracy before training {acc0:.3f}")
    t0 = time.perf_counter()
    ctx = mp.get_context(args.start_method)
    progress = ctx.Queue()
    procs = mp.spawn(train, args=(model, x, y, x_test, y_test, args.epochs, args.lr,
                                  args.batch_size, progress),
                     nprocs=args.procs, join=False, start_method=args.start_method)
    deadline = time.monotonic() + 600
    while True:  # rank 0's view of the shared model after each of its epochs
        try:
            item = progress.get(timeout=0.5)
        except queue.Empty:
            procs.join(timeout=0)  # raises with the worker's traceback if one failed
            if time.monotonic() > deadline:
                raise TimeoutError("hogwild: no progress from rank 0 in 600s") from None
            continue
        if item is None:
            break
        epoch, loss, acc = item
        print(f"  epoch {epoch + 1}: rank 0 loss {loss:.3f}, test accuracy {acc:.3f}")
    while not procs.join(timeout=max(0.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            raise TimeoutError("hogwild: workers still running after 600s")
    acc1 = accuracy(model, x_test, y_test)
    print(f"test accuracy after training: {acc1:.3f} (was {acc0:.3f}); "
          f"{time.perf_counter() - t0:.1f}s")
    return acc1


if __name__ == "__main__":
    main()
