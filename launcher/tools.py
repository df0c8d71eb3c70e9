"""``zgrad env``, ``zgrad plot RUN_DIR`` and ``zgrad profile CONFIG``."""
from __future__ import annotations

import json
import os
import platform
import sys

_GIB = 1 << 30


class ToolError(Exception):
    """A tool cannot run (missing optional package, empty run folder): one paragraph, exit 2."""


def _version(dist: str) -> str:
    """An installed distribution's version, read from its metadata (importing tensorboardX or
    scikit-learn would take seconds: tensorboardX imports torch when it is there)."""
    from importlib import metadata
    names = [dist] if dist != "cupy" else \
        [d.metadata["Name"] for d in metadata.distributions()
         if (d.metadata["Name"] or "").lower().startswith("cupy")]
    for name in names:
        try:
            return metadata.version(name) + ("" if name == dist else f" ({name})")
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _zgrad_version() -> str:
    import launcher
    from importlib import metadata
    try:
        v = metadata.version("zgrad")
    except metadata.PackageNotFoundError:
        v = "not installed (run from a checkout)"
    return f"{v} at {os.path.dirname(os.path.dirname(os.path.abspath(launcher.__file__)))}"


def _gpus() -> tuple:
    """(lines describing each GPU, warnings), through CuPy when it is installed."""
    from tensor import backend
    cupy = backend.cupy
    if cupy is None:
        return ["GPUs: CuPy not installed (pip install 'zgrad[gpu]' on an NVIDIA machine)"], []
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return [f"GPUs: none usable ({type(e).__name__}: {e})"], \
            ["CuPy is installed but sees no GPU: check the driver and CUDA_VISIBLE_DEVICES"]
    lines = [f"GPUs: {n}"]
    for i in range(n):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        with cupy.cuda.Device(i):
            free, total = cupy.cuda.runtime.memGetInfo()
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"  cuda:{i} {name}, {total / _GIB:.1f} GiB ({free / _GIB:.1f} GiB free)")
    try:
        from cupy.cuda import nccl
        v = nccl.get_version()
        lines.append(f"NCCL: {v // 10000}.{v // 100 % 100}.{v % 100} (backend nccl available)")
    except Exception as e:  # noqa: BLE001 - any load failure means: no nccl backend
        lines.append(f"NCCL: not available ({type(e).__name__}); backend zmq stages GPU "
                     "arrays through host memory")
    return lines, []


def env_report() -> tuple:
    """(lines, warnings) of `zgrad env`."""
    from shm import segment
    lines = [f"python: {platform.python_version()} ({sys.executable})",
             f"platform: {platform.platform()}",
             f"zgrad: {_zgrad_version()}"]
    for dist in ("numpy", "pyzmq", "cupy", "omegaconf", "PyYAML", "scikit-learn", "matplotlib",
                 "tensorboardX", "mlxtend"):
        lines.append(f"{dist}: {_version(dist)}")
        if dist == "pyzmq":
            try:
                import zmq
                lines[-1] += f" (libzmq {zmq.zmq_version()})"
            except ImportError:
                pass
    warnings = []
    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    lines.append(f"CPUs: {cpus} ({usable} usable by this process)")
    if usable < 2:
        warnings.append(f"only {usable} CPU core usable: workers of a multi-worker job share it")
    g_lines, g_warn = _gpus()
    lines += g_lines
    warnings += g_warn
    try:
        st = os.statvfs(segment.SHM_DIR)
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        lines.append(f"/dev/shm: {size / _GIB:.2f} GiB, {free / _GIB:.2f} GiB free")
        if size < _GIB:
            warnings.append(f"/dev/shm is only {size / (1 << 20):.0f} MiB: data-loader batches "
                            "and shared tensors live there; give the container more (docker "
                            "run --shm-size=8g)")
        elif free < size / 4:
            warnings.append("/dev/shm is more than 3/4 full; leftovers of dead jobs: "
                            "python3 -m shm list, python3 -m shm sweep --stale")
    except OSError:
        warnings.append("no /dev/shm: shared-memory tensors and the multi-process data "
                        "loader cannot work here")
    stale = _stale_jobs()
    if stale:
        warnings.append(f"{stale} stale zgrad job(s) left segments in /dev/shm: "
                        "python3 -m shm sweep --stale")
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        lines.append(f"open files limit: {soft}")
        if soft < 4096:
            warnings.append(f"ulimit -n is {soft}: many ranks or loader workers need sockets "
                            "and pipes; raise it (ulimit -n 65536)")
    except (ImportError, ValueError, OSError):
        pass
    for var in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "ZGRAD_SECRET"):
        if var in os.environ:
            lines.append(f"{var}: {'(set)' if var == 'ZGRAD_SECRET' else os.environ[var]}")
    return lines, warnings


