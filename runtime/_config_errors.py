"""Config errors that point at the file, the line and the key (used by runtime.config).

Note [Config errors]
~~~~~~~~~~~~~~~~~~~~
OmegaConf checks types and keys but its nodes do not remember where they came from, so its
errors name a key path (``optim.lrr``) and nothing else. We merge the sources one at a time
(defaults, each file of the ``extends`` chain, each command-line override), so we know which
source a failure came from, and we map key paths to line numbers with PyYAML's composer (which
keeps every node's position). A failure that shows up only at the end (an interpolation that
does not resolve, a value out of range) is pinned on the last source that set that key.
Every error is one paragraph: ``FILE:LINE: KEY: what was expected, what was found, what to
do`` (and for an unknown key, the closest known one).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import typing

_PART_RE = re.compile(r"[^.\[\]]+")


@dataclasses.dataclass
class Source:
    """One layer of a config: a YAML file (with its key-path -> line map) or an override."""
    label: str                               # "configs/x.yaml" or "override 'optim.lr=abc'"
    lines: dict = dataclasses.field(default_factory=dict)   # ("optim", "lr") -> line (1-based)

    def where(self, path: tuple) -> str:
        """``label:line`` for `path` (or its closest enclosing key), else just ``label``."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"{self.label}:{self.lines[path[:n]]}"
        return self.label

    def defines(self, path: tuple) -> bool:
        return path in self.lines


