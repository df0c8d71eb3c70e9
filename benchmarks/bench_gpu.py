"""Training steps on a GPU, zgrad beside PyTorch on the same device in one run (issue 12's
timing table), and the bandwidth of a large elementwise op against a device-to-device copy.

Models (benchmarks/_step_harness.py; both libraries start from the same weights; Adam lr 1e-3):
  mlp          784-512-512-10, batch 128
  cnn          LeNet on 1x28x28, batch 64
  transformer  2 x TransformerEncoderLayer(d_model 256, 4 heads, ff 1024, dropout 0), seq 128,
               batch 32, a linear head to 256 classes at every position (dropout 0 so that
               the two libraries' losses can be compared and the graph replays no fixed mask)
Columns, each with its own copy of the model and optimizer:
  z eager  zgrad, Adam()                  t eager  PyTorch, Adam() (foreach on CUDA)
  z fused  zgrad, Adam(fused=True)        t amp    PyTorch, autocast float16 + GradScaler
  z amp    zgrad, autocast float16 + GradScaler
  z graph  zgrad, the whole step (forward, loss, backward, Adam(fused=True, capturable=True))
           captured once with tensor.cuda.graph and replayed, as torch's whole-network recipe
  t graph  PyTorch, the same with torch.cuda.graph (the reference)
An option a library refuses (fused=, capturable=) is dropped for that column and the note says
so; a cell that fails says "error: ..." and the log holds the traceback; the run goes on. Each
model and the bandwidth run in a process of their own, so that a sticky CUDA error in one leaves
the others their numbers; the parts share --budget-s (165 s: gpu_check.sh's bench section has
180 s) and each gets a deadline before its kill, so a slow part (kernel compiles on a fresh
machine) reports fewer repeats instead of nothing. bench.json is rewritten after every part.

Note [Two timing phases]
~~~~~~~~~~~~~~~~~~~~~~~~
A captured graph that faults (an illegal address in a replay) is a sticky CUDA error: every
later launch in that process fails, torch's included. So each model is timed in two phases:
first the eager columns (built, traced, timed), then the graph columns are built and every
column is timed again, interleaved. A fault in phase 2 leaves the eager columns their phase-1
numbers (the note says "later timing failed"); without one, medians span both phases.

Timing: wall clock over --steps steps between device synchronizes (launch overhead is the point),
medians (and best) over the repeats, the columns interleaved in a rotating order; float32, TF32
off in PyTorch. Correctness: every column's first 5 losses (a graph column: its 3 warm-up steps,
then replays) against PyTorch eager's (amp: against PyTorch amp), as "loss diff".

    python benchmarks/bench_gpu.py [--repeats 5] [--steps 10] [--models mlp,transformer,cnn]
                                   [--budget-s 165] [--json PATH] [--log PATH]
    python benchmarks/bench_gpu.py --device cpu --smoke   # the CPU-side logic, tiny sizes
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensor  # noqa: E402
from benchmarks._step_harness import (lenet, load_numpy_state, make_step, mlp,  # noqa: E402
                                      numpy_state, transformer)

COLUMNS = ("z eager", "z fused", "z amp", "z graph", "t eager", "t amp", "t graph")
RATIOS = (("z eager", "t eager"), ("z fused", "t eager"), ("z amp", "t amp"),
          ("z graph", "t eager"), ("z graph", "t graph"))
# issue 12's goals: (model, numerator, denominator, the ratio must be below)
GOALS = (("mlp", "z eager", "t eager", 1.5), ("transformer", "z eager", "t eager", 1.5),
         ("mlp", "z graph", "t eager", 1.0), ("transformer", "z graph", "t eager", 1.0))
LR = 1e-3
TRACE = 5          # losses recorded per column, before the timing (they warm it up too)
GRAPH_WARMUP = 3   # eager steps on a side stream before capture, as torch's recipe
RESERVE_S = 25.0   # kept for each later part when a part's time limit is set (run_parts)
MIN_PART_S = 10.0  # a part is not started with less than this left of the budget
DEADLINE_MARGIN_S = 12.0   # a part stops timing this long before it would be killed


def specs(smoke: bool) -> dict:
    """name -> (title, build(nn), x shape, classes, per-position targets)."""
    if smoke:
        return {"mlp": ("MLP 64-32-10, batch 8", lambda nn: mlp(nn, (64, 32, 10)), (8, 64), 10,
                        False),
                "cnn": ("LeNet 1x28x28, batch 4", lenet, (4, 1, 28, 28), 10, False),
                "transformer": ("transformer 2 layers, d 32, seq 8, batch 2",
                                lambda nn: transformer(nn, 32, 2, 64, 2, 16, dropout=0.0),
                                (2, 8, 32), 16, True)}
    return {"mlp": ("MLP 784-512-512-10, batch 128", lambda nn: mlp(nn), (128, 784), 10, False),
            "cnn": ("LeNet 1x28x28, batch 64", lenet, (64, 1, 28, 28), 10, False),
            "transformer": ("transformer 2 layers, d 256, 4 heads, ff 1024, seq 128, batch 32, "
                            "256 classes",
                            lambda nn: transformer(nn, 256, 4, 1024, 2, 256, dropout=0.0),
                            (32, 128, 256), 256, True)}


class Refused(Exception):
    """A library refused an option or lacks an API a column needs."""


def _join(a, b) -> str:
    return f"{a}; {b}" if a else b


def short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:110] if lines else ''}"


class Bench:
    """One run: the device, both libraries, the log, and the results for the JSON."""

    def __init__(self, args):
        self.args, self.device = args, args.device
        self.cuda = args.device == "cuda"
        self.logf = open(args.log, "w") if args.log else None
        self.results = {"meta": {"argv": sys.argv[1:], "device": args.device},
                        "models": {}, "bandwidth": {}, "goals": {}}
        try:
            import torch
            if self.cuda:
                # a torch without a usable CUDA would fail every sync(), zgrad's cells too
                if not torch.cuda.is_available():
                    raise RuntimeError(f"torch {torch.__version__} sees no CUDA device")
                torch.backends.cuda.matmul.allow_tf32 = False  # float32 against float32
                torch.backends.cudnn.allow_tf32 = False
            else:
                torch.set_num_threads(1)  # on the CPU this run checks logic, not speed
            self.torch = torch
            self.results["meta"]["torch"] = torch.__version__
        except Exception as e:  # the zgrad columns still run
            self.torch = None
            self.torch_error = e
            self.log(f"torch: {short(e)} (the torch columns will say so)", echo=True)
        meta = self.results["meta"]
        meta["cupy"] = getattr(tensor.backend.cupy, "__version__", None)
        if self.cuda:
            if not tensor.cuda.is_available():
                raise SystemExit("bench_gpu: --device cuda needs CuPy and a GPU "
                                 "(tensor.cuda.is_available() is False); use --device cpu "
                                 "--smoke to check the CPU-side logic.")
            cp = tensor.backend.cupy
            props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
            meta["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) \
                else str(props["name"])

    def log(self, text: str, echo: bool = False):
        if self.logf:
            self.logf.write(text + "\n")
            self.logf.flush()
        if echo:
            print(text, flush=True)

    def fail(self, where: str, e: BaseException) -> str:
        self.log(f"--- {where}: {short(e)}\n{traceback.format_exc()}")
        return f"error: {short(e)}"

    def sync(self):
        if self.cuda:
            tensor.cuda.synchronize()
            if self.torch is not None:
                self.torch.cuda.synchronize()

    def lib(self, col: str):
        if col.startswith("z"):
            return tensor
        if self.torch is None:
            raise Refused(f"torch did not import ({short(self.torch_error)})")
        return self.torch

    # --- one column -------------------------------------------------------------------------

    def adam(self, lib, params, **opts):
        try:
            return lib.optim.Adam(params, lr=LR, **opts)
        except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
            kw = ", ".join(f"{k}={v}" for k, v in opts.items())
            raise Refused(f"Adam({kw}) refused: {short(e)}") from e

    def column(self, col: str, spec, state, x, y):
        """(step, losses already recorded, note) for one column."""
        title, build, _, classes, per_position = spec
        lib = self.lib(col)
        model = load_numpy_state(lib, build(lib.nn), state).to(self.device)
        xt, yt = lib.tensor(x, device=self.device), lib.tensor(y, device=self.device)
        params = list(model.parameters())
        cls = classes if per_position else None
        if col.endswith("graph"):
            return self.graph_column(lib, model, params, xt, yt, cls)
        opt = self.adam(lib, params, fused=True) if col == "z fused" else self.adam(lib, params)
        amp = col.endswith("amp")
        step = make_step(lib, model, xt, yt, opt, cls,
                         amp_dtype=lib.float16 if amp else None,
                         scaler=lib.amp.GradScaler(self.device) if amp else None,
                         device_type=self.device)
        return step, [], ""

    def graph_column(self, lib, model, params, x, y, classes):
        """Capture the whole step once, as torch's docs do for whole-network capture: warm up on
        a side stream, zero_grad(set_to_none=True) so backward allocates the gradients inside
        the graph, capture, then each step copies the batch into the static inputs and
        replays."""
        cuda = lib.cuda
        missing = [n for n in ("CUDAGraph", "graph") if not hasattr(cuda, n)]
        if missing:
            raise Refused(f"{lib.__name__}.cuda has no {', '.join(missing)}")
        opt, note = None, ""
        for opts in ({"fused": True, "capturable": True}, {"capturable": True}, {}):
            try:
                opt = self.adam(lib, params, **opts)
                break
            except Refused as e:
                note += ("; " if note else "") + str(e)
        if opt is None:
            raise Refused(note)
        static_x, static_y = x.clone(), y.clone()
        step = make_step(lib, model, static_x, static_y, opt, classes)
        losses = []
        with self.side_stream(lib) as how:
            for _ in range(GRAPH_WARMUP):
                losses.append(float(step()))
        note += ("; " if note and how else "") + how
        g = cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with cuda.graph(g):
            static_loss = step()

        def replay():
            static_x.copy_(x)   # a new batch arriving, as in torch's recipe
            static_y.copy_(y)
            g.replay()
            return static_loss
        # the graph writes into memory allocated before the capture (parameters, optimizer
        # state): it is the caller's to keep alive, as in PyTorch, so the replay holds it (once
        # the column's model was dropped, replays wrote into freed, reused memory)
        replay.keep_alive = (model, params, opt)
        return replay, losses, note

    @contextlib.contextmanager
    def side_stream(self, lib):
        cuda = lib.cuda
        if not all(hasattr(cuda, n) for n in ("Stream", "stream", "current_stream")):
            yield "warm-up on the current stream (no cuda.Stream/stream/current_stream)"
            return
        s = cuda.Stream()
        s.wait_stream(cuda.current_stream())
        with cuda.stream(s):
            yield ""
        cuda.current_stream().wait_stream(s)

    # --- one model ----------------------------------------------------------------------------

    def model(self, name: str, spec):
        """Build, trace and time every column of one model; see Note [Two timing phases]."""
        title, build, x_shape, classes, per_position = spec
        rng = np.random.default_rng(0)
        x = rng.normal(size=x_shape).astype(np.float32)
        y = rng.integers(0, classes, x_shape[:2] if per_position else x_shape[:1])
        tensor.manual_seed(0)
        state = numpy_state(build(tensor.nn))
        cells, steps, losses, notes, times = {}, {}, {}, {}, {}
        for graphs in (False, True):
            for col in (c for c in COLUMNS if c.endswith("graph") == graphs):
                if graphs and not self.cuda:
                    cells[col] = {"na": "n/a (cpu)"}
                elif self.late():
                    cells[col] = {"error": "not run: this part's time ran out (--part-timeout-s)"}
                else:
                    try:
                        step, trace, notes[col] = self.column(col, spec, state, x, y)
                        while len(trace) < TRACE:
                            trace.append(float(step()))
                        steps[col], losses[col] = step, trace
                    except Refused as e:
                        self.log(f"--- {name} {col}: {e}")
                        cells[col] = {"error": str(e)}
                    except Exception as e:
                        cells[col] = {"error": self.fail(f"{name} {col} (building)", e)}
            if graphs and not any(c.endswith("graph") for c in steps):
                break   # nothing new to time: phase 1's numbers stand
            self.time_columns(name, steps, cells, times, notes)
        for k, v in times.items():
            cells[k] = {"ms": statistics.median(v) * 1e3, "best_ms": min(v) * 1e3,
                        "all_ms": [t * 1e3 for t in v]}
        for k in steps:
            cells.setdefault(k, {"error": "error: no timing finished (see the log)"})
            cells[k].update(losses=losses[k], note=notes.get(k, ""))
        for k in cells:
            ref = "t amp" if k == "z amp" else "t eager"
            if k in losses and ref in losses and k != ref:
                cells[k]["loss_diff"] = max(abs(p - q) / max(abs(q), 1e-12)
                                            for p, q in zip(losses[k], losses[ref]))
        ratios = {f"{p}/{q}": cells[p]["ms"] / cells[q]["ms"] for p, q in RATIOS
                  if "ms" in cells.get(p, {}) and "ms" in cells.get(q, {})}
        self.results["models"][name] = {"title": title, "cells": cells, "ratios": ratios}
        self.print_model(name, title, cells)
        del steps
        self.free()

    def time_columns(self, name, steps, cells, times, notes):
        """Time every built column `self.args.repeats` times, interleaved in a rotating order;
        past the deadline only a column not yet timed runs (once). Times add to `times`; a
        column that fails with times already taken keeps them (the failure goes into its
        note)."""
        a = self.args
        names = [k for k in steps if "error" not in cells.get(k, {})]
        if not names:
            return
        stopped = set()
        for r in range(a.repeats):
            todo = [k for k in names[r % len(names):] + names[:r % len(names)]
                    if k not in stopped]
            if self.late():
                cut = [k for k in todo if times.get(k)]
                for k in cut:
                    if "deadline" not in notes.get(k, ""):
                        notes[k] = _join(notes.get(k), "repeats cut by the deadline")
                todo = [k for k in todo if k not in cut]
            for k in todo:
                try:
                    self.sync()
                    t0 = time.perf_counter()
                    for _ in range(a.steps):
                        steps[k]()
                    self.sync()
                    times.setdefault(k, []).append((time.perf_counter() - t0) / a.steps)
                except Exception as e:
                    stopped.add(k)
                    err = self.fail(f"{name} {k} (timing)", e)
                    if times.get(k):
                        notes[k] = _join(notes.get(k), f"later timing failed: {err}")
                    else:
                        cells[k] = {"error": err}

    def late(self) -> bool:
        """True once this process's deadline (--deadline, set by run_parts) has passed."""
        return self.args.deadline is not None and time.time() > self.args.deadline

    def free(self):
        gc.collect()
        if self.cuda:
            for lib in (tensor, self.torch):
                with contextlib.suppress(Exception):
                    lib.cuda.empty_cache()

    def print_model(self, name, title, cells):
        a = self.args
        print(f"\n{name}: {title}, Adam, float32, {self.device}; ms/step, median (best) over n "
              f"repeats of {a.steps} steps")
        print(f"  {'column':8s} {'ms/step':>9s} {'best':>9s} {'n':>3s} {'vs t eager':>10s} "
              f"{'loss diff':>9s}  note")
        base = cells.get("t eager", {}).get("ms")
        for col in COLUMNS:
            c = cells[col]
            if "ms" not in c:
                print(f"  {col:8s} {c.get('na') or c['error']}")
                continue
            vs = f"{c['ms'] / base:10.2f}" if base else f"{'-':>10s}"
            diff = f"{c['loss_diff']:9.1e}" if "loss_diff" in c else f"{'-':>9s}"
            print(f"  {col:8s} {c['ms']:9.3f} {c['best_ms']:9.3f} {len(c['all_ms']):3d} {vs} "
                  f"{diff}  {c['note']}")
            self.log(f"{name} {col} losses: " + " ".join(f"{v:.6f}" for v in c["losses"]))

    # --- bandwidth ----------------------------------------------------------------------------

    def bandwidth(self):
        """GB/s (bytes read + written once: 2 x the array's size) of a device-to-device copy and
        of elementwise ops on a --bandwidth-mib float32 array, zgrad and torch."""
        n = self.args.bandwidth_mib * 2 ** 20 // 4
        nbytes = 2 * n * 4
        rows = {}
        zx, zy = tensor.ones(n, device=self.device), tensor.empty(n, device=self.device)
        xa, ya = zx.array, zy.array
        if self.cuda:
            rows["memcpy d2d"] = lambda: ya.data.copy_from_device_async(xa.data, xa.nbytes)
        else:
            rows["memcpy d2d"] = lambda: np.copyto(ya, xa)
        rows["z copy_"] = lambda: zy.copy_(zx)
        rows["z x*a"] = lambda: zx * 2.0
        rows["z a*x+b"] = lambda: zx * 2.0 + 1.0
        if self.torch is not None:
            tx = self.torch.ones(n, device=self.device)
            ty = self.torch.empty(n, device=self.device)
            rows["t copy_"] = lambda: ty.copy_(tx)
            rows["t x*a"] = lambda: tx * 2.0
            rows["t a*x+b"] = lambda: tx * 2.0 + 1.0
        times = {k: [] for k in rows}
        errors = {}
        names = list(rows)
        with tensor.no_grad():
            for r in range(self.args.repeats + 1):  # the first round warms up
                if r > 1 and self.late():
                    break
                for k in names[r % len(names):] + names[:r % len(names)]:
                    if k in errors:
                        continue
                    try:
                        self.sync()
                        t0 = time.perf_counter()
                        for _ in range(10):
                            rows[k]()
                        self.sync()
                        if r:
                            times[k].append((time.perf_counter() - t0) / 10)
                    except Exception as e:
                        errors[k] = self.fail(f"bandwidth {k}", e)
        out = {k: {"error": v} for k, v in errors.items()}
        for k, v in times.items():
            if k not in errors and v:
                t = statistics.median(v)
                out[k] = {"ms": t * 1e3, "GBps": nbytes / t / 1e9}
        ref = out.get("memcpy d2d", {}).get("GBps")
        print(f"\nbandwidth: float32, {self.args.bandwidth_mib} MiB, {self.device}; GB/s counts "
              f"the array read once and written once; median over up to {self.args.repeats} "
              f"repeats of 10")
        print(f"  {'op':11s} {'ms':>8s} {'GB/s':>8s} {'vs memcpy':>9s}")
        for k in rows:
            c = out.setdefault(k, {"error": "error: not timed (the deadline came first)"})
            if "error" in c:
                print(f"  {k:11s} {c['error']}")
                continue
            c["vs_memcpy"] = c["GBps"] / ref if ref else None
            vs = f"{c['vs_memcpy']:9.2f}" if ref else f"{'-':>9s}"
            print(f"  {k:11s} {c['ms']:8.3f} {c['GBps']:8.1f} {vs}")
        self.results["bandwidth"] = out