def _stale_jobs() -> int:
    try:
        from shm.__main__ import _jobs, manager_alive
        return sum(1 for job in _jobs() if not manager_alive(job))
    except Exception:
        return 0


def cmd_env(args) -> int:
    lines, warnings = env_report()
    print("\n".join(lines))
    for w in warnings:
        print(f"warning: {w}")
    if not warnings:
        print("nothing found that would limit a job")
    return 0


def read_metrics(run_dir: str) -> list:
    """The records of RUN_DIR/metrics.jsonl (lines cut short by a kill are skipped)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise ToolError(f"{path}: no such file. Expected the run folder of a zgrad run "
                        "(it holds metrics.jsonl, written by rank 0 every train.log_every_steps)")
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    if not out:
        raise ToolError(f"{path} holds no records yet; plot again after the first log step")
    return out


def _panels(records) -> dict:
    """{panel title: [metric keys]}: losses together, accuracies together, the rest alone."""
    keys = []
    for r in records:
        keys += [k for k, v in r.items() if k not in keys and k not in ("step", "epoch") and
                 isinstance(v, (int, float)) and not isinstance(v, bool)]
    panels: dict = {}
    for k in keys:
        title = "loss" if "loss" in k else "accuracy" if "acc" in k else k
        panels.setdefault(title, []).append(k)
    order = {"loss": 0, "accuracy": 1}
    return dict(sorted(panels.items(), key=lambda kv: order.get(kv[0], 2)))


def cmd_plot(args) -> int:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolError("zgrad plot needs matplotlib, which is not installed: pip install "
                        "'zgrad[plot]' (or pip install matplotlib)") from None
    records = read_metrics(args.run_dir)
    panels = _panels(records)
    if not panels:
        raise ToolError(f"{args.run_dir}/metrics.jsonl has no numeric metrics to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels.items()):
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r and "step" in r]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(os.path.basename(os.path.abspath(args.run_dir)), fontsize=10)
    fig.tight_layout()
    out = args.output or os.path.join(args.run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"zgrad plot: wrote {out} ({', '.join(panels)}; {len(records)} records)")
    return 0


def cmd_profile(args) -> int:
    """Time a few training steps of CONFIG in this process, op by op (world size 1)."""
    import tempfile

    from runtime.config import load_config
    from runtime.profiler import profile, record_function
    cfg = load_config(args.config, list(args.overrides) +
                      ["checkpoint.resume=none", "logging.progress=false",
                       "logging.tensorboard=false", "data.num_workers=0"])
    try:
        from runtime.trainer import Trainer
    except ImportError as e:
        raise ToolError(f"zgrad profile needs runtime.trainer, which does not import: {e}") \
            from None
    if args.steps < 1:
        raise ToolError(f"--steps: expected an integer >= 1, got {args.steps}")
    for var, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                       ("LOCAL_WORLD_SIZE", "1")):
        os.environ[var] = value      # one process: no process group, no DDP
    with tempfile.TemporaryDirectory(prefix="zgrad-profile-") as run_dir:
        tr = Trainer(cfg, run_dir).setup()
        try:
            batches = _endless(tr.train_loader)
            for _ in range(2):       # warm-up: first-call costs (allocations, caches)
                _train_step(tr, next(batches))
            with profile() as prof:
                for _ in range(args.steps):
                    with record_function("step"):
                        with record_function("data"):
                            batch = next(batches)
                        _train_step(tr, batch, record_function)
        finally:
            tr.close()
    step_ms = 1e3 * prof.wall_s / args.steps
    print(f"zgrad profile: {args.config}, {args.steps} steps of {cfg.data.batch_size} samples "
          f"after 2 warm-up steps, {step_ms:.2f} ms per step, one process on "
          f"{tr.device} (no communication; under zgrad run each rank also all-reduces)\n")
    print(prof.table(sort_by=args.sort, row_limit=30))
    return 0


def _endless(loader):
    while True:
        yield from loader


def _train_step(tr, batch, record=None):
    """One optimizer step the way the trainer takes it, with named ranges when profiling."""
    import contextlib
    rec = record or (lambda name: contextlib.nullcontext())
    x, y = batch
    with rec("forward"):
        loss = tr.loss_fn(tr.model(x.to(tr.device)), y.to(tr.device))
    with rec("backward"):
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with rec("optimizer.step"):
        tr.optimizer.step()
