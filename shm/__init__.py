"""zgrad's shared memory: numpy/CuPy arrays that several processes see without copying.

The layer under ``tensor`` (it knows arrays, never Tensors)::

    import shm
    a = shm.zeros((1024, 1024))          # numpy array in a /dev/shm segment
    b = shm.share(np.arange(10))          # shared copy (or the array itself if already shared)
    shm.is_shared(a[::2].T)               # True: views are shared too
    q = shm.multiprocessing.Queue()       # torch.multiprocessing-like API
    q.put(a[1:])                          # travels as a small handle; the child sees a's memory

Segments are named ``zgrad_<jobid>_...``; who removes them and when is Note [Shm lifetime] in
``shm/segment.py``. ``shm.sweep(job_id)`` or ``python -m shm sweep`` removes a job's leftovers.
"""
from .segment import (OutOfSharedMemoryError, job_id, shm_free_bytes, sweep)
from .segment import Segment
from .manager import pid_alive
from .arrays import empty, zeros, share, is_shared, handle, from_handle
from . import reductions as _reductions

_reductions.init_reductions()
job_id()  # fix the job id now, so children (fork or spawn) inherit it through the environment

__all__ = ["Segment", "pid_alive", "OutOfSharedMemoryError", "job_id", "empty", "zeros", "share",
           "is_shared", "handle", "from_handle", "sweep", "shm_free_bytes"]


def __getattr__(name):  # `shm.multiprocessing` without importing it eagerly
    if name == "multiprocessing":
        import importlib

        return importlib.import_module(".multiprocessing", __name__)
    raise AttributeError(f"module 'shm' has no attribute {name!r}")
