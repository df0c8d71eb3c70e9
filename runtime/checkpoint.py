"""Checkpoints that resume a job exactly: model, optimizer, scheduler, data position, RNG.

    path = save_checkpoint("ckpts", step, model=model, optimizer=opt, scheduler=sched,
                           loader=loader, epoch=epoch, keep_last=3)
    path = find_latest("ckpts")          # newest intact one (corrupt ones skipped, warned)
    meta = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, loader=loader)

Note [Checkpoint layout]
~~~~~~~~~~~~~~~~~~~~~~~~
CKPT_DIR/step_000123/ holds
    model.safetensors           model.state_dict() (of ``ddp.module`` under DDP)      rank 0
    optim.safetensors           optimizer.state_dict()                                rank 0
    meta.json                   step, epoch, world_size, the scheduler's state, `extra`  rank 0
    rank_K/state.safetensors    this rank's RNG states (Python ``random``, numpy's global
                                RNG, zgrad's default generator) and its loader position  rank K
    rank_K/optim.safetensors    instead of optim.safetensors under a ZeroRedundancyOptimizer
                                of several ranks: rank K's shard (``zero.optim.state_dict()``),
                                so no rank gathers the whole state; it loads back only at the
                                same world size (consolidate_state_dict() and save
                                ``zero.state_dict()`` yourself for a portable copy)    rank K
    manifest.json               sha256 and size of every file above; written last     rank 0
Tensors go through ``tensor.save`` (safetensors, the structure as JSON in its header; no
pickle), everything else is JSON. Per-rank files exist because ranks differ: each has its own
share of the data (DistributedSampler) and may have its own RNG streams.

Note [Atomic checkpoint]
~~~~~~~~~~~~~~~~~~~~~~~~
1. Rank 0 removes leftovers of interrupted saves (``.step_*.tmp``) and creates
   ``CKPT_DIR/.step_000123.tmp/``; all ranks meet (all_gather_object).
2. Every rank writes its files into that folder (write, flush, fsync) and hashes them as they
   are on disk. A rank that fails catches the error; the outcomes are gathered, so every rank
   raises together instead of hanging in the next collective.
3. Rank 0 writes manifest.json (the gathered hashes), fsyncs it and the folders, renames the
   folder to ``step_000123`` and fsyncs CKPT_DIR; then it deletes all but the newest
   `keep_last`. The outcome is gathered again, so no rank goes on before the checkpoint is
   durable.
A crash before the rename leaves only a ``.tmp`` folder, which readers never look at: the
previous checkpoints are untouched. Damage after the fact (a truncated copy, a bad disk) fails
the manifest's checksums; ``find_latest`` skips such a checkpoint with a CheckpointWarning and
takes the next older one that every rank finds intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
import warnings

import numpy as np

FORMAT = "zgrad-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message says which and why."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (corrupt or incomplete) or only partly restored."""


def step_dirname(step: int) -> str:
    return f"step_{int(step):06d}"


