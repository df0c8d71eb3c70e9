"""``zgrad``: run a YAML-configured job or your own script on supervised workers (torchrun + configs).

    zgrad run CONFIG.yaml [key=value ...] [--nproc-per-node N] [--max-restarts K] ...
    zgrad run script.py [script args]        your own training script, as torchrun runs it
    zgrad config CONFIG [key=value ...]      print the resolved config
    zgrad check CONFIG [key=value ...]       validate only
    zgrad env | plot RUN_DIR | profile CONFIG
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import cluster, tools
from .job import free_port, run_job, say

EXIT_USAGE = 2
_PRECEDENCE = ("Precedence: the schema's defaults < the YAML file (and the files it extends) < "
               "key=value overrides < these flags, which override the config's distributed "
               "section. Under srun or mpirun the scheduler's ranks win.")


class UsageError(Exception):
    """Bad input from the user: printed as one paragraph, exit code 2."""


def _add_run_flags(p, default=None):
    """The flags of ``zgrad run`` (torchrun's spellings with underscores work too)."""
    d = default
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=d, metavar="N",
                   help="workers on this node (config: distributed.nproc_per_node)")
    p.add_argument("--nnodes", type=int, default=d, metavar="N", help="number of nodes")
    p.add_argument("--node-rank", "--node_rank", type=int, default=d, metavar="R",
                   help="this node's index, 0..nnodes-1 (node 0 hosts the rendezvous store)")
    p.add_argument("--master-addr", "--master_addr", default=d, metavar="A",
                   help="node 0's address, reachable from every node (default 127.0.0.1)")
    p.add_argument("--master-port", "--master_port", type=int, default=d, metavar="P",
                   help="rendezvous port (default: a free one; required with --nnodes > 1)")
    p.add_argument("--max-restarts", "--max_restarts", type=int, default=d, metavar="K",
                   help="restart the whole group up to K times after a failure; a config job "
                        "resumes from its latest checkpoint")
    p.add_argument("--run-dir", default=d, metavar="DIR",
                   help="the run folder (default runs/<name>-<time>); an existing one resumes")
    p.add_argument("--grace-s", type=float, default=d, metavar="S",
                   help="seconds between SIGTERM and SIGKILL when stopping workers (default 5)")
    p.add_argument("--no-scheduler", action="store_true", default=d,
                   help="ignore SLURM / Open MPI / MPICH variables and spawn workers here")
    p.add_argument("--standalone", action="store_true", default=d,
                   help="accepted for torchrun compatibility (one node is standalone anyway)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zgrad", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a config or a script on supervised workers",
                         description="Run CONFIG.yaml (as `python -m runtime.trainer`) or "
                         "script.py on supervised workers. " + _PRECEDENCE,
                         epilog="Examples: zgrad run configs/digits_mlp.yaml optim.lr=0.01 "
                         "--nproc-per-node 2;  zgrad run train.py --epochs 3;  two nodes: "
                         "export ZGRAD_SECRET=...; zgrad run cfg.yaml --nnodes 2 --node-rank R "
                         "--master-addr HOST0 --master-port 29500")
    _add_run_flags(run)
    run.add_argument("target", metavar="CONFIG_OR_SCRIPT", help="a .yaml config or a .py script")
    run.add_argument("rest", nargs=argparse.REMAINDER, metavar="...",
                     help="config: key=value overrides (and flags); script: its arguments")
    for name, text in (("config", "print the resolved config as YAML"),
                       ("check", "validate a config (exit 2 with the reason if it is wrong)")):
        p = sub.add_parser(name, help=text, description=text + ". " + _PRECEDENCE)
        p.add_argument("config")
        p.add_argument("overrides", nargs="*", metavar="key=value")
    sub.add_parser("env", help="versions, CPUs, GPUs, /dev/shm, and what would limit a job")
    p = sub.add_parser("plot", help="a PNG of the loss and metric curves of a run")
    p.add_argument("run_dir")
    p.add_argument("-o", "--output", help="the PNG (default RUN_DIR/curves.png)")
    p = sub.add_parser("profile", help="a per-op time table over a few training steps")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--steps", type=int, default=5, help="steps to time (after 2 warm-up steps)")
    p.add_argument("--sort", default="self", choices=("self", "total", "count"))
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.config import ConfigError
    try:
        if args.cmd == "run":
            return cmd_run(args)
        if args.cmd in ("config", "check"):
            return cmd_config(args)
        return getattr(tools, f"cmd_{args.cmd}")(args)
    except (ConfigError, UsageError, cluster.PlacementError, tools.ToolError) as e:
        msg = str(e)
        print(msg if msg.startswith("zgrad") else f"zgrad {args.cmd}: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:   # before any worker started (once they run, Supervisor handles it)
        print(f"zgrad {args.cmd}: interrupted", file=sys.stderr)
        return 130


def cmd_config(args) -> int:
    from omegaconf import OmegaConf

    from runtime.config import load_config
    cfg = load_config(args.config, args.overrides)
    if args.cmd == "check":
        from .names import check_names
        check_names(cfg, args.config, args.overrides, import_user_code=True)
    if args.cmd == "config":
        print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    else:
        print(f"{args.config}: OK ({summary(cfg)})")
    return 0


def summary(cfg) -> str:
    """The effective config in one line."""
    def args_of(d):
        return "(" + ", ".join(f"{k}={v}" for k, v in d.items()) + ")" if d else ""
    t = cfg.train
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    sched = f", {cfg.scheduler.name} schedule" if cfg.scheduler.name else ""
    return (f"model {cfg.model.name}{args_of(cfg.model.args)}, data {cfg.data.name} "
            f"batch {cfg.data.batch_size}/rank, {cfg.optim.name} lr {cfg.optim.lr:g}{sched}, "
            f"{length}, device {t.device}")


class _QuietParser(argparse.ArgumentParser):
    """Raises UsageError instead of printing usage and exiting (one paragraph, exit 2)."""

    def error(self, message):
        raise UsageError(message)


def _run_args(args):
    """Split ``run``'s REMAINDER: a config takes overrides and flags, a script its own args."""
    if args.target.endswith(".py"):
        return args, [], list(args.rest)
    p = _QuietParser(prog="zgrad run CONFIG", add_help=False)
    _add_run_flags(p)
    p.add_argument("overrides", nargs="*")
    try:
        more = p.parse_intermixed_args(args.rest)
    except UsageError as e:
        raise UsageError(f"cannot read the arguments after {args.target}: {e}; expected "
                         "key=value overrides and zgrad run's flags (zgrad run --help)") from None
    for k, v in vars(more).items():
        if k != "overrides" and v is not None:
            setattr(args, k, v)
    return args, more.overrides, []


def _placement(args, dist):
    """Flags over the config's distributed section, unless a scheduler placed this process."""
    for flag in ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port"):
        if getattr(args, flag) is not None:
            setattr(dist, flag, getattr(args, flag))
    if args.max_restarts is not None:
        dist.max_restarts = args.max_restarts
    for name, value, low in (("--nproc-per-node", dist.nproc_per_node, 1),
                             ("--nnodes", dist.nnodes, 1), ("--max-restarts", dist.max_restarts, 0)):
        if value < low:
            raise UsageError(f"{name}: expected an integer >= {low}, got {value}")
    if not args.no_scheduler:
        placed = cluster.from_scheduler(os.environ, args.master_addr, args.master_port or 0)
        if placed is not None:
            if args.nproc_per_node not in (None, 1) or args.nnodes is not None:
                raise UsageError(f"{placed.scheduler} placed this process as rank "
                                 f"{placed.ranks[0]} of {placed.world_size}, and --nproc-per-node/"
                                 "--nnodes ask for a different layout. Let the scheduler place "
                                 "the tasks (srun -n N zgrad run ...), or pass --no-scheduler.")
            return placed
    return cluster.from_flags(dist.nproc_per_node, dist.nnodes, dist.node_rank,
                              dist.master_addr, dist.master_port)


def _run_dir(given, name: str, placement, job_id: str) -> str:
    """--run-dir, else the config's logging.run_dir, else runs/<name>-<time> (or -<job id>)."""
    if given:
        path = os.path.expanduser(given)
    elif placement.multi_launcher:   # every launcher of the job must agree on the name
        path = os.path.join("runs", f"{name}-{job_id}")
    else:
        path = os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if os.path.exists(path):
            path += f"-{job_id}"
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    return path


def _write_config(cfg, run_dir: str) -> str:
    """RUN_DIR/config.yaml: the resolved config the workers load (written atomically)."""
    from omegaconf import OmegaConf
    path = os.path.join(run_dir, "config.yaml")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write("# written by zgrad run: the resolved config of this run (defaults, YAML and\n"
                "# overrides merged). RANK, WORLD_SIZE, MASTER_ADDR, ... come from the env.\n")
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    os.replace(tmp, path)
    return path


def cmd_run(args) -> int:
    from runtime.config import DistributedConfig, load_config

    from .env import job_identity
    args, overrides, script_args = _run_args(args)
    is_script = args.target.endswith(".py")
    if is_script:
        if not os.path.isfile(args.target):
            raise UsageError(f"{args.target}: no such script")
        cfg, dist, device = None, DistributedConfig(), "auto"
    else:
        cfg = load_config(args.target, overrides)
        from .names import check_names
        check_names(cfg, args.target, overrides)
        dist, device = cfg.distributed, cfg.train.device
    placement = _placement(args, dist)
    try:
        secret, job_id = job_identity(placement)
    except ValueError as e:
        raise UsageError(str(e)) from None
    name = os.path.splitext(os.path.basename(args.target))[0]
    run_dir = _run_dir(args.run_dir or (cfg.logging.run_dir if cfg else None), name,
                       placement, job_id)
    gpus = cluster.gpu_count() if device != "cpu" else 0
    where = (f"rank {placement.ranks[0]} of {placement.world_size} (placed by "
             f"{placement.scheduler})" if placement.scheduler else
             f"{len(placement.ranks)} worker{'s' * (len(placement.ranks) > 1)} on node "
             f"{placement.node_rank} of "
             f"{placement.nnodes} (world {placement.world_size})")
    if not placement.master_port and not placement.multi_launcher:
        placement.master_port = free_port(placement.master_addr)
    port = placement.master_port
    say(f"zgrad run: {args.target} -> {run_dir}\n  {where}, master "
        f"{placement.master_addr}:{port}, device {'cuda x%d' % gpus if gpus else 'cpu'}, "
        f"max restarts {dist.max_restarts}")
    if is_script:
        argv = [sys.executable, "-u", os.path.abspath(args.target), *script_args]
    else:
        cfg.logging.run_dir = run_dir
        say(f"  {summary(cfg)}")
        argv = [sys.executable, "-u", "-m", "runtime.trainer", _write_config(cfg, run_dir)]
    return run_job(argv, placement, run_dir, secret=secret, job_id=job_id,
                   max_restarts=dist.max_restarts,
                   grace_s=5.0 if args.grace_s is None else args.grace_s,
                   device=device, gpus=gpus)
