"""What a training run reports: exact (distributed) evaluation, metrics.jsonl, the progress bar.

Note [Exact distributed evaluation]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
DistributedSampler (without drop_last) pads the index list with its own head until it divides
by the world size, and rank r takes positions r, r + W, r + 2W, ... of it. The padding is the
tail of that list, so on rank r exactly the first ``len(range(r, n, W))`` samples it is given
are real and the rest are duplicates. ``evaluate`` counts only those, sums (loss, correct,
units) in float64 and all-reduces the sums once at the end: every sample of the set is counted
exactly once, whatever the world size, and the result equals a single-process evaluation up to
float64 summation order (PyTorch's usual loop averages per-rank means and counts the
duplicates).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _real_samples(loader) -> int | None:
    """How many of the samples this rank's loader yields are real (not sampler padding)."""
    from .data import DistributedSampler
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
        return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
    return None


def _to(batch, device):
    return batch.to(device) if device is not None and hasattr(batch, "to") else batch


def evaluate(model, loader, loss_fn, device=None) -> dict:
    """Loss and accuracy of `model` over the whole data set behind `loader`, each sample
    counted once on any number of ranks (Note [Exact distributed evaluation]).

    Collective when a process group of more than one rank exists: call it on every rank.
    `model` should be the plain module (``ddp.module``): its forward must not communicate,
    because ranks run different numbers of batches here.

    Args:
        loss_fn: ``loss_fn(output, target, reduction="none")`` giving per-element losses.
    Returns:
        {"loss": mean loss per element, "accuracy": fraction of argmax predictions equal to
        the target (only when the output has one more dim than an integer target),
        "samples": number of samples}.
    """
    import tensor
    real = _real_samples(loader)
    sums = np.zeros(5, np.float64)   # loss sum, loss elements, correct, predictions, samples
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with tensor.no_grad():
            for x, y in loader:
                b = len(y)
                keep = b if real is None else min(b, real - seen)
                seen += b
                if keep <= 0:
                    continue
                if keep < b:   # the sampler's padding: see the Note
                    x, y = x[:keep], y[:keep]
                x, y = _to(x, device), _to(y, device)
                out = model(x)
                per = loss_fn(out, y, reduction="none")
                sums[0] += float(per.sum().item())
                sums[1] += per.numel()
                if out.ndim == y.ndim + 1 and np.dtype(y.dtype).kind in "iu":
                    sums[2] += float((out.argmax(-1) == y).sum().item())
                    sums[3] += y.numel()
                sums[4] += keep
    finally:
        model.train(was_training)
    import runtime.distributed as dist
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    out = {"loss": sums[0] / max(sums[1], 1), "samples": int(sums[4])}
    if sums[3]:
        out["accuracy"] = sums[2] / sums[3]
    return out


class MetricsLog:
    """One JSON object per line in RUN_DIR/metrics.jsonl (rank 0 writes; others hold None),
    and with `tensorboard_dir` the same numbers as TensorBoard scalars (tensorboardX)."""

    def __init__(self, path: str | None, resume_step: int | None = None,
                 tensorboard_dir: str | None = None):
        self.path, self.tb = path, None
        if path is None:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if resume_step is not None and os.path.exists(path):
            self._truncate_after(resume_step)
        if tensorboard_dir is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ImportError("logging.tensorboard: true needs tensorboardX: pip install "
                                  "'zgrad[tensorboard]' (or set logging.tensorboard: false)") \
                    from None
            self.tb = SummaryWriter(tensorboard_dir)

    def _truncate_after(self, step: int) -> None:
        """Drop the lines of steps after `step`: a run that died wrote them, and this run
        (resumed at `step`, or starting afresh at 0) writes them again."""
        with open(path := self.path) as f:
            lines = f.readlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue   # a line cut short by the kill
            if rec.get("step", 0) <= step:
                keep.append(json.dumps(rec) + "\n")
        with open(path, "w") as f:
            f.writelines(keep)

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class Throughput:
    """Samples per second since the last reading."""

    def __init__(self):
        self.t0, self.samples = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.samples += n

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.t0, 1e-9)
        self.t0, self.samples = now, 0
        return rate


class ProgressBar:
    """Rank 0's tqdm bar over optimizer steps, with loss and samples/s; ETA from tqdm.
    Disabled off rank 0, when `enabled` is false, when stderr is not a terminal, or when tqdm
    is not installed."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if not (enabled and sys.stderr.isatty()):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                        file=sys.stderr)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
