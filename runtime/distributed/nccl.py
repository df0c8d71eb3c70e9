"""The nccl backend: collectives on CuPy arrays through CuPy's NCCL bindings.

Rank 0 of the group makes the NCCL unique id and passes it through the store (the id is 128
bytes, sent as msgpack); every member builds a ``cupy.cuda.nccl.NcclCommunicator``. NCCL runs
the collective on a stream of this communicator; a synchronous call waits for the stream, an
async one returns a Work that completes when a background thread has seen the stream's event.
The zmq group stays underneath for CPU arrays and the object collectives (as PyTorch's
default group holds gloo and nccl). NCCL needs one GPU per rank: rank r uses device
LOCAL_RANK mod device count.
"""
from __future__ import annotations

import os
import threading

from tensor import backend

from . import wire
from .process_group import Work

_NCCL_OPS = {"SUM": "NCCL_SUM", "AVG": "NCCL_SUM", "MAX": "NCCL_MAX", "MIN": "NCCL_MIN",
             "PRODUCT": "NCCL_PROD"}
_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8",
               "int8": "NCCL_INT8", "uint32": "NCCL_UINT32", "uint64": "NCCL_UINT64"}


def attach_nccl(st, pg, required: bool):
    """Give `pg` an NCCL communicator (pg.nccl) when CuPy and a GPU are present."""
    if not backend.cuda_is_available():
        if required:
            raise RuntimeError("init_process_group: backend='nccl' needs CuPy and a CUDA GPU; "
                               "install zgrad[gpu] or use backend='zmq'.")
        return
    try:
        from cupy.cuda import nccl  # noqa: F401
    except Exception as e:
        if required:
            raise RuntimeError(f"init_process_group: backend='nccl' but CuPy has no NCCL ({e}).")
        return
    pg.nccl = NcclComm(st, pg)


class NcclComm:
    """One NCCL communicator for the members of a group."""

    def __init__(self, st, pg):
        from cupy.cuda import nccl
        cupy = backend.cupy
        self.nccl, self.cupy, self.pg = nccl, cupy, pg
        local_rank = int(os.environ.get("LOCAL_RANK", st.rank))
        self.device = cupy.cuda.Device(local_rank % cupy.cuda.runtime.getDeviceCount())
        key = f"g{pg.gid}/nccl_id"
        if pg.rank() == 0:
            uid = nccl.get_unique_id()
            st.store.set(key, wire.packb(list(uid)))
        else:
            uid = tuple(wire.unpackb(st.store.get(key, pg.timeout_s)))
        with self.device:
            self.comm = nccl.NcclCommunicator(pg.size(), uid, pg.rank())
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self._lock = threading.Lock()

    def _dtype(self, x):
        name = _NCCL_TYPES.get(x.dtype.name)
        if name is None:
            raise TypeError(f"nccl: dtype {x.dtype} is not supported by NCCL; use one of "
                            f"{sorted(_NCCL_TYPES)}")
        return getattr(self.nccl, name)

    def _launch(self, what, fn, x_list, async_op, post=None):
        for x in x_list:
            if not x.flags.c_contiguous:
                raise ValueError(f"{what}: NCCL needs C-contiguous arrays; call .contiguous()")
        work = Work(what)
        with self._lock, self.device:
            # order after the producer of x (the current stream), then run on our stream
            self.stream.wait_event(self.cupy.cuda.get_current_stream().record())
            fn(self.stream.ptr)
            if post is not None:
                with self.stream:
                    post()
            done = self.stream.record()
        if not async_op:
            done.synchronize()
            work._finish()
            return None
        threading.Thread(target=lambda: (done.synchronize(), work._finish()),
                         daemon=True).start()
        return work

    def all_reduce(self, x, op, async_op):
        n = self.pg.size()
        return self._launch("all_reduce", lambda s: self.comm.allReduce(
            x.data.ptr, x.data.ptr, x.size, self._dtype(x),
            getattr(self.nccl, _NCCL_OPS[op]), s), [x], async_op,
            post=(lambda: x.__itruediv__(n)) if op == "AVG" else None)

    def broadcast(self, x, root, async_op):
        return self._launch("broadcast", lambda s: self.comm.bcast(
            x.data.ptr, x.size, self._dtype(x), root, s), [x], async_op)

    def reduce(self, x, op, root, async_op):
        n = self.pg.size()
        post = (lambda: x.__itruediv__(n)) if op == "AVG" and self.pg.rank() == root else None
        return self._launch("reduce", lambda s: self.comm.reduce(
            x.data.ptr, x.data.ptr, x.size, self._dtype(x), getattr(self.nccl, _NCCL_OPS[op]),
            root, s), [x], async_op, post=post)

    def all_gather(self, out, x, async_op):
        return self._launch("all_gather_into_tensor", lambda s: self.comm.allGather(
            x.data.ptr, out.data.ptr, x.size, self._dtype(x), s), [out, x], async_op)

    def reduce_scatter(self, out, x, op, async_op):
        n = self.pg.size()
        return self._launch("reduce_scatter_tensor", lambda s: self.comm.reduceScatter(
            x.data.ptr, out.data.ptr, out.size, self._dtype(x),
            getattr(self.nccl, _NCCL_OPS[op]), s), [out, x], async_op,
            post=(lambda: out.__itruediv__(n)) if op == "AVG" else None)