def line_map(text: str) -> dict:
    """Map every key path of a YAML mapping document to the (1-based) line of its key."""
    import yaml
    out: dict = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = prefix + (str(k.value),)
                out[path] = k.start_mark.line + 1
                walk(v, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out.setdefault(prefix + (str(i),), v.start_mark.line + 1)
                walk(v, prefix + (str(i),))

    walk(root, ())
    return out


def override_source(text: str) -> Source:
    """The Source of one ``key=value`` override (its key path "defined" on no particular line)."""
    key = text.split("=", 1)[0].strip()
    parts = tuple(_PART_RE.findall(key))
    src = Source(f"override '{text}' (command line)")
    src.lines = {parts[:n]: None for n in range(1, len(parts) + 1)}
    src.where = lambda path: src.label      # an override has no line
    return src


def key_path(full_key) -> tuple:
    """``"model.args.sizes[0]"`` -> ``("model", "args", "sizes", "0")``."""
    return tuple(_PART_RE.findall(str(full_key or "")))


def _field_type(schema, path: tuple):
    """The annotated type of `path` in dataclass `schema`, or None (unknown / open mapping)."""
    tp = schema
    for part in path:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _known_keys(schema, path: tuple):
    """The field names of the dataclass at `path` (the parent of an unknown key), or None."""
    tp = _field_type(schema, path) if path else schema
    if dataclasses.is_dataclass(tp):
        return [f.name for f in dataclasses.fields(tp)]
    return None


def describe_type(tp) -> str:
    """``Optional[int]`` -> "an int (or null)"; a dataclass -> "a mapping (section ...)"."""
    names = {int: "an int", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = describe_type(args[0]) if len(args) == 1 else " or ".join(map(describe_type, args))
        return inner + " (or null)"
    if dataclasses.is_dataclass(tp):
        return f"a mapping (the {tp.__name__} section)"
    if typing.get_origin(tp) in (dict, typing.Dict) or tp is dict:
        return "a mapping of keyword arguments"
    if typing.get_origin(tp) in (list, typing.List) or tp is list:
        return "a list"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _got(value) -> str:
    if value is None:
        return "null"
    kind = {"ListConfig": "list", "DictConfig": "mapping"}.get(type(value).__name__)
    if kind:
        return f"a {kind}"
    return f"{value!r} ({type(value).__name__})"


def _section_merge_error(e, schema):
    """OmegaConf's "Merge error: int is not a subclass of DataConfig. value: 3" -> (path, value)."""
    m = re.search(r"not a subclass of (\w+)\. value: (.*)", str(e))
    if not m:
        return None
    for f in dataclasses.fields(schema):
        if getattr(typing.get_type_hints(schema)[f.name], "__name__", "") == m.group(1):
            return (f.name,), m.group(2)
    return None


def last_definer(sources, path: tuple):
    for src in reversed(sources):
        if src.defines(path):
            return src
    return sources[-1] if sources else Source("config")


def explain(e, schema, sources, source=None) -> str:
    """One paragraph for OmegaConf exception `e`, raised while merging `source` (or after)."""
    from omegaconf.errors import (ConfigKeyError, InterpolationResolutionError,
                                  ValidationError, KeyValidationError)
    path = key_path(getattr(e, "full_key", None))
    section = None if path else _section_merge_error(e, schema)
    if section:
        path = section[0]
    src = source or last_definer(sources, path)
    where = src.where(path)
    key = ".".join(path) or "(top level)"
    first = str(getattr(e, "msg", None) or e).split("\n")[0]
    first = first.replace("KeyError raised while resolving interpolation: ", "")
    if isinstance(e, (ConfigKeyError, KeyValidationError)) and path:
        known = _known_keys(schema, path[:-1])
        if known is None:
            return f"{where}: {key}: {first}."
        close = difflib.get_close_matches(path[-1], known, n=1, cutoff=0.5)
        hint = f" Did you mean '{'.'.join(path[:-1] + (close[0],))}'?" if close else ""
        section = ".".join(path[:-1]) or "the top level"
        return (f"{where}: {key}: unknown key.{hint} Known keys in {section}: "
                f"{', '.join(known)}.")
    if isinstance(e, InterpolationResolutionError):
        return (f"{where}: {key}: cannot resolve its interpolation: {first}. Set the variable "
                "or give a default: ${oc.env:NAME,default}.")
    if section:
        return (f"{where}: {key}: expected {describe_type(_field_type(schema, path))}, got "
                f"{section[1]}.")
    if isinstance(e, ValidationError):
        tp = _field_type(schema, path)
        if tp is not None:
            return (f"{where}: {key}: expected {describe_type(tp)}, got "
                    f"{_got(getattr(e, 'value', None))}.")
    return f"{where}: {key}: {first}."


# (key path, check, what is expected): checked after the types, so values are typed already
_CHOICE = {
    ("distributed", "backend"): ("auto", "zmq", "nccl", "gloo"),
    ("distributed", "comm_hook"): (None, "fp16", "bf16"),
    ("scheduler", "interval"): ("step", "epoch"),
}
_AT_LEAST = {
    ("distributed", "nproc_per_node"): 1, ("distributed", "nnodes"): 1,
    ("distributed", "node_rank"): 0, ("distributed", "master_port"): 0,
    ("distributed", "max_restarts"): 0, ("data", "batch_size"): 1,
    ("data", "num_workers"): 0, ("optim", "lr"): 0, ("optim", "weight_decay"): 0,
    ("scheduler", "warmup_steps"): 0, ("train", "epochs"): 0, ("train", "max_steps"): 1,
    ("train", "grad_accum_steps"): 1, ("train", "log_every_steps"): 1,
    ("train", "eval_every_steps"): 1, ("train", "eval_every_epochs"): 1,
    ("train", "threads"): 1, ("checkpoint", "every_steps"): 1,
    ("checkpoint", "every_epochs"): 1, ("checkpoint", "keep_last"): 1,
}


def check_values(cfg, sources) -> None:
    """Range and choice checks OmegaConf's types cannot express; raises ConfigError."""
    from .config import ConfigError

    def fail(path, expected, value):
        where = last_definer(sources, path).where(path)
        raise ConfigError(f"{where}: {'.'.join(path)}: expected {expected}, got {_got(value)}.")

    def get(path):
        return getattr(getattr(cfg, path[0]), path[1])

    for path, choices in _CHOICE.items():
        if get(path) not in choices:
            fail(path, "one of " + ", ".join("null" if c is None else repr(c) for c in choices),
                 get(path))
    for path, low in _AT_LEAST.items():
        v = get(path)
        if v is not None and v < low:
            fail(path, f"a value >= {low}", v)
    d = cfg.distributed
    if d.master_port > 65535:
        fail(("distributed", "master_port"), "a TCP port (0 = pick a free one, up to 65535)",
             d.master_port)
    if d.node_rank >= d.nnodes:
        fail(("distributed", "node_rank"), f"0 <= node_rank < nnodes ({d.nnodes})", d.node_rank)
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        fail(("data", "val_fraction"), "a fraction in [0, 1)", cfg.data.val_fraction)
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", cfg.train.device):
        fail(("train", "device"), "'cpu', 'cuda' (one GPU per local rank) or 'auto'",
             cfg.train.device)
    if cfg.checkpoint.resume not in ("latest", "none") and not cfg.checkpoint.resume:
        fail(("checkpoint", "resume"), "'latest', 'none' or a checkpoint folder",
             cfg.checkpoint.resume)


def parse_override(text: str, known_sections) -> None:
    """Reject an override that is not ``dotted.key=value`` before OmegaConf reads it."""
    from .config import ConfigError
    key, eq, _ = text.partition("=")
    if not eq or not key.strip() or not re.fullmatch(r"[A-Za-z_][\w.\[\]-]*", key.strip()):
        raise ConfigError(f"override {text!r} (command line): expected section.key=value, e.g. "
                          f"optim.lr=0.01 or data.batch_size=256 (sections: "
                          f"{', '.join(known_sections)}).")

