"""What one rank learns from its environment: its place in the job, its threads, its device.

The variables are torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), which
``zgrad run``, torchrun and the tests set alike; without them the process is a job of one.
"""
from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    try:
        return default if v in (None, "") else int(v)
    except ValueError:
        raise ValueError(f"trainer: ${name} must be an int, got {v!r}") from None


def rank_env() -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) from the environment."""
    rank, world_size = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"trainer: expected 0 <= $RANK < $WORLD_SIZE, got RANK={rank}, "
                         f"WORLD_SIZE={world_size}")
    return rank, world_size, _env_int("LOCAL_RANK", rank), \
        _env_int("LOCAL_WORLD_SIZE", world_size)


def default_threads(local_world_size: int) -> int:
    """BLAS threads per rank when train.threads is null: the cores this process may use that
    other work is not already using (cores minus the 1-minute load average, at least 1),
    divided by the ranks on this host. Busy cores count because BLAS threads spin while they
    wait for each other: on a 2-core host that other jobs load, a digits MLP step with 2
    threads took 10x as long as with 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):   # not on every platform
        load = 0.0
    idle = max(1, min(cores, int(cores - load + 0.5)))
    return max(1, idle // max(1, local_world_size))


def limit_threads(threads: int | None, local_world_size: int):
    """Cap this rank's BLAS threads at `threads`, else at default_threads(), so that N ranks
    (or other jobs) and their threads do not thrash the cores. Returns threadpoolctl's limiter
    (``.restore_original_limits()``), or None without threadpoolctl (it comes with
    scikit-learn; BLAS then keeps its default)."""
    if threads is None:
        threads = default_threads(local_world_size)
    if int(threads) < 1:
        raise ValueError(f"train.threads: expected an int >= 1 or null, got {threads}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=int(threads), user_api="blas")


def resolve_device(name: str, local_rank: int) -> str:
    """train.device as a device string, made CuPy's current device when it is a GPU.

    "cuda" is this rank's GPU: the index in $ZGRAD_DEVICE (``zgrad run`` sets cuda:<local
    rank mod GPUs>), else LOCAL_RANK mod the device count; "cuda:N" is GPU N; "auto" is
    "cuda" when CuPy sees a GPU, else "cpu". The GPU is selected for the process (as
    ``torch.cuda.set_device`` in a torchrun script) before the model or the process group is
    built, so arrays made without a device, NCCL's communicator and the staging streams all
    use it."""
    from tensor import backend
    if name == "auto":
        name = "cuda" if backend.cuda_is_available() else "cpu"
    if name == "cpu":
        return name
    if not backend.cuda_is_available():
        why = "CuPy is not installed" if backend.cupy is None else "no GPU is visible"
        raise RuntimeError(f"train.device: {name!r} needs CuPy and a CUDA GPU, and {why}"
                           ". Install zgrad[gpu] on a GPU machine, check CUDA_VISIBLE_DEVICES, "
                           "or set train.device: cpu (or auto).")
    count = backend.cupy.cuda.runtime.getDeviceCount()
    if name == "cuda":
        spec = os.environ.get("ZGRAD_DEVICE", "")
        index = int(spec[5:]) if spec.startswith("cuda:") else local_rank
        index %= count
    else:
        index = int(name.partition(":")[2])
        if not 0 <= index < count:
            raise ValueError(f"train.device: {name!r} but this process sees {count} GPU(s) "
                             f"(cuda:0..cuda:{count - 1}); check CUDA_VISIBLE_DEVICES")
    backend.cupy.cuda.Device(index).use()
    return f"cuda:{index}"
