"""The training loop behind configs: ``python -m runtime.trainer RUN_DIR/config.yaml [k=v ...]``.

One rank of a job: the process group from the environment (RANK, WORLD_SIZE, MASTER_ADDR,
... as torchrun, srun or ``zgrad run`` set them), the model and data from the registries,
DistributedDataParallel, the loop, checkpoints and metrics. Run by hand it is one process.

Note [Training loop]
~~~~~~~~~~~~~~~~~~~~
- An optimizer step takes ``train.grad_accum_steps`` micro-batches; all but the last run under
  DDP's ``no_sync()``, and each micro-batch's loss is divided by the number of micro-batches in
  its group (the last group of an epoch may be short), so the gradient is the mean over the
  group, as one big batch's would be. Clipping (``train.clip_grad_norm``) sees the averaged
  gradient, after DDP's all-reduce.
- Counters: ``step`` counts optimizer steps over the run, ``epoch`` the epochs started,
  ``batch_in_epoch`` the micro-batches taken in the current one. Logging, evaluation and
  checkpoints every N steps happen right after step N's update; at the end of an epoch come
  the epoch scheduler step, evaluation and checkpoint every N epochs.
- Exact resume (see runtime.checkpoint): the data order comes from the loader's own seeded
  generator (and DistributedSampler's seed + epoch), never from zgrad's default generator,
  and evaluation draws from its own; so the default generator (dropout) sees the same draws
  in an interrupted and an uninterrupted run, and a checkpoint's RNG states, loader position
  and counters continue the run exactly.
- Run folder: ``logging.run_dir``, else the config file's folder (``zgrad run`` writes the
  config there). Rank 0 writes metrics.jsonl, config.yaml (if absent) and summary.json.
- No host sync per step for the logged loss: each micro-batch's loss stays on its device
  until the next log or checkpoint (or every ``_FOLD_EVERY`` micro-batches) and is then read
  in one copy, then summed in float64 one by one, as reading it every step would give. On a
  GPU a ``loss.item()`` per step would make the host wait for every step's kernels, so the
  launches of step k+1 could not overlap the kernels of step k.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
import traceback

import numpy as np

from . import checkpoint as ckpt
from .config import Config, load_config, to_dict
from .metrics import MetricsLog, ProgressBar, Throughput, evaluate
from .rank_env import limit_threads, rank_env, resolve_device
from .registry import (build_datasets, build_scheduler, dataset_info, loss_function,
                       optimizer_class)


_FOLD_EVERY = 64   # micro-batch losses held on the device at most (see Note [Training loop])


class Trainer:
    """One rank's run of a Config (Note [Training loop]). ``Trainer(cfg, run_dir).fit()``."""

    def __init__(self, cfg: Config, run_dir: str):
        self.cfg, self.run_dir = cfg, os.path.abspath(run_dir)
        self.rank, self.world_size, self.local_rank, self.local_world_size = rank_env()
        self.step = self.epoch = self.batch_in_epoch = 0
        self._loss_sum, self._loss_n = 0.0, 0   # micro-batch losses since the last log
        self._losses: list = []                  # ... those still on the device (see Note)
        self.device = resolve_device(cfg.train.device, self.local_rank)
        self.ckpt_dir = cfg.checkpoint.dir or os.path.join(self.run_dir, "checkpoints")
        self._owns_group = False
        self._saved_step = None
        self._stop = False

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        """Process group, data, model (DDP), optimizer, scheduler; then resume if asked."""
        import tensor
        cfg = self.cfg
        self._threads = limit_threads(cfg.train.threads, self.local_world_size)
        if self.world_size > 1:
            import runtime.distributed as dist
            if not dist.is_initialized():
                dist.init_process_group(backend=cfg.distributed.backend,
                                        timeout=cfg.distributed.timeout_s)
                self._owns_group = True
        seed = cfg.train.seed
        tensor.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        self._build_data()
        self._build_model()
        self._build_optim()
        self._resume()
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            cfg_path = os.path.join(self.run_dir, "config.yaml")
            if not os.path.exists(cfg_path):
                import yaml
                with open(cfg_path, "w") as f:
                    yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        # lines past the resumed step (or all, on a fresh start) are from an attempt that died
        self.metrics = MetricsLog(
            os.path.join(self.run_dir, "metrics.jsonl") if self.rank == 0 else None,
            resume_step=self.step, tensorboard_dir=os.path.join(self.run_dir, "tensorboard")
            if cfg.logging.tensorboard else None)
        return self

    def _loader(self, ds, train: bool):
        import tensor
        from .data import DataLoader, DistributedSampler
        d, seed = self.cfg.data, self.cfg.train.seed
        shuffle = d.shuffle if train else False
        sampler = None
        if self.world_size > 1:
            sampler = DistributedSampler(ds, num_replicas=self.world_size, rank=self.rank,
                                         shuffle=shuffle, seed=seed,
                                         drop_last=d.drop_last if train else False)
        batch = d.batch_size if train else (d.eval_batch_size or d.batch_size)
        # the loader's own generator: see Note [Training loop] (exact resume)
        return DataLoader(ds, batch_size=batch, shuffle=shuffle if sampler is None else None,
                          sampler=sampler, num_workers=d.num_workers, pin_memory=d.pin_memory,
                          # on a GPU, pinned batches arrive already copied (non_blocking, on a
                          # side stream) to this rank's device
                          pin_memory_device=self.device if d.pin_memory and
                          self.device.startswith("cuda") else "",
                          drop_last=d.drop_last if train else False,
                          generator=tensor.Generator().manual_seed(seed + (0 if train else 1)),
                          persistent_workers=d.num_workers > 0)

    def _build_data(self) -> None:
        import tensor
        from .data import random_split
        d = self.cfg.data
        train, test = build_datasets(d.name, d.args)
        val = None
        if d.val_fraction:
            if not 0 < d.val_fraction < 1:
                raise ValueError(f"data.val_fraction: expected a value in [0, 1), got "
                                 f"{d.val_fraction}")
            n_val = max(1, round(len(train) * d.val_fraction))
            gen = tensor.Generator().manual_seed(self.cfg.train.seed)
            train, val = random_split(train, [len(train) - n_val, n_val], gen)
        self.info = dataset_info(train)
        self.train_loader = self._loader(train, True)
        self.test_loader = self._loader(test, False) if test is not None else None
        # evaluation during training: on the validation split if there is one, else the test
        self.eval_loader = self._loader(val, False) if val is not None else self.test_loader
        self.loss_fn = loss_function(self.cfg.train.loss)
        accum = self.cfg.train.grad_accum_steps
        if accum < 1:
            raise ValueError(f"train.grad_accum_steps: expected an int >= 1, got {accum}")
        self.steps_per_epoch = math.ceil(len(self.train_loader) / accum)
        if self.steps_per_epoch == 0:
            raise ValueError(f"data: the training set gives no batches on rank {self.rank} "
                             f"(batch_size={d.batch_size}, drop_last={d.drop_last}); lower "
                             "data.batch_size")

    def _build_model(self) -> None:
        from .models import build_model
        m = self.cfg.model
        self.module = build_model(m.name, m.args, self.info).to(self.device)
        self.model = self.module
        if self.world_size > 1:
            self.model = self._wrap_ddp(self.module)

    def _wrap_ddp(self, module):
        from runtime.distributed import DistributedDataParallel
        d = self.cfg.distributed
        ddp = DistributedDataParallel(module, bucket_cap_mb=d.bucket_cap_mb,
                                      find_unused_parameters=d.find_unused_parameters,
                                      gradient_as_bucket_view=d.gradient_as_bucket_view,
                                      static_graph=d.static_graph)
        if d.comm_hook:
            from runtime.distributed.algorithms.ddp_comm_hooks import default_hooks
            hooks = {"fp16": default_hooks.fp16_compress_hook,
                     "bf16": default_hooks.bf16_compress_hook}
            if d.comm_hook not in hooks:
                raise ValueError(f"distributed.comm_hook: expected one of {sorted(hooks)} or "
                                 f"null, got {d.comm_hook!r}")
            ddp.register_comm_hook(None, hooks[d.comm_hook])
        return ddp

    def _build_optim(self) -> None:
        o, s = self.cfg.optim, self.cfg.scheduler
        cls = optimizer_class(o.name)
        kwargs = {"lr": o.lr, "weight_decay": o.weight_decay, **o.args}
        try:
            if o.zero and self.world_size > 1:
                from runtime.distributed.optim import ZeroRedundancyOptimizer
                self.optimizer = ZeroRedundancyOptimizer(self.model.parameters(),
                                                         optimizer_class=cls, **kwargs)
            else:
                self.optimizer = cls(self.model.parameters(), **kwargs)
        except TypeError as e:
            raise ValueError(f"optim: cannot construct {cls.__name__} with {kwargs}: {e}. "
                             "Check optim.args in the config.") from None
        if s.interval not in ("step", "epoch"):
            raise ValueError(f"scheduler.interval: expected 'step' or 'epoch', got "
                             f"{s.interval!r}")
        total = self.total_steps if s.interval == "step" else self.total_epochs
        self.scheduler = build_scheduler(s.name, self.optimizer, s.args, total, s.warmup_steps)

    @property
    def total_steps(self) -> int:
        t = self.cfg.train
        return t.max_steps if t.max_steps is not None else t.epochs * self.steps_per_epoch

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    # -- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> bool:
        how = self.cfg.checkpoint.resume
        if how in (None, "none", ""):
            return False
        path = ckpt.find_latest(self.ckpt_dir) if how == "latest" else how
        if path is None:
            return False
        meta = ckpt.load_checkpoint(path, model=self.module, optimizer=self.optimizer,
                                    scheduler=self.scheduler, loader=self.train_loader)
        self.step, self.epoch = meta["step"], meta["epoch"]
        extra = meta["extra"]
        self.batch_in_epoch = extra.get("batch_in_epoch", 0)
        if meta.get("world_size") != self.world_size:
            self.batch_in_epoch = 0   # the position was per rank: restart the epoch
        if self.rank == 0:
            self._loss_sum, self._loss_n = extra.get("loss_sum", 0.0), extra.get("loss_n", 0)
        self._saved_step = self.step
        if self.rank == 0:
            print(f"trainer: resumed from {path} (step {self.step}, epoch {self.epoch})",
                  file=sys.stderr, flush=True)
        return True

    def save(self) -> None:
        """A checkpoint of this step (collective). The loss logged next averages micro-batches
        from before and after it, so their running sum is saved too: reduced over the ranks
        and held by rank 0, in the interrupted and the uninterrupted run alike."""
        c = self.cfg.checkpoint
        sampler = getattr(self.train_loader, "sampler", None)
        loss_sum, loss_n = self._reduce_loss()
        self._loss_sum, self._loss_n = (loss_sum, loss_n) if self.rank == 0 else (0.0, 0)
        ckpt.save_checkpoint(self.ckpt_dir, self.step, model=self.module,
                             optimizer=self.optimizer, scheduler=self.scheduler,
                             loader=self.train_loader, epoch=self.epoch,
                             extra={"batch_in_epoch": self.batch_in_epoch,
                                    "sampler_epoch": getattr(sampler, "epoch", None),
                                    "loss_sum": loss_sum, "loss_n": loss_n},
                             keep_last=c.keep_last)
        self._saved_step = self.step

    # -- the loop ----------------------------------------------------------------------------
    def _done(self) -> bool:
        t = self.cfg.train
        if t.max_steps is not None:
            return self.step >= t.max_steps
        return self.epoch >= t.epochs

    def fit(self) -> dict:
        """Train to the end (epochs or max_steps), evaluate on the test split, write
        summary.json; returns the summary."""
        t0 = time.perf_counter()
        self._meter = Throughput()
        self._samples = 0
        self._bar = ProgressBar(self.total_steps, self.step,
                                self.rank == 0 and self.cfg.logging.progress)
        try:
            while not self._done() and not self._stop:
                self._run_epoch()
        finally:
            self._bar.close()
        train_s = time.perf_counter() - t0
        if self._saved_step != self.step:
            self.save()
        return self._finish(train_s)

    def _run_epoch(self) -> None:
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        n_batches = len(self.train_loader)
        for x, y in self.train_loader:
            self._micro_step(x, y, n_batches)
            if self._stop:
                return
        self.epoch += 1
        self.batch_in_epoch = 0
        if self.scheduler is not None and self.cfg.scheduler.interval == "epoch":
            self.scheduler.step()
        t, c = self.cfg.train, self.cfg.checkpoint
        record = {}
        if t.eval_every_epochs and self.epoch % t.eval_every_epochs == 0:
            record.update(self._eval_record(self.eval_loader))
        if record:
            self.metrics.write({"step": self.step, "epoch": self.epoch, **record})
        if c.every_epochs and self.epoch % c.every_epochs == 0:
            self.save()

    def _micro_step(self, x, y, n_batches: int) -> None:
        accum = self.cfg.train.grad_accum_steps
        i = self.batch_in_epoch
        group_start = i - i % accum
        group_size = min(accum, n_batches - group_start)
        final = i - group_start == group_size - 1
        if i == group_start:
            self.optimizer.zero_grad(set_to_none=True)
        x, y = x.to(self.device), y.to(self.device)
        sync = contextlib.nullcontext() if final or self.model is self.module \
            else self.model.no_sync()
        with sync:   # forward too: DDP decides at forward time whether backward syncs
            loss = self.loss_fn(self.model(x), y)
            (loss * (1.0 / group_size)).backward()
        self._losses.append(loss.detach())   # read at the next log (Note [Training loop])
        self._loss_n += 1
        if len(self._losses) >= _FOLD_EVERY:
            self._fold_losses()
        self._samples += len(y)
        self._meter.add(len(y) * self.world_size)
        self.batch_in_epoch = i + 1
        if final:
            self._optimizer_step()

    def _optimizer_step(self) -> None:
        t, c = self.cfg.train, self.cfg.checkpoint
        if t.clip_grad_norm:
            from tensor.nn.utils import clip_grad_norm_
            clip_grad_norm_(self.module.parameters(), t.clip_grad_norm)
        self.optimizer.step()
        self.step += 1
        if self.scheduler is not None and self.cfg.scheduler.interval == "step":
            self.scheduler.step()
        record = {}
        if t.log_every_steps and self.step % t.log_every_steps == 0:
            record.update(self._train_record())
        else:
            self._bar.update(1)
        if t.eval_every_steps and self.step % t.eval_every_steps == 0:
            record.update(self._eval_record(self.eval_loader))
        if record:
            self.metrics.write({"step": self.step, "epoch": self.epoch, **record})
        if c.every_steps and self.step % c.every_steps == 0:
            self.save()
        if t.max_steps is not None and self.step >= t.max_steps:
            self._stop = True

    def _fold_losses(self) -> None:
        """Add the losses still on the device to the running sum (one copy to the host)."""
        if not self._losses:
            return
        from tensor import backend
        arrays = [t.array.reshape(-1) for t in self._losses]
        host = backend.to_numpy(backend.get_array_module(arrays[0]).concatenate(arrays))
        for v in host:
            self._loss_sum += float(v)
        self._losses = []

    def _reduce_loss(self) -> tuple[float, int]:
        """(sum, count) of the micro-batch losses since the last log, over all ranks."""
        self._fold_losses()
        sums = np.array([self._loss_sum, self._loss_n], np.float64)
        if self.world_size > 1:
            import runtime.distributed as dist
            dist.all_reduce(sums)
        return float(sums[0]), int(sums[1])

    def _train_record(self) -> dict:
        """Loss (mean over micro-batches since the last log, over all ranks), lr, samples/s."""
        loss_sum, loss_n = self._reduce_loss()
        self._loss_sum, self._loss_n = 0.0, 0
        rate = self._meter.read()
        rec = {"loss": loss_sum / max(loss_n, 1),
               "lr": float(self.optimizer.param_groups[0]["lr"]), "samples_per_s": rate}
        self._bar.update(1, loss=f"{rec['loss']:.4f}", samples_s=f"{rate:.0f}")
        return rec

    def _eval_record(self, loader, prefix: str = "eval") -> dict:
        """{prefix_loss, prefix_accuracy} over `loader`'s whole data set (collective)."""
        if loader is None:
            return {}
        self._sync_buffers()
        res = evaluate(self.module, loader, self.loss_fn, self.device)
        rec = {f"{prefix}_loss": res["loss"]}
        if "accuracy" in res:
            rec[f"{prefix}_accuracy"] = res["accuracy"]
        return rec

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics drift per rank between DDP's
        per-forward broadcasts), so every rank evaluates the same model."""
        if self.world_size > 1:
            import runtime.distributed as dist
            for b in self.module.buffers():
                dist.broadcast(b, src=0)

    def _finish(self, train_s: float) -> dict:
        """Evaluate on the test split (the validation split when the data set has no test
        split), write the last metrics line and summary.json, print the result."""
        split = "test" if self.test_loader is not None else "val"
        rec = self._eval_record(self.eval_loader if split == "val" else self.test_loader, split)
        summary = {"step": self.step, "epoch": self.epoch, "world_size": self.world_size,
                   "train_time_s": train_s,
                   "samples_per_s": self._samples * self.world_size / max(train_s, 1e-9),
                   "final_test_accuracy": rec.get("test_accuracy"),
                   "final_test_loss": rec.get("test_loss")}
        if split == "val":
            summary.update(final_val_accuracy=rec.get("val_accuracy"),
                           final_val_loss=rec.get("val_loss"))
        if self.rank == 0:
            self.metrics.write({"step": self.step, "epoch": self.epoch, **rec})
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
            acc, loss = rec.get(f"{split}_accuracy"), rec.get(f"{split}_loss")
            result = (f"final {split} accuracy {acc:.4f} ({split} loss {loss:.4f}, "
                      if acc is not None else f"final {split} loss {loss:.4f} ("
                      if loss is not None else "finished (")
            print(f"trainer: {result}{self.step} steps, {train_s:.1f} s, run folder "
                  f"{self.run_dir})", flush=True)
        return summary

    def close(self) -> None:
        """Close the metrics, leave the process group (if this trainer joined it), lift the
        thread cap."""
        if getattr(self, "metrics", None) is not None:
            self.metrics.close()
        if self._owns_group:
            import runtime.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False
        if getattr(self, "_threads", None) is not None:
            self._threads.restore_original_limits()
            self._threads = None


def run(cfg: Config, run_dir: str) -> dict:
    """Set up and train one rank of `cfg` in `run_dir`; returns the summary."""
    trainer = Trainer(cfg, run_dir)
    try:
        return trainer.setup().fit()
    finally:
        trainer.close()


def main(argv=None) -> int:
    """``python -m runtime.trainer CONFIG [section.key=value ...]``: 0 on success, 1 on error
    (with the traceback on stderr)."""
    p = argparse.ArgumentParser(prog="python -m runtime.trainer",
                                description="Run one rank of a zgrad training config. "
                                "Precedence: schema defaults < YAML < key=value overrides.")
    p.add_argument("config", help="the YAML config; its folder is the run folder unless "
                                  "logging.run_dir says otherwise")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run(cfg, cfg.logging.run_dir or os.path.dirname(os.path.abspath(args.config)))
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
