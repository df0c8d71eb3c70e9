"""The shared part of the training-step benchmarks (bench_{cnn,lstm,transformer}_step.py on
the CPU, bench_gpu.py on a GPU): the models, the training step, arguments, thread limits,
interleaved timing and the report.

The models are written once against a library's ``nn`` (``tensor.nn`` or ``torch.nn``), whose
module trees match key for key, so one state_dict of numpy arrays starts both from the same
weights. Each CPU benchmark builds a zero-argument ``step()`` per library and hands them to
``run``, which warms up, times them interleaved (the order rotates and a pause lets spinning
worker threads, OpenMP in torch and OpenBLAS, go to sleep first, so drift hits both alike) and
prints medians and best-ofs as ratios to torch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def parse_args(doc: str, steps: int = 5):
    """The common flags; sets the BLAS and torch thread counts before anything runs."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time instead of wall time: leaves out waiting for a "
                         "core on a loaded machine (with threads > 1 it sums the threads)")
    ap.add_argument("--profile", action="store_true", help="cProfile 20 zgrad steps after")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    return args


def run(title: str, steps: dict, args) -> None:
    """Time `steps` ({"zgrad": step, "torch": step}; each returns its loss) and report."""
    clock = time.process_time if args.cpu_time else time.perf_counter

    def time_steps(step, n):
        t0 = clock()
        for _ in range(n):
            step()
        return (clock() - t0) / n

    losses = {k: float(f().detach()) for k, f in steps.items()}
    for _ in range(2):  # warm up
        for f in steps.values():
            f()
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(0.2)
            times[k].append(time_steps(steps[k], args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # less sensitive to a busy machine
    print(f"{title}, float32, {args.threads} threads, median (and best) of {args.repeats} x "
          f"{args.steps} steps" + (", cpu time" if args.cpu_time else ""))
    print("first-step loss: " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    print(f"{'impl':8s} {'ms/step':>9s} {'vs torch':>9s} {'best ms':>9s} {'vs torch':>9s}")
    for k, v in med.items():
        print(f"{k:8s} {v * 1e3:9.3f} {v / med['torch']:9.3f} {best[k] * 1e3:9.3f} "
              f"{best[k] / best['torch']:9.3f}")
    if args.profile:
        import cProfile
        import pstats
        pr = cProfile.Profile()
        pr.enable()
        time_steps(steps["zgrad"], 20)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(15)


def mlp(nn, sizes=(784, 512, 512, 10)):
    """Linear layers with ReLU between them: sizes[0] -> ... -> sizes[-1]."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(n_in, n_out)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def lenet(nn):
    """LeNet on 1x28x28: conv 6@5x5 -> relu -> maxpool 2 -> conv 16@5x5 -> relu -> maxpool 2
    -> fc 120 -> relu -> fc 84 -> relu -> fc 10."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def transformer(nn, d_model: int, heads: int, ff: int, layers: int, classes: int,
                dropout: float = 0.1):
    """TransformerEncoder(layers x TransformerEncoderLayer(d_model, heads, ff, batch_first))
    and a linear head to `classes` at every position: (B, S, d_model) -> (B, S, classes)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=dropout,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, classes)

        def forward(self, x):
            return self.head(self.encoder(x))
    return Net()


def numpy_state(model) -> dict:
    """A model's state_dict as numpy arrays (zgrad or torch, any device)."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        out[k] = (v.cpu() if hasattr(v, "cpu") else v).numpy().copy()
    return out


def load_numpy_state(lib, model, state: dict):
    """Load numpy arrays into `model` (a tensor.nn or torch.nn module); returns the model."""
    model.load_state_dict({k: lib.tensor(v) for k, v in state.items()})
    return model


def make_step(lib, model, x, y, opt, classes=None, amp_dtype=None, scaler=None,
              device_type="cpu"):
    """The training step as a user writes it, for either library: forward, cross-entropy
    (over every position's logits when `classes` is given: sequence models), zero_grad,
    backward, optimizer step; returns the loss. With `amp_dtype` the forward runs under
    lib.autocast(device_type, amp_dtype) and `scaler` (a GradScaler) scales the loss, unscales
    the gradients and skips steps with inf/NaN in them, as PyTorch's AMP recipe."""
    F = lib.nn.functional

    def loss_of():
        out = model(x)
        if classes is not None:
            return F.cross_entropy(out.reshape(-1, classes), y.reshape(-1))
        return F.cross_entropy(out, y)

    def step():
        if amp_dtype is None:
            loss = loss_of()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        with lib.autocast(device_type, dtype=amp_dtype):
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()
    return step


def sequence_steps(zmodel, tmodel, x, y, classes: int, lr: float) -> dict:
    """{"zgrad": step, "torch": step}: SGD on cross-entropy over every position's logits
    (the LSTM and transformer benchmarks); x, y are numpy arrays."""
    import tensor
    import torch

    return {"zgrad": make_step(tensor, zmodel, tensor.tensor(x), tensor.tensor(y),
                               tensor.optim.SGD(zmodel.parameters(), lr=lr), classes),
            "torch": make_step(torch, tmodel, torch.tensor(x), torch.tensor(y),
                               torch.optim.SGD(tmodel.parameters(), lr=lr), classes)}
