"""The job config: one dataclass per section, what the trainer consumes and the launcher fills.

Note [Config seam]
~~~~~~~~~~~~~~~~~~
The schema lives here, in ``runtime``, because ``runtime.trainer`` consumes it and ``runtime``
never imports ``launcher`` (see ARCHITECTURE.md). ``load_config(path, overrides)`` is the one
place a YAML file becomes a checked ``Config``: OmegaConf merges the dataclass defaults, the
file (and the files it ``extends``) and the dotted ``key=value`` overrides, in that order
(defaults < YAML < CLI), resolves ``${...}`` interpolation (``${oc.env:VAR,default}`` for the
environment), and type-checks against the dataclasses. The launcher calls it, writes the
resolved config into the run folder, and starts each worker as
``python -m runtime.trainer RUN_DIR/config.yaml``; the trainer calls it again on that file,
so a config run by hand (torchrun, srun, mpirun) is checked the same way.

Sections whose contents depend on a registry entry (a model's or a data set's constructor
arguments, an optimizer's extra options) keep them in an open ``args`` mapping, checked by
the constructor that receives them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class ModelConfig:
    """Which model: a registry name (``mlp``) or a user's class as ``package.module:Name``."""
    name: str = "mlp"
    args: Dict[str, Any] = field(default_factory=dict)   # the constructor's keyword arguments


@dataclass
class DataConfig:
    """Which data set and how it is batched. ``batch_size`` is per rank, as in PyTorch DDP."""
    name: str = "digits"
    args: Dict[str, Any] = field(default_factory=dict)   # the data set's keyword arguments
    batch_size: int = 64
    eval_batch_size: Optional[int] = None               # None: batch_size
    num_workers: int = 0
    val_fraction: float = 0.0        # held out of the training split when the set has no val split
    shuffle: bool = True
    drop_last: bool = False
    pin_memory: bool = False


@dataclass
class OptimConfig:
    """The optimizer: a name from tensor.optim (sgd, adam, adamw, rmsprop, ...) and its options."""
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    args: Dict[str, Any] = field(default_factory=dict)   # momentum, betas, eps, ...
    zero: bool = False               # ZeroRedundancyOptimizer: optimizer state sharded by rank


@dataclass
class SchedulerConfig:
    """The learning-rate schedule: a name from tensor.optim.lr_scheduler, or none."""
    name: Optional[str] = None       # cosine, step, onecycle, linear, ... (None: constant lr)
    args: Dict[str, Any] = field(default_factory=dict)
    warmup_steps: int = 0
    interval: str = "step"           # "step" or "epoch": when scheduler.step() is called


@dataclass
class TrainConfig:
    """The loop: how long, how each step is taken, how often it is evaluated."""
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (overrides epochs)
    grad_accum_steps: int = 1
    clip_grad_norm: Optional[float] = None
    loss: str = "cross_entropy"
    eval_every_steps: Optional[int] = None
    eval_every_epochs: Optional[int] = 1
    log_every_steps: int = 10
    seed: int = 0
    device: str = "cpu"              # "cpu", "cuda" (one GPU per local rank), or "auto"
    threads: Optional[int] = None    # BLAS threads per rank (None: cores / local ranks)


@dataclass
class DistributedConfig:
    """How many workers and how they talk (flags of ``zgrad run`` override these)."""
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0             # 0: a free port (single node)
    backend: str = "auto"            # "auto", "zmq" or "nccl"
    timeout_s: float = 300.0
    max_restarts: int = 0
    bucket_cap_mb: float = 25.0
    find_unused_parameters: bool = False
    static_graph: bool = False
    gradient_as_bucket_view: bool = True
    comm_hook: Optional[str] = None  # None, "fp16" or "bf16"


@dataclass
class CheckpointConfig:
    """When checkpoints are written and whether a run resumes from one."""
    dir: Optional[str] = None        # None: RUN_DIR/checkpoints
    every_steps: Optional[int] = None
    every_epochs: Optional[int] = 1
    keep_last: int = 3
    resume: str = "latest"           # "latest", "none", or a checkpoint folder


