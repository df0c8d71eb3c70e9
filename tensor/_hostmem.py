"""Host memory: keep freed array memory in the process instead of handing it back to the OS.

Note [Host allocator]
~~~~~~~~~~~~~~~~~~~~~
numpy takes every array's memory from the C library's malloc. glibc serves a block above
its mmap threshold (128 KiB at first, adjusted upwards as such blocks are freed) with a fresh
mmap and returns it with munmap on free, and it gives the top of the heap back (trims it)
once more than the trim threshold is free there. A training step allocates and frees
activations, columns and gradients of a few hundred KiB to a few MiB each, so glibc keeps
handing pages back and faulting fresh, zeroed ones in, step after step. Page faults are
expensive in a virtual machine: a LeNet training step (bench_cnn_step.py, 1 thread, CPU time)
took 11-18 ms with glibc's defaults and 7-8 ms with the thresholds below.

So when tensor is imported (this module tunes on import), on glibc only, zgrad raises the mmap threshold to MMAP_THRESHOLD (blocks
below it come from the heap and are reused) and the trim threshold to TRIM_THRESHOLD
(at most that much free heap is kept). The cost: a process keeps up to TRIM_THRESHOLD of freed
memory mapped, and the heap can fragment; freed arrays larger than MMAP_THRESHOLD still go
back to the OS at once. PyTorch's CPU allocator has the same problem; the settings are the
process's, so a PyTorch benchmark run in the same process gains as well.

Set ZGRAD_HOST_ALLOC_TUNE=0 to leave glibc's defaults; an explicit MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ or GLIBC_TUNABLES in the environment also wins.
"""
from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 64 << 20   # bytes; blocks below it are served from (and kept in) the heap
TRIM_THRESHOLD = 512 << 20  # bytes of free heap kept before glibc trims
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES")

tuned = False  # whether tune_host_allocator changed glibc's settings in this process


def tune_host_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds (Note [Host allocator]); True if they were set."""
    global tuned
    if os.environ.get("ZGRAD_HOST_ALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return tuned


tune_host_allocator()  # on import, before the first training arrays