# -- RNG states ------------------------------------------------------------------------------
def rng_state() -> dict:
    """Snapshots of every CPU random stream a training step may draw from."""
    import tensor
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "tensor": tensor.default_generator.get_state()}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() took. (A CuPy generator is rebuilt from the restored zgrad
    generator on its next use; its own position is not saved, so GPU dropout after a resume
    differs from the uninterrupted run.)"""
    import tensor
    random.setstate(_tuples(state["python"]))
    np.random.set_state(_tuples(state["numpy"]))
    tensor.default_generator.set_state(state["tensor"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# -- the process group -----------------------------------------------------------------------
def _group():
    """(rank, world_size, runtime.distributed or None when there is no group)."""
    import runtime.distributed as dist
    if dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size(), dist
    return 0, 1, None


def _gather(dist, obj) -> list:
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _raise_failures(outcomes: list, what: str) -> None:
    failed = [(r, e) for r, e in enumerate(outcomes) if e]
    if failed:
        raise CheckpointError(f"{what} failed on rank(s) {[r for r, _ in failed]}: "
                              + "; ".join(f"rank {r}: {e}" for r, e in failed))


# -- files -----------------------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _write(folder: str, rel: str, write) -> dict:
    """Write folder/rel with write(fileobj), fsync it, and return {rel: {sha256, size}}."""
    path = os.path.join(folder, rel)
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    digest, size = _sha256(path)
    return {rel: {"sha256": digest, "size_bytes": size}}


def _json_writer(obj):
    data = json.dumps(obj, indent=1, allow_nan=True).encode()
    return lambda f: f.write(data)


def _tensor_writer(obj):
    import tensor
    return lambda f: tensor.save(obj, f)


def _unwrap(model):
    """The module inside a DistributedDataParallel (whose own keys carry 'module.')."""
    return getattr(model, "module", model)


# -- save ------------------------------------------------------------------------------------
def save_checkpoint(directory, step: int, *, model=None, optimizer=None, scheduler=None,
                    loader=None, epoch: int = 0, extra: dict | None = None,
                    keep_last: int | None = None) -> str:
    """Write checkpoint `step` into `directory` atomically; collective when a process group of
    more than one rank exists (every rank calls it with the same arguments).

    Args:
        model, optimizer, scheduler: saved through their state_dict().
        loader: a runtime.data.DataLoader; its position (epoch, batches served, sampler seed)
            is saved per rank.
        epoch: the epoch the job is in (stored in meta.json).
        extra: JSON-serialisable values for meta.json (the trainer's own counters).
        keep_last: delete all but the newest `keep_last` checkpoints (None or 0: keep all).
    Returns:
        the checkpoint's folder. See Note [Atomic checkpoint].
    Raises:
        CheckpointError: a rank could not write its part (the message names it); the
            previous checkpoints are left as they were.
    """
    rank, world_size, dist = _group()
    directory = os.path.abspath(os.fspath(directory))
    name = step_dirname(step)
    tmp, final = os.path.join(directory, f".{name}.tmp"), os.path.join(directory, name)
    where = f"save_checkpoint({final})"
    sharded = _is_zero(optimizer) and world_size > 1
    if _is_zero(optimizer) and not sharded:
        optimizer.consolidate_state_dict(to=0)   # one rank: its shard is the whole state
    _raise_failures(_gather(dist, _prepare(directory, tmp) if rank == 0 else None), where)
    files, error = {}, None
    try:
        if not os.path.isdir(tmp):
            raise CheckpointError(f"{tmp}, created by rank 0, is not visible on this rank; "
                                  "the checkpoint directory must be on a file system that "
                                  "every rank shares (e.g. NFS across hosts)")
        os.makedirs(os.path.join(tmp, f"rank_{rank}"))
        local = {"rng": rng_state(), "loader": loader.state_dict() if loader else None}
        files.update(_write(tmp, f"rank_{rank}/state.safetensors", _tensor_writer(local)))
        if sharded:
            _copy_hyperparameters(optimizer.param_groups, optimizer.optim.param_groups)
            files.update(_write(tmp, f"rank_{rank}/optim.safetensors",
                                _tensor_writer(optimizer.optim.state_dict())))
        if rank == 0:
            files.update(_write_shared(tmp, step, epoch, world_size, model,
                                       None if sharded else optimizer, scheduler, extra,
                                       sharded))
    except Exception as e:   # gathered below, so the other ranks raise too instead of hanging
        error = f"{type(e).__name__}: {e}"
    outcomes = _gather(dist, [files, error])
    _raise_failures([e for _, e in outcomes], where)
    error = None
    if rank == 0:
        try:
            _commit(tmp, final, step, epoch, world_size, outcomes)
            if keep_last:
                for _, old in list_checkpoints(directory)[:-keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
    _raise_failures(_gather(dist, error), where)
    return final


def _prepare(directory: str, tmp: str) -> str | None:
    """Rank 0: remove what interrupted saves left, create the temporary folder. Returns the
    error, if any (gathered, so that every rank raises it)."""
    try:
        os.makedirs(directory, exist_ok=True)
        for leftover in os.listdir(directory):
            if leftover.startswith(".step_") and leftover.endswith(".tmp"):
                shutil.rmtree(os.path.join(directory, leftover))
        os.makedirs(tmp)
    except OSError as e:
        return f"cannot create {tmp}: {e}"
    return None


def _is_zero(optimizer) -> bool:
    """A ZeroRedundancyOptimizer (or one like it): its local shard is `.optim`."""
    return hasattr(optimizer, "consolidate_state_dict") and hasattr(optimizer, "optim")


def _copy_hyperparameters(src_groups, dst_groups) -> None:
    """Group by group, everything but the params. The ZeRO wrapper's groups are the ones a
    scheduler sets; its shard's optimizer sees them only at the next step()."""
    for src, dst in zip(src_groups, dst_groups):
        dst.update({k: v for k, v in src.items() if k != "params"})


def _write_shared(tmp, step, epoch, world_size, model, optimizer, scheduler, extra,
                  sharded) -> dict:
    """Rank 0's files: model, optimizer, meta.json."""
    files = {}
    if model is not None:
        files.update(_write(tmp, "model.safetensors", _tensor_writer(_unwrap(model)
                                                                      .state_dict())))
    if optimizer is not None:
        files.update(_write(tmp, "optim.safetensors", _tensor_writer(optimizer.state_dict())))
    meta = {"step": int(step), "epoch": int(epoch), "world_size": world_size,
            "time": time.time(), "optimizer_sharded": sharded,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "extra": extra or {}}
    try:
        writer = _json_writer(meta)
    except TypeError as e:
        raise TypeError(f"meta.json: the scheduler state or `extra` is not JSON-serialisable "
                        f"({e}); keep them to numbers, strings, lists and dicts") from None
    files.update(_write(tmp, "meta.json", writer))
    return files


def _commit(tmp, final, step, epoch, world_size, outcomes) -> None:
    """Rank 0: the manifest last, then the rename that publishes the checkpoint."""
    files = {}
    for rank_files, _ in outcomes:
        files.update(rank_files)
    manifest = {"format": FORMAT, "version": VERSION, "step": int(step), "epoch": int(epoch),
                "world_size": world_size, "files": dict(sorted(files.items()))}
    _write(tmp, MANIFEST, _json_writer(manifest))
    for entry in os.listdir(tmp):
        if entry.startswith("rank_"):
            _fsync_dir(os.path.join(tmp, entry))
    _fsync_dir(tmp)
    if os.path.exists(final):   # the same step saved again (a rerun): replace it
        old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old.tmp")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(os.path.dirname(final))


# -- find and verify -------------------------------------------------------------------------
def list_checkpoints(directory) -> list[tuple[int, str]]:
    """(step, folder) of every published checkpoint in `directory`, oldest first (unverified)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(os.path.abspath(directory), n))
             for n in names if (m := _STEP_RE.match(n)) and os.path.isdir(os.path.join(
                 directory, n))]
    return sorted(found)


def read_manifest(path) -> dict:
    """The manifest of checkpoint folder `path`.

    Raises:
        CheckpointError: it is missing or not a zgrad checkpoint manifest.
    """
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{mpath} is missing (an incomplete checkpoint)") from None
    except ValueError as e:
        raise CheckpointError(f"{mpath} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{mpath} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"{mpath} has format version {manifest.get('version')!r}; this "
                              f"zgrad reads version {VERSION}")
    return manifest


def verify_checkpoint(path, rank: int | None = None) -> str | None:
    """Why checkpoint folder `path` cannot be used, or None if it is intact.

    Checks the manifest and the size and sha256 of the shared files and of rank `rank`'s
    own files (every rank's when `rank` is None).
    """
    try:
        manifest = read_manifest(path)
    except CheckpointError as e:
        return str(e)
    for rel, rec in manifest["files"].items():
        owner = rel.split("/", 1)[0]
        if rank is not None and owner.startswith("rank_") and owner != f"rank_{rank}":
            continue
        fpath = os.path.join(path, rel)
        try:
            size = os.path.getsize(fpath)
        except OSError:
            return f"{rel} is missing"
        if size != rec.get("size_bytes"):
            return f"{rel} has {size} bytes, the manifest says {rec.get('size_bytes')} (truncated)"
        if _sha256(fpath)[0] != rec.get("sha256"):
            return f"{rel} does not match its sha256 checksum (corrupt)"
    return None


def find_latest(directory) -> str | None:
    """The newest checkpoint in `directory` that every rank finds intact, or None.

    Collective under a process group: ranks agree on one checkpoint (rank 0's listing, each
    rank checking the shared files and its own). Each skipped one is reported with a
    CheckpointWarning naming the problem.
    """
    rank, _, dist = _group()
    candidates = _gather(dist, [p for _, p in list_checkpoints(directory)])[0]
    for path in reversed(candidates):
        reasons = _gather(dist, verify_checkpoint(path, rank))
        bad = [f"rank {r}: {why}" if dist else why for r, why in enumerate(reasons) if why]
        if not bad:
            return path
        if rank == 0:
            warnings.warn(f"checkpoint {path} is corrupt or incomplete ({'; '.join(bad)}); "
                          "skipping it and trying an older one", CheckpointWarning, stacklevel=2)
    if candidates and rank == 0:
        warnings.warn(f"no intact checkpoint in {directory}: starting from scratch",
                      CheckpointWarning, stacklevel=2)
    return None


# -- load ------------------------------------------------------------------------------------
def _part(path, fname, what) -> str:
    fpath = os.path.join(path, fname)
    if not os.path.exists(fpath):
        raise CheckpointError(f"checkpoint {path} has no {fname}, but {what} was given")
    return fpath


def _load_optimizer(path, meta, optimizer, rank, world_size) -> None:
    """The whole state into any optimizer (ZeRO keeps its shard of it), or a ZeRO shard
    into the ZeRO optimizer of the same rank at the same world size."""
    import tensor
    if not meta.get("optimizer_sharded"):
        optimizer.load_state_dict(tensor.load(_part(path, "optim.safetensors",
                                                    "an optimizer"), map_location="cpu"))
        return
    if not _is_zero(optimizer) or meta.get("world_size") != world_size:
        raise CheckpointError(
            f"checkpoint {path} holds the optimizer state as ZeroRedundancyOptimizer shards of "
            f"{meta.get('world_size')} ranks; it loads only into a ZeroRedundancyOptimizer at "
            f"that world size (got {type(optimizer).__name__} at world size {world_size}). "
            "Resume with the same number of ranks, or pass optimizer=None to restore the rest")
    shard = tensor.load(_part(path, f"rank_{rank}/optim.safetensors", "a ZeRO optimizer"),
                        map_location="cpu")
    optimizer.optim.load_state_dict(shard)
    _copy_hyperparameters(optimizer.optim.param_groups, optimizer.param_groups)


def load_checkpoint(path, *, model=None, optimizer=None, scheduler=None, loader=None,
                    restore_rng: bool = True, verify: bool = True) -> dict:
    """Restore what save_checkpoint wrote into the given objects; returns meta.json's contents.

    The model's tensors are loaded onto the device of its parameters. Per-rank state (loader
    position, RNG) is restored only when the world size is the one the checkpoint was written
    with; otherwise a CheckpointWarning says so and those parts are left alone.

    Raises:
        CheckpointError: the checkpoint fails verification or lacks a part that was asked for.
    """
    import tensor
    rank, world_size, _ = _group()
    path = os.path.abspath(os.fspath(path))
    if verify and (why := verify_checkpoint(path, rank)):
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {why}")
    with open(os.path.join(path, "meta.json"), "rb") as f:
        meta = json.loads(f.read())
    if model is not None:
        module = _unwrap(model)
        dev = next(iter(module.parameters()), None)
        module.load_state_dict(tensor.load(_part(path, "model.safetensors", "a model"),
                                           map_location=str(dev.device) if dev is not None
                                           else "cpu"))
    if optimizer is not None:
        _load_optimizer(path, meta, optimizer, rank, world_size)
    if scheduler is not None:
        if meta.get("scheduler") is None:
            raise CheckpointError(f"checkpoint {path} has no scheduler state, but a scheduler "
                                  "was given")
        scheduler.load_state_dict(meta["scheduler"])
    if meta.get("world_size", 1) != world_size:
        warnings.warn(f"checkpoint {path} was written by {meta.get('world_size')} ranks and is "
                      f"loaded by {world_size}: model, optimizer and scheduler are restored, but "
                      "not the per-rank data position and RNG streams", CheckpointWarning,
                      stacklevel=2)
        return meta
    local = tensor.load(os.path.join(path, f"rank_{rank}", "state.safetensors"),
                        map_location="cpu")
    if loader is not None and local.get("loader") is not None:
        loader.load_state_dict(local["loader"])
    if restore_rng:
        set_rng_state(local["rng"])
    return meta
