"""Memory: fork()ed loader workers read a large numpy dataset without copying it.

The measure is each worker's USS, Private_Clean + Private_Dirty from /proc/<pid>/smaps_rollup:
the pages mapped by that process alone. After fork the dataset's pages are shared copy-on-write
with the main process (they count under Shared_*, and in RSS, of both from the start, so RSS
cannot show a copy). A page becomes private to the worker only when the worker copies it, which
is exactly the "copy-on-read" growth PyTorch users meet with datasets of Python objects. The
control case writes to each row it reads, so its pages are copied: it proves the measure sees
copies of this size.
"""
import gc

import numpy as np
import pytest

from runtime.data import DataLoader, Dataset
from tests.helpers import assert_no_new_shm, shm_listing

ROWS, ROW_FLOATS = 2000, 25_000          # 2000 x 100 KB = 200 MB of float32
MB = 1 << 20


class BigArray(Dataset):
    def __init__(self, data, write=False):
        self.data, self.write = data, write

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        row = self.data[i]
        if self.write:
            row += 0          # touches every page of the row: copy-on-write
        return float(row.sum())


def _uss_bytes(pid):
    kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb += int(line.split()[1])
    return kb * 1024


def _worker_growth(data, write):
    loader = DataLoader(BigArray(data, write), batch_size=50, num_workers=2,
                        persistent_workers=True)
    it = iter(loader)
    total = float(next(it).sum()) + float(next(it).sum())   # both workers are up and warm
    pids = [p.pid for p in it._w.procs]
    start = {pid: _uss_bytes(pid) for pid in pids}
    for batch in it:
        total += float(batch.sum())
    end = {pid: _uss_bytes(pid) for pid in pids}
    del it, loader, batch
    gc.collect()
    return total, max(end[p] - start[p] for p in pids)


def test_workers_share_a_large_numpy_dataset_without_copying():
    try:
        open("/proc/self/smaps_rollup").close()
    except OSError:
        pytest.skip("needs /proc/<pid>/smaps_rollup (Linux >= 4.14)")
    before = shm_listing()
    data = np.ones((ROWS, ROW_FLOATS), np.float32)   # written: resident before the fork
    total, growth = _worker_growth(data, write=False)
    assert total == ROWS * ROW_FLOATS
    # each worker read ~100 MB of the array; its private memory may grow a little (batches,
    # allocator), nowhere near a copy
    assert growth < 24 * MB, f"a worker's private memory grew by {growth / MB:.0f} MB"
    _, control = _worker_growth(data, write=True)
    assert control > 60 * MB, (f"control: writing the rows grew a worker by only "
                               f"{control / MB:.0f} MB; the measure does not see copies")
    del data
    assert_no_new_shm(before)
