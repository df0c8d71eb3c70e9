"""A data set for the launcher's kill-and-restart test (``data.name:
tests.launcher.scripts.gated:GatedDigits``): the registry's digits split; while
$ZGRAD_TEST_GATE names a path that exists and this is the group's first launch
(TORCHELASTIC_RESTART_COUNT 0), reading a training sample blocks, so the test can SIGKILL a
worker right after that checkpoint; after the restart it reads freely."""
import os
import time

from runtime.registry import build_datasets


class GatedDigits:
    def __init__(self, train: bool = True):
        self.ds = build_datasets("digits", {})[0 if train else 1]
        self.classes = self.ds.dataset.classes
        first_launch = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        self.gate = os.environ.get("ZGRAD_TEST_GATE") if train and first_launch else None

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        while self.gate and os.path.exists(self.gate):
            time.sleep(0.05)   # the test kills a worker here
        return self.ds[i]