def report_goals(results: dict) -> None:
    print("\ngoals (issue 12, on this device):")
    for model, p, q, limit in GOALS:
        r = results["models"].get(model, {}).get("ratios", {}).get(f"{p}/{q}")
        key = f"{model}: {p} / {q} < {limit}"
        results["goals"][key] = None if r is None else r < limit
        verdict = "not measured" if r is None else ("met" if r < limit else "NOT met")
        print(f"  {key:40s} {'-' if r is None else f'{r:.2f}':>6s}  {verdict}")


def part_limits(budget_end: float, now: float, parts_left: int, cap: float) -> tuple:
    """(timeout, deadline) of the next part: what is left of the budget less RESERVE_S for each
    part after it, at most `cap`, at least the smaller of RESERVE_S and what is left; the part
    stops timing at its deadline, DEADLINE_MARGIN_S before its kill, to print and write its
    numbers. (0, None) when nothing useful is left."""
    left = budget_end - now
    if left < MIN_PART_S:
        return 0.0, None
    limit = max(min(cap, left - RESERVE_S * (parts_left - 1)), min(left, RESERVE_S))
    return limit, now + max(limit - DEADLINE_MARGIN_S, limit / 2)


def run_parts(args, parts: list) -> dict:
    """Each model and the bandwidth in its own process: a CUDA error is sticky for the process
    that meets it (an illegal address in a replayed graph ends every later launch), so one
    broken part must not take the others' numbers with it. Their results are merged here and
    written to --json after each part, so a run stopped from outside keeps what finished."""
    results = {"meta": {}, "models": {}, "bandwidth": {}, "goals": {}}
    logf = open(args.log, "w") if args.log else None
    budget_end = time.time() + args.budget_s
    for i, part in enumerate(parts):
        limit, deadline = part_limits(budget_end, time.time(), len(parts) - i, args.part_timeout_s)
        rc, sub = None, {}
        if not limit:
            rc = f"did not start: the bench's budget (--budget-s {args.budget_s:.0f}) was spent"
        else:
            with tempfile.TemporaryDirectory() as d:
                js, lg = os.path.join(d, "part.json"), os.path.join(d, "part.log")
                cmd = [sys.executable, os.path.abspath(__file__), "--one-process", "--no-goals",
                       "--device", args.device, "--repeats", str(args.repeats), "--steps",
                       str(args.steps), "--json", js, "--log", lg, "--deadline",
                       str(deadline)] + (
                    ["--models", "", "--bandwidth-mib", str(args.bandwidth_mib)]
                    if part == "bandwidth" else ["--models", part, "--bandwidth-mib", "0"])
                try:
                    rc = subprocess.run(cmd + (["--smoke"] if args.smoke else []),
                                        timeout=limit).returncode
                except subprocess.TimeoutExpired:
                    rc = f"was killed after {limit:.0f}s"
                sub = json.load(open(js)) if os.path.exists(js) else {}
                if logf and os.path.exists(lg):
                    logf.write(open(lg).read())
                    logf.flush()
        results["meta"] = results["meta"] or sub.get("meta", {})
        results["models"].update(sub.get("models", {}))
        if part == "bandwidth":
            results["bandwidth"] = sub.get("bandwidth", {})
        if rc != 0:
            err = f"error: its process {rc if isinstance(rc, str) else f'exited with {rc}'}"
            where = results["bandwidth"] if part == "bandwidth" else \
                results["models"].setdefault(part, {})
            where["error"] = where.get("error", err)
            print(f"\n{part}: {err}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 x 2 steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", default="mlp,transformer,cnn",
                    help="in this order (the goals' models first: the budget may cut the last)")
    ap.add_argument("--bandwidth-mib", type=int, default=None, help="256 (--smoke: 4); 0: none")
    ap.add_argument("--json", help="write every number here")
    ap.add_argument("--log", help="tracebacks and loss traces here")
    ap.add_argument("--one-process", action="store_true",
                    help="every part in this process (otherwise each model and the bandwidth "
                         "run in a process of their own: see run_parts)")
    ap.add_argument("--budget-s", type=float, default=165.0,
                    help="wall-clock budget of all the parts together (see part_limits)")
    ap.add_argument("--part-timeout-s", type=float, default=90.0, help="the most one part gets")
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-goals", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.repeats, args.steps = 2, 2
    if args.bandwidth_mib is None:
        args.bandwidth_mib = 4 if args.smoke else 256
    all_specs = specs(args.smoke)
    names = [n for n in args.models.split(",") if n]
    for name in names:
        if name not in all_specs:
            raise SystemExit(f"bench_gpu: --models: unknown {name!r}; choose from "
                             f"{', '.join(all_specs)}")
    parts = names + (["bandwidth"] if args.bandwidth_mib > 0 else [])
    if not args.one_process and len(parts) > 1:
        results = run_parts(args, parts)
    else:
        results = run_here(args, all_specs, names)
    try:
        if not args.no_goals:
            report_goals(results)
    finally:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)


def run_here(args, all_specs, names) -> dict:
    b = Bench(args)
    try:
        for name in names:
            try:
                b.model(name, all_specs[name])
            except Exception as e:
                b.results["models"][name] = {"error": b.fail(name, e)}
                print(f"\n{name}: {b.results['models'][name]['error']}")
        if args.bandwidth_mib > 0:
            try:
                b.bandwidth()
            except Exception as e:
                b.results["bandwidth"] = {"error": b.fail("bandwidth", e)}
                print(f"\nbandwidth: {b.results['bandwidth']['error']}")
    finally:
        if args.json and args.no_goals:  # a part: its results, even when the run breaks
            with open(args.json, "w") as f:
                json.dump(b.results, f, indent=1)
    return b.results


if __name__ == "__main__":
    main()
