"""TensorBoard event files for a run (``logging.tensorboard: true``), through tensorboardX.

    tb = TensorBoardWriter(run_dir)          # RUN_DIR/tensorboard/
    tb.add_scalars(step, {"loss": 0.3, "eval_accuracy": 0.97})
    tb.close()

Then ``tensorboard --logdir RUN_DIR/tensorboard``. tensorboardX is an optional extra
(``pip install 'zgrad[tensorboard]'``); only rank 0 writes.
"""
from __future__ import annotations

import math
import os
import numbers


class TensorBoardWriter:
    """Scalars of one run as TensorBoard event files under ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: str, subdir: str = "tensorboard"):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("logging.tensorboard: true needs tensorboardX, which is not "
                              "installed: pip install 'zgrad[tensorboard]' (or pip install "
                              "tensorboardX), or set logging.tensorboard=false") from None
        self.log_dir = os.path.join(run_dir, subdir)
        self._writer = SummaryWriter(logdir=self.log_dir)

    def add_scalars(self, step: int, values: dict) -> None:
        """One point per numeric value (``step``/``epoch`` and non-numbers are skipped).

        Keys keep their names as tags, with ``eval_x``/``test_x`` grouped as ``eval/x``,
        ``test/x`` so TensorBoard shows them side by side.
        """
        for key, value in values.items():
            if key in ("step", "epoch") or isinstance(value, bool) or \
                    not isinstance(value, numbers.Real) or math.isnan(float(value)):
                continue
            prefix, _, rest = key.partition("_")
            tag = f"{prefix}/{rest}" if prefix in ("eval", "test", "train") and rest else \
                f"train/{key}"
            self._writer.add_scalar(tag, float(value), global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
