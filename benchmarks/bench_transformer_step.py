"""One training step (forward, backward, SGD) of a 2-layer transformer encoder, zgrad beside
PyTorch CPU eager.

TransformerEncoder(2 x TransformerEncoderLayer(d_model 128, 4 heads, feed-forward 512,
dropout 0.1, batch_first)), sequence 64, batch 16, a linear head to 64 classes at every
position and cross-entropy over all positions, float32, training mode (dropout on). Both
start from the same weights (PyTorch's state_dict loaded into zgrad); their dropout masks
differ, so the first-step losses agree only roughly. Run interleaved with the same thread
count; medians and the ratio zgrad / torch.

    python benchmarks/bench_transformer_step.py [--threads N] [--repeats R] [--steps S] [--cpu-time]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
from benchmarks._step_harness import (load_numpy_state, numpy_state, parse_args, run,  # noqa: E402
                                      sequence_steps, transformer)

D_MODEL, HEADS, FF, LAYERS, SEQ, BATCH, CLASSES, LR = 128, 4, 512, 2, 64, 16, 64, 0.01



def make_models(torch):
    """The PyTorch model and a zgrad copy of it (same state_dict keys, same weights)."""
    torch.manual_seed(0)
    tm, zm = (transformer(nn, D_MODEL, HEADS, FF, LAYERS, CLASSES, dropout=0.1)
              for nn in (torch.nn, tensor.nn))
    return load_numpy_state(tensor, zm, numpy_state(tm)), tm


def main():
    args = parse_args(__doc__, steps=5)
    import torch
    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH, SEQ, D_MODEL)).astype(np.float32)
    y = rng.integers(0, CLASSES, (BATCH, SEQ))
    zm, tm = make_models(torch)
    # dropout draws differ between the libraries, so the first losses agree only roughly
    run(f"TransformerEncoder {LAYERS} layers, d_model {D_MODEL}, {HEADS} heads, ff {FF}, "
        f"seq {SEQ}, batch {BATCH}, head {CLASSES}",
        sequence_steps(zm, tm, x, y, CLASSES, LR), args)


if __name__ == "__main__":
    main()
