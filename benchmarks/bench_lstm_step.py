"""One training step (forward, backward, SGD) of a 2-layer LSTM, zgrad beside PyTorch CPU eager.

LSTM(input 32, hidden 128, 2 layers), sequence 35, batch 32, a linear head to 64 classes at
every step and cross-entropy over all steps, float32. Both start from the same weights (PyTorch's
state_dict loaded into zgrad), so the first-step losses agree. Run interleaved with the same
thread count; medians and the ratio zgrad / torch.

    python benchmarks/bench_lstm_step.py [--threads N] [--repeats R] [--steps S] [--cpu-time]
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
from benchmarks._step_harness import parse_args, run, sequence_steps  # noqa: E402

INPUT, HIDDEN, LAYERS, SEQ, BATCH, CLASSES, LR = 32, 128, 2, 35, 32, 64, 0.1



def make_models(torch):
    """The PyTorch model and a zgrad copy of it (same state_dict keys, same weights)."""
    torch.manual_seed(0)

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(INPUT, HIDDEN, LAYERS)
            self.head = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    nn = tensor.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(INPUT, HIDDEN, LAYERS)
            self.head = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.head(self.lstm(x)[0])

    tm, zm = TorchNet(), Net()
    zm.load_state_dict({k: tensor.tensor(v.numpy()) for k, v in tm.state_dict().items()})
    return zm, tm


def main():
    args = parse_args(__doc__, steps=5)
    import torch
    rng = np.random.default_rng(1)
    x = rng.normal(size=(SEQ, BATCH, INPUT)).astype(np.float32)
    y = rng.integers(0, CLASSES, (SEQ, BATCH))
    zm, tm = make_models(torch)
    run(f"LSTM {LAYERS}x{HIDDEN} (input {INPUT}), seq {SEQ}, batch {BATCH}, head {CLASSES}",
        sequence_steps(zm, tm, x, y, CLASSES, LR), args)


if __name__ == "__main__":
    main()
