"""``tensor.cuda``: the torch.cuda namespace, on CuPy.

Device queries and selection (here), streams and events (``streams.py``), memory statistics
(``memory.py``), CUDA graphs (``graphs.py``) and the fused kernels (``tensor.cuda.kernels``);
everything that touches CuPy goes through ``tensor.backend.cupy``. Without CuPy or a GPU the
queries answer as torch.cuda does on a CPU-only build (is_available() is False,
device_count() is 0, memory statistics are 0) and anything that needs a device raises a
RuntimeError that says so and what to do.
"""
from __future__ import annotations

from .. import backend
from ._util import available as _available
from ._util import device_index as _device_index
from ._util import require as _require
from ._graphed import make_graphed_callables  # noqa: F401
from .graphs import CUDAGraph, graph, graph_pool_handle, is_current_stream_capturing  # noqa
from .memory import (empty_cache, max_memory_allocated, max_memory_reserved,  # noqa: F401
                     mem_get_info, memory_allocated, memory_reserved, memory_stats,
                     reset_max_memory_allocated, reset_peak_memory_stats)
from .streams import (Event, Stream, StreamContext, current_stream, default_stream,  # noqa
                      set_stream, stream)


def is_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    return _available()


def is_initialized() -> bool:
    """True when a GPU is usable (CuPy initialises CUDA on first use; there is no separate
    lazy-init step to wait for)."""
    return _available()


def init() -> None:
    """No-op with a GPU (as torch.cuda.init once initialised); raises without one."""
    _require("init")


def device_count() -> int:
    """Number of visible GPUs (0 without CuPy or a GPU)."""
    if not _available():
        return 0
    return backend.cupy.cuda.runtime.getDeviceCount()


def current_device() -> int:
    """Index of the current GPU."""
    return _require("current_device").cuda.runtime.getDevice()


def set_device(device) -> None:
    """Make `device` (int, 'cuda:N', tensor.device) the current GPU for this thread."""
    cp = _require("set_device")
    if isinstance(device, int) and device < 0:
        return   # torch: a negative index is a no-op
    cp.cuda.Device(_device_index(device, "set_device")).use()


class device:
    """Context manager that makes `device` the current GPU inside the block (torch.cuda.device);
    None or a negative index does nothing."""

    def __init__(self, device):
        self.idx = -1 if device is None or (isinstance(device, int) and device < 0) \
            else _device_index(device, "device")
        self._ctx = None

    def __enter__(self):
        if self.idx >= 0:
            self._ctx = backend.cupy.cuda.Device(self.idx)
            self._ctx.__enter__()

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None
        return False


class device_of(device):
    """Context manager that makes the GPU of tensor `obj` current (nothing for a CPU tensor)."""

    def __init__(self, obj):
        dev = obj.device
        super().__init__(dev.index if dev.type == "cuda" and dev.index is not None else
                         (None if dev.type == "cpu" else _device_index(dev, "device_of")))


if backend.cupy is not None:
    OutOfMemoryError = backend.cupy.cuda.memory.OutOfMemoryError
else:
    class OutOfMemoryError(MemoryError):
        """What a failed GPU allocation raises (CuPy's OutOfMemoryError when CuPy is there;
        unlike torch's, it derives from MemoryError, as CuPy's does)."""


def is_bf16_supported(including_emulation: bool = True) -> bool:
    """True on GPUs with native bfloat16 (compute capability 8.0 and newer); False without CUDA."""
    if not _available():
        return False
    return get_device_capability()[0] >= 8


def ipc_collect() -> None:
    """No-op: CUDA IPC mappings are released by shm's lease protocol, not by the allocator."""


class _DeviceProperties:
    """What get_device_properties() returns: torch's attribute names."""

    def __init__(self, props: dict, idx: int):
        name = props.get("name", b"")
        self.name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        self.total_memory = int(props.get("totalGlobalMem", 0))
        self.multi_processor_count = int(props.get("multiProcessorCount", 0))
        self.major = int(props.get("major", 0))
        self.minor = int(props.get("minor", 0))
        self.L2_cache_size = int(props.get("l2CacheSize", 0))
        self.is_integrated = bool(props.get("integrated", 0))
        self.index = idx

    def __repr__(self):
        return (f"_CudaDeviceProperties(name='{self.name}', major={self.major}, "
                f"minor={self.minor}, total_memory={self.total_memory // 2 ** 20}MB, "
                f"multi_processor_count={self.multi_processor_count})")


def get_device_properties(device=None) -> _DeviceProperties:
    """Name, total_memory (bytes), multi_processor_count, major/minor compute capability."""
    cp = _require("get_device_properties")
    idx = _device_index(device, "get_device_properties")
    return _DeviceProperties(cp.cuda.runtime.getDeviceProperties(idx), idx)


def get_device_name(device=None) -> str:
    return get_device_properties(device).name


def get_device_capability(device=None) -> tuple:
    """(major, minor) compute capability, e.g. (9, 0) on an H100."""
    p = get_device_properties(device)
    return p.major, p.minor


def synchronize(device=None) -> None:
    """Wait until all work queued on `device` (the current GPU by default), on every stream, is
    done; then report device-side errors flagged by the kernels (deferred bounds checks), if the
    backend keeps such flags, and sample the memory peaks (see tensor/cuda/memory.py)."""
    cp = _require("synchronize")
    from . import memory
    with cp.cuda.Device(_device_index(device, "synchronize")):
        cp.cuda.Device().synchronize()
        check = getattr(backend, "check_device_errors", None)
        if check is not None:
            check()
        memory.sample_peaks()


def manual_seed(seed: int) -> None:
    """Seed the CUDA random stream of the default generator (CPU draws are unaffected, as in
    torch.cuda.manual_seed). Safe to call without CUDA: then it does nothing but remember it."""
    from .. import random as _random
    _random.default_generator.manual_seed_cuda(seed)


manual_seed_all = manual_seed   # one generator serves every GPU of a process


def seed() -> None:
    """Seed the CUDA random stream from OS entropy."""
    import numpy as np
    manual_seed(int(np.random.SeedSequence().entropy) & ((1 << 63) - 1))


seed_all = seed


def initial_seed() -> int:
    from .. import random as _random
    return _random.default_generator.initial_seed_cuda()


def get_rng_state(device="cuda"):
    """The CUDA random stream's state (a uint8 tensor on the CPU), as torch.cuda.get_rng_state."""
    from .. import random as _random
    return _random.default_generator.get_state_cuda()


def set_rng_state(new_state, device="cuda") -> None:
    """Restore the CUDA random stream from get_rng_state()."""
    from .. import random as _random
    _random.default_generator.set_state_cuda(new_state)


def get_rng_state_all() -> list:
    return [get_rng_state()]


def set_rng_state_all(new_states) -> None:
    for s in new_states:
        set_rng_state(s)
