"""DataLoader throughput: zgrad's runtime.data vs torch.utils.data on the same dataset.

One epoch of a 20,000-item dataset whose __getitem__ does numpy work on a 28x28 image
(normalise, random 28x28 crop of the 2-pixel-padded image, random horizontal flip), batch 128,
with 0, 1 and 2 workers. Each measurement is one full epoch including worker start-up (both
loaders start their workers per epoch by default). Runs are interleaved (zgrad, torch, zgrad,
...) and repeated; the table shows medians and zgrad/torch ratios (> 1: zgrad is faster).

    python3 benchmarks/bench_dataloader.py [--repeats 5] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N_ITEMS, SIDE, PAD, BATCH = 20_000, 28, 2, 128
MEAN, STD = np.float32(0.1307), np.float32(0.3081)


class AugmentedImages:
    """A plain map-style dataset (no base class), so both loaders take the same object."""

    def __init__(self, n=N_ITEMS, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8)
        self.labels = rng.integers(0, 10, size=n)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = (self.images[i].astype(np.float32) * np.float32(1 / 255) - MEAN) / STD
        x = np.pad(x, PAD)
        r, c = np.random.randint(0, 2 * PAD + 1, size=2)
        x = x[r:r + SIDE, c:c + SIDE]
        if np.random.rand() < 0.5:
            x = x[:, ::-1]
        return np.ascontiguousarray(x)[None], int(self.labels[i])


def _epoch(make_loader) -> float:
    t0 = time.perf_counter()
    n = 0
    for x, y in make_loader():
        n += len(y)
    dt = time.perf_counter() - t0
    assert n == N_ITEMS, n
    return n / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--show-runs", action="store_true", help="print every run, not only medians")
    args = ap.parse_args()

    from runtime.data import DataLoader
    try:
        import torch
        import torch.utils.data as tud
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    ds = AugmentedImages()
    loaders = {"zgrad": lambda w: (lambda: DataLoader(ds, batch_size=BATCH, shuffle=True,
                                                      num_workers=w))}
    if torch is not None:
        loaders["torch"] = lambda w: (lambda: tud.DataLoader(ds, batch_size=BATCH, shuffle=True,
                                                             num_workers=w))
    results = {(name, w): [] for name in loaders for w in args.workers}
    for name in loaders:   # warm-up: imports, first fork, the shm manager
        _epoch(loaders[name](args.workers[-1]))
    for _ in range(args.repeats):
        for w in args.workers:
            for name, make in loaders.items():
                results[name, w].append(_epoch(make(w)))

    print(f"DataLoader, one epoch of {N_ITEMS} items (28x28 numpy augment), batch {BATCH}, "
          f"shuffle; median of {args.repeats}; {os.cpu_count()} CPUs")
    head = f"{'workers':>7} {'zgrad samples/s':>16}"
    if torch is not None:
        head += f" {'torch samples/s':>16} {'zgrad/torch':>12}"
    print(head)
    if args.show_runs:
        for (name, w), runs in results.items():
            print(f"  {name} {w} workers: {[round(r) for r in runs]}")
    for w in args.workers:
        z = statistics.median(results["zgrad", w])
        line = f"{w:>7} {z:>16,.0f}"
        if torch is not None:
            t = statistics.median(results["torch", w])
            line += f" {t:>16,.0f} {z / t:>12.2f}"
        print(line)
    if 0 in args.workers and 2 in args.workers:
        print(f"zgrad 2 workers / 0 workers: "
              f"{statistics.median(results['zgrad', 2]) / statistics.median(results['zgrad', 0]):.2f}")
        if torch is not None:
            print(f"torch 2 workers / 0 workers: "
                  f"{statistics.median(results['torch', 2]) / statistics.median(results['torch', 0]):.2f}")


if __name__ == "__main__":
    main()