@dataclass
class LoggingConfig:
    """Where the run folder is and what goes into it."""
    run_dir: Optional[str] = None    # None: runs/<config name>-<timestamp>
    progress: bool = True            # rank 0's progress bar (tqdm)
    tensorboard: bool = False        # also write TensorBoard event files (tensorboardX)


@dataclass
class Config:
    """A whole job. ``extends`` names a base config file whose values this one overrides."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    extends: Optional[str] = None


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file, line and key path."""


SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "extends")


def to_dict(cfg: Config) -> dict:
    """The config as plain dicts and scalars (what the run folder's config.yaml holds)."""
    return dataclasses.asdict(cfg)


def load_config(path, overrides=()) -> Config:
    """Read a YAML config (and the base configs it ``extends``), apply ``key=value`` overrides.

    Args:
        path: the YAML file.
        overrides: dotted ``section.key=value`` strings, applied last (YAML-typed values).
    Returns:
        a type-checked ``Config`` with every interpolation resolved.
    Raises:
        ConfigError: a missing file, bad YAML, an unknown key, a value of the wrong type or out
            of range; one paragraph naming the file, the line and the key path (see
            Note [Config errors] in runtime/_config_errors.py).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from . import _config_errors as ce

    sources = []
    merged = OmegaConf.structured(Config)
    # one source at a time, so a failure knows which file (or override) caused it
    for src, node in _read_chain(path):
        sources.append(src)
        try:
            merged = OmegaConf.merge(merged, node)
        except OmegaConfBaseException as e:
            raise ConfigError(ce.explain(e, Config, sources, src)) from None
    for text in overrides:
        ce.parse_override(text, SECTIONS)
        src = ce.override_source(text)
        sources.append(src)
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([text]))
        except OmegaConfBaseException as e:
            raise ConfigError(ce.explain(e, Config, sources, src)) from None
    try:
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(ce.explain(e, Config, sources)) from None
    obj.extends = None
    ce.check_values(obj, sources)
    return obj


def locate(path, overrides, key) -> str:
    """``file:line`` (or the override) that last set `key` (a tuple like ``("model", "name")``)
    in the config `path` with `overrides`: for errors found after loading (registry names)."""
    from . import _config_errors as ce
    sources = [src for src, _ in _read_chain(path)] + [ce.override_source(o) for o in overrides]
    return ce.last_definer(sources, tuple(key)).where(tuple(key))


def _read_chain(path, seen=()):
    """(Source, OmegaConf node) for each YAML file from the most basic ``extends`` to `path`."""
    import io
    import os

    import yaml
    from omegaconf import OmegaConf

    from . import _config_errors as ce
    label = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    apath = os.path.abspath(path)
    if apath in seen:
        raise ConfigError(f"{label}: 'extends' forms a cycle: "
                          f"{' -> '.join(list(seen) + [apath])}. Remove one of the extends.")
    if not os.path.isfile(apath):
        what = "is a folder, not a file" if os.path.isdir(apath) else "no such file"
        from_ = f" (extended by {seen[-1]})" if seen else ""
        raise ConfigError(f"{label}: {what}{from_}. Check the path; configs/ holds the ready "
                          "configs (digits_mlp.yaml, mnist_mlp.yaml).")
    try:
        with open(apath, encoding="utf-8") as f:
            text = f.read()
        lines = ce.line_map(text)
        node = OmegaConf.load(io.StringIO(text))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        raise ConfigError(f"{at}: not valid YAML: {e.problem or e.context}"
                          f"{' ' + e.context if e.context and e.problem else ''}. Check the "
                          "indentation, colons and brackets on or just above that line.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{label}: not valid YAML: {e}.") from None
    if not hasattr(node, "keys"):
        raise ConfigError(f"{label}:1: expected a mapping of sections at the top level "
                          f"({', '.join(SECTIONS)}), got a list.")
    src = ce.Source(label, lines)
    base = node.get("extends")
    if base is None:
        return [(src, node)]
    if not isinstance(base, str):
        raise ConfigError(f"{src.where(('extends',))}: extends: expected a path to a base "
                          f"config (relative to this file), got {base!r}.")
    base = os.path.join(os.path.dirname(apath), base)
    return _read_chain(base, seen + (apath,)) + [(src, node)]

