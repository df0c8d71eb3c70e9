"""One training step (forward, backward, SGD) of an MLP 784-512-512-10 at batch 128, float32.

Three implementations in one run, interleaved, with the same thread count:
  zgrad     nn.Sequential(Linear, ReLU, Linear, ReLU, Linear), F.cross_entropy, optim.SGD
  numpy     the same network with hand-written backprop (the floor for this design; with
            --device cuda the same code on CuPy)
  torch     PyTorch CPU eager (when installed)
plus the per-op overhead: a tiny elementwise op with grad (forward + backward), zgrad vs torch.

    python benchmarks/bench_mlp_step.py [--threads N] [--repeats R] [--cpu-time]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402

SIZES = (784, 512, 512, 10)
BATCH = 128
LR = 0.01


# wall time by default; --cpu-time switches to process CPU time (see main)
_clock = time.perf_counter


def init_weights(seed=0):
    rng = np.random.default_rng(seed)
    ws, bs = [], []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        bound = 1 / np.sqrt(n_in)
        ws.append(rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32))
        bs.append(rng.uniform(-bound, bound, (n_out,)).astype(np.float32))
    return ws, bs


def make_zgrad(ws, bs, device="cpu"):
    """The step as a user writes it: nn.Sequential, F.cross_entropy, optim.SGD."""
    nn, F = tensor.nn, tensor.nn.functional
    layers = []
    for i, (w, b) in enumerate(zip(ws, bs)):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with tensor.no_grad():
            lin.weight.copy_(tensor.tensor(w))
            lin.bias.copy_(tensor.tensor(b))
        layers += [lin] + ([nn.ReLU()] if i < len(ws) - 1 else [])
    model = nn.Sequential(*layers).to(device)
    opt = tensor.optim.SGD(model.parameters(), lr=LR)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def make_numpy(ws, bs, xp=np):
    ws = [xp.asarray(w).copy() for w in ws]
    bs = [xp.asarray(b).copy() for b in bs]

    def step(x, y):
        np = xp  # the same hand-written step runs on CuPy for --device cuda
        acts = [x]
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = h @ w.T + b
            if i < len(ws) - 1:
                h = np.maximum(h, 0)
            acts.append(h)
        z = h - h.max(1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(1, keepdims=True)
        n = len(y)
        loss = -np.log(p[np.arange(n), y]).mean()
        g = p
        g[np.arange(n), y] -= 1
        g /= n
        for i in range(len(ws) - 1, -1, -1):
            a = acts[i]
            gw = g.T @ a
            gb = g.sum(0)
            if i > 0:
                g = (g @ ws[i]) * (acts[i] > 0)
            ws[i] -= LR * gw
            bs[i] -= LR * gb
        return loss
    return step


def make_torch(ws, bs, torch, device="cpu"):
    params = []
    for w, b in zip(ws, bs):
        params += [torch.tensor(w, device=device, requires_grad=True),
                   torch.tensor(b, device=device, requires_grad=True)]
    F = torch.nn.functional

    def step(x, y):
        h = x
        for i in range(0, len(params), 2):
            h = F.linear(h, params[i], params[i + 1])
            if i + 2 < len(params):
                h = h.relu()
        loss = F.cross_entropy(h, y)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(LR * p.grad)
        return loss
    return step


_sync = lambda: None  # noqa: E731  replaced by a device synchronize for --device cuda


def time_steps(step, args, n):
    _sync()
    t0 = _clock()
    for _ in range(n):
        step(*args)
    _sync()
    return (_clock() - t0) / n


def per_op_overhead(n, torch=None):
    """Seconds per tiny op with grad, forward + backward: y = (x * 2).sum(); backward."""
    x = tensor.ones(4, requires_grad=True)

    def z():
        y = x * 2.0
        y.backward(tensor.ones(4))
    out = {"zgrad": z}
    if torch is not None:
        xt = torch.ones(4, requires_grad=True)
        gt = torch.ones(4)

        def t():
            y = xt * 2.0
            y.backward(gt)
        out["torch"] = t
    return {k: time_steps(f, (), n) for k, f in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cpu-time", action="store_true",
                    help="process CPU time instead of wall time: leaves out waiting for a "
                         "core on a loaded machine (with threads > 1 it sums the threads)")
    args = ap.parse_args()
    if args.cpu_time:
        global _clock
        _clock = time.process_time
    global _sync

    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None

    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    ws, bs = init_weights()
    dev = args.device
    xp = np
    if dev == "cuda":
        xp = tensor.backend.xp_for(tensor.device("cuda"))
        _sync = lambda: xp.cuda.Device().synchronize()  # noqa: E731
        if torch is not None and not torch.cuda.is_available():
            torch = None
    impls = {"zgrad": (make_zgrad(ws, bs, dev),
                       (tensor.tensor(x, device=dev), tensor.tensor(y, device=dev))),
             "numpy": (make_numpy(ws, bs, xp), (xp.asarray(x), xp.asarray(y)))}
    if torch is not None:
        impls["torch"] = (make_torch(ws, bs, torch, dev),
                          (torch.tensor(x, device=dev), torch.tensor(y, device=dev)))

    # same first loss from the same weights: the three compute the same thing
    losses = {k: float(f(*a)) for k, (f, a) in impls.items()}
    for _ in range(2):  # warm up
        for f, a in impls.values():
            f(*a)
    times = {k: [] for k in impls}
    names = list(impls)
    for r in range(args.repeats):
        # interleaved so drift hits all alike; the order rotates and a pause lets the previous
        # library's spinning worker threads (OpenMP in torch, OpenBLAS) go to sleep first
        for k in names[r % len(names):] + names[:r % len(names)]:
            f, a = impls[k]
            time.sleep(0.25)
            f(*a)
            times[k].append(time_steps(f, a, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # less sensitive to a busy machine

    print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, float32, {dev}, {args.threads} threads, "
          f"median (and best) of {args.repeats} x {args.steps} steps"
          + (", cpu time" if args.cpu_time else ""))
    print(f"first-step loss: " + ", ".join(f"{k} {v:.5f}" for k, v in losses.items()))
    print(f"{'impl':8s} {'ms/step':>9s} {'vs numpy':>9s} {'vs torch':>9s} {'best ms':>9s} "
          f"{'vs torch':>9s}")
    for k, v in med.items():
        vt = f"{v / med['torch']:9.3f}" if "torch" in med else f"{'-':>9s}"
        bt = f"{best[k] / best['torch']:9.3f}" if "torch" in best else f"{'-':>9s}"
        print(f"{k:8s} {v * 1e3:9.3f} {v / med['numpy']:9.3f} {vt} {best[k] * 1e3:9.3f} {bt}")

    ov = {k: [] for k in (("zgrad", "torch") if torch else ("zgrad",))}
    for _ in range(args.repeats):
        time.sleep(0.1)
        r = per_op_overhead(2000, torch)
        for k in ov:
            ov[k].append(r[k])
    om = {k: statistics.median(v) for k, v in ov.items()}
    print("\nper-op overhead (x * 2.0 on 4 floats with grad, forward + backward):")
    for k, v in om.items():
        extra = f"  ({v / om['torch']:.2f}x torch)" if "torch" in om and k != "torch" else ""
        print(f"  {k:6s} {v * 1e6:8.2f} us{extra}")


if __name__ == "__main__":
    main()
