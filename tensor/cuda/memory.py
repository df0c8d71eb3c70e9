"""GPU memory statistics (torch.cuda.memory_allocated and friends), from CuPy's memory pools.

"Allocated" is what live arrays hold (``MemoryPool.used_bytes``); "reserved" is what the pools
got from the driver (``total_bytes``: allocated plus cached free blocks). Both count CuPy's
default pool and the private pools of live CUDA graphs (tensor.cuda.graphs), as PyTorch counts
its graph pools. Memory taken outside CuPy's pools (cuBLAS workspaces, NCCL buffers, a
user-installed allocator) is not counted; ``mem_get_info`` reports the driver's view.

Peaks are *sampled*: CuPy keeps no high-water mark, and a Python hook on every allocation would
cost more than the allocation itself. The peak is updated whenever any function here or
``tensor.cuda.synchronize()`` runs, so ``max_memory_allocated()`` is the highest value seen at
those calls (read it right after the step whose peak you want, or synchronize at the points that
matter). Without CUDA every statistic is 0 and empty_cache() does nothing, as on a CPU-only
PyTorch build.
"""
from __future__ import annotations

import weakref

from .. import backend
from ._util import available, device_index, require

_peaks: dict = {}                  # device index -> [peak allocated, peak reserved]
_graph_pools = weakref.WeakSet()   # graphs.py's pool tokens (cupy's MemoryPool takes no weakref)


def _pools():
    return [backend.cupy.get_default_memory_pool(), *[p.mempool for p in list(_graph_pools)]]


def _sample(device, what: str):
    """(allocated, reserved) bytes on `device` now; updates the sampled peaks."""
    cp = backend.cupy
    idx = device_index(device, what)
    with cp.cuda.Device(idx):   # a MemoryPool answers for the current device
        used = total = 0
        for pool in _pools():
            used += pool.used_bytes()
            total += pool.total_bytes()
    peak = _peaks.setdefault(idx, [0, 0])
    peak[0] = max(peak[0], used)
    peak[1] = max(peak[1], total)
    return used, total, peak


def sample_peaks(device=None) -> None:
    """Update the sampled peaks now (tensor.cuda.synchronize() calls it)."""
    if available():
        _sample(device, "synchronize")


def memory_allocated(device=None) -> int:
    """Bytes held by live arrays on `device` (the current GPU by default)."""
    return _sample(device, "memory_allocated")[0] if available() else 0


def max_memory_allocated(device=None) -> int:
    """The highest memory_allocated() sampled since the start or reset_peak_memory_stats()."""
    return _sample(device, "max_memory_allocated")[2][0] if available() else 0


def memory_reserved(device=None) -> int:
    """Bytes the memory pools hold from the driver on `device` (allocated + cached)."""
    return _sample(device, "memory_reserved")[1] if available() else 0


def max_memory_reserved(device=None) -> int:
    """The highest memory_reserved() sampled since the start or reset_peak_memory_stats()."""
    return _sample(device, "max_memory_reserved")[2][1] if available() else 0


def reset_peak_memory_stats(device=None) -> None:
    """Restart the sampled peaks from the current values."""
    if not available():
        return
    used, total, peak = _sample(device, "reset_peak_memory_stats")
    peak[0], peak[1] = used, total


reset_max_memory_allocated = reset_peak_memory_stats


def memory_stats(device=None) -> dict:
    """A subset of torch.cuda.memory_stats(), with its key names ({} without CUDA)."""
    if not available():
        return {}
    used, total, peak = _sample(device, "memory_stats")
    return {"allocated_bytes.all.current": used, "allocated_bytes.all.peak": peak[0],
            "reserved_bytes.all.current": total, "reserved_bytes.all.peak": peak[1]}


def empty_cache() -> None:
    """Give the default pool's cached free blocks back to the driver (other processes can then
    use them). Graph pools keep theirs: a captured graph may use those addresses."""
    if not available():
        return
    from .graphs import _graph_in_capture
    cp = backend.cupy
    if _graph_in_capture() is not None:
        raise RuntimeError("tensor.cuda.empty_cache: called during CUDA graph capture; freeing "
                           "device memory is not allowed then. Call it before or after capture.")
    sample_peaks()
    cp.get_default_memory_pool().free_all_blocks()


def mem_get_info(device=None) -> tuple:
    """(free, total) bytes of `device` as the driver sees them (all processes, all allocators)."""
    cp = require("mem_get_info")
    with cp.cuda.Device(device_index(device, "mem_get_info")):
        free, total = cp.cuda.runtime.memGetInfo()
    return int(free), int(total)
