"""The nccl backend: every collective and point-to-point call on CuPy arrays, through CuPy's
NCCL bindings (``cupy.cuda.nccl``, CuPy 14's API).

Rank 0 of the group makes the NCCL unique id and passes it through the store (CuPy 14 gives
128 bytes; older CuPy a tuple of 128 signed chars); every member builds a
``NcclCommunicator`` on its device. Calls run on the communicator's stream with PyTorch's
Work semantics (Note [CUDA work] in _cuda.py): no host thread and no host wait per call.
The zmq group stays underneath for CPU arrays and the object collectives (as PyTorch's
default group holds gloo and nccl). NCCL needs one GPU per rank (it refuses two ranks of one
communicator on one GPU). A rank's device: ``device_id`` of init_process_group, else
$ZGRAD_DEVICE (set by ``zgrad run``), else LOCAL_RANK mod the device count.

What NCCL has no call for is built from its calls, as PyTorch's ProcessGroupNCCL does: the
list all_gather and reduce_scatter through one flat buffer, all_to_all(_single), gather and
scatter as grouped send/recv (``groupStart``/``groupEnd``), barrier as an all_reduce of one
element (its wait blocks the host, as PyTorch's). NCCL matches point-to-point messages by
order per pair of ranks: tags are ignored and a receive needs its source.
"""
from __future__ import annotations

import logging
import os
import threading

from tensor import backend

from . import _cuda
from .work import Work

_NCCL_OPS = {"SUM": "NCCL_SUM", "AVG": "NCCL_AVG", "MAX": "NCCL_MAX", "MIN": "NCCL_MIN",
             "PRODUCT": "NCCL_PROD"}
# dtype -> (NCCL type, elements per array element): bool as uint8, complex as float pairs
_NCCL_TYPES = {"float16": ("NCCL_FLOAT16", 1), "float32": ("NCCL_FLOAT32", 1),
               "float64": ("NCCL_FLOAT64", 1), "bfloat16": ("NCCL_BFLOAT16", 1),
               "int8": ("NCCL_INT8", 1), "uint8": ("NCCL_UINT8", 1), "bool": ("NCCL_UINT8", 1),
               "int32": ("NCCL_INT32", 1), "uint32": ("NCCL_UINT32", 1),
               "int64": ("NCCL_INT64", 1), "uint64": ("NCCL_UINT64", 1),
               "complex64": ("NCCL_FLOAT32", 2), "complex128": ("NCCL_FLOAT64", 2)}
_AVG_MIN_VERSION = 21000   # ncclAvg came with NCCL 2.10
_log = logging.getLogger("runtime.distributed")


def attach_nccl(st, pg, required: bool, device_id=None):
    """Give `pg` NCCL for CuPy arrays when CuPy, NCCL and a GPU are present.

    backend="nccl" (required) builds the communicator now, so a missing NCCL or two ranks on
    one GPU fail at init_process_group. backend="auto" builds it at the group's first call
    on CuPy arrays (as PyTorch creates NCCL communicators lazily): a CPU job on a GPU machine
    creates no CUDA context and no communicator. Every rank makes that first call in the
    same order, so every rank builds it at the same point."""
    if not backend.cuda_is_available():
        if required:
            raise RuntimeError("init_process_group: backend='nccl' needs CuPy and a CUDA GPU, "
                               "and none was found; install zgrad[gpu] on a GPU machine or "
                               "use backend='zmq'.")
        return
    try:
        from cupy.cuda import nccl
        nccl.NcclCommunicator  # noqa: B018 - raises when libnccl did not load
    except Exception as e:
        if required:
            raise RuntimeError(f"init_process_group: backend='nccl' but CuPy cannot load NCCL "
                               f"({e}); pip install nvidia-nccl-cu13 (or -cu12) or use "
                               "backend='zmq'.") from e
        return
    if required:
        _setup(st, pg, True, device_id)
        pg.nccl_barrier = True
    else:
        pg.nccl_lazy = lambda: _setup(st, pg, False, device_id)


def _setup(st, pg, required: bool, device_id):
    """Build pg.nccl, unless ranks share a GPU (an error when NCCL is required)."""
    cupy = backend.cupy
    device = cupy.cuda.Device(_device_index(device_id, cupy.cuda.runtime.getDeviceCount()))
    shared = _shared_gpus(st, pg, device)
    if shared:
        if required:
            raise RuntimeError(f"init_process_group: backend='nccl' but {shared}; NCCL needs one "
                               "GPU per rank. Use one process per GPU (zgrad run gives local "
                               "rank i the GPU cuda:i), or backend='zmq', which may share one.")
        _log.info("init_process_group: %s; NCCL needs one GPU per rank, so CuPy arrays take "
                  "the zmq backend (staged through pinned host memory)", shared)
        return
    pg.nccl = NcclComm(st, pg, device)


def _shared_gpus(st, pg, device) -> str:
    """'' when every rank of `pg` has its own GPU, else which ranks share one (every rank
    learns the same, through the store, so all take the same backend)."""
    me = f"{st.machine}/{device.pci_bus_id}"
    st.store.set(f"g{pg.gid}/nccl_gpu/{pg.rank()}", me.encode())
    gpus = [v.decode() for v in st.store.multi_get(
        [f"g{pg.gid}/nccl_gpu/{r}" for r in range(pg.size())], pg.timeout_s,
        f"nccl setup of group {pg.gid}")]
    for r, g in enumerate(gpus):
        first = gpus.index(g)
        if first != r:
            return (f"ranks {pg.ranks[first]} and {pg.ranks[r]} are on one GPU "
                    f"({g.split('/', 1)[1]})")
    return ""


def _device_index(device_id, count: int) -> int:
    """The GPU of this rank (see the module docstring)."""
    if device_id is not None:
        idx = getattr(device_id, "index", device_id)
        return int(0 if idx is None else idx)
    spec = os.environ.get("ZGRAD_DEVICE", "")
    if spec.startswith("cuda:"):
        return int(spec[5:]) % count
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) % count


def _uid_to_bytes(uid) -> bytes:
    return bytes(uid) if isinstance(uid, (bytes, bytearray)) else bytes(b & 0xFF for b in uid)


class CudaWork(Work):
    """A call queued on the communicator's stream (Note [CUDA work]): wait() orders the
    caller's current stream after it, synchronize() blocks the host."""

    def __init__(self, what: str, event, device_id: int, keep, comm, result=None,
                 blocking: bool = False):
        super().__init__(what)
        self._event, self._device_id, self._keep, self._comm = event, device_id, keep, comm
        self._result = result
        self._blocking = blocking   # barrier: wait() blocks the host, as PyTorch's
        self._done.set()            # no host part

    def is_completed(self) -> bool:
        if _cuda.event_done(self._event):
            self._keep = None
            return True
        return False

    def is_success(self) -> bool:
        return self.is_completed()

    def wait(self, timeout=None) -> bool:
        if hasattr(timeout, "total_seconds"):
            timeout = timeout.total_seconds()
        if self._blocking:
            self.synchronize(timeout)
        else:
            _cuda.stream_wait(self._event, self._device_id)
        self._keep = None   # later work on the current stream is ordered after the call
        return True

    def synchronize(self, timeout=None) -> None:
        if hasattr(timeout, "total_seconds"):
            timeout = timeout.total_seconds()
        _cuda.wait_event_host(self._event, self._comm.pg.timeout_s if timeout is None
                              else timeout, self.what, self._comm.check)
        self._keep = None


class NcclComm:
    """One NCCL communicator for the members of a group, with its stream."""

    def __init__(self, st, pg, device):
        from cupy.cuda import nccl
        cupy = backend.cupy
        self.nccl, self.cupy, self.pg, self.device = nccl, cupy, pg, device
        key = f"g{pg.gid}/nccl_id"
        if pg.rank() == 0:
            uid = nccl.get_unique_id()
            st.store.set(key, _uid_to_bytes(uid))
        else:
            uid = bytes(st.store.get(key, pg.timeout_s))
        with self.cupy.cuda.Device(self.device.id):
            try:
                self.comm = nccl.NcclCommunicator(pg.size(), _uid_to_bytes(uid), pg.rank())
            except TypeError:   # CuPy < 14 takes the id as a tuple of signed chars
                self.comm = nccl.NcclCommunicator(
                    pg.size(), tuple(b - 256 if b > 127 else b for b in _uid_to_bytes(uid)),
                    pg.rank())
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self.has_avg = hasattr(nccl, "NCCL_AVG") and nccl.get_version() >= _AVG_MIN_VERSION
        self._lock = threading.Lock()

    def __repr__(self):
        return f"NcclComm(group={self.pg.gid}, device={self.device.id}, size={self.pg.size()})"

    def check(self):
        """Raise the communicator's asynchronous error, if any."""
        self.comm.check_async_error()

    # -- plumbing --------------------------------------------------------------------------

    def _type(self, x, what: str):
        entry = _NCCL_TYPES.get(x.dtype.name)
        if entry is None:
            raise TypeError(f"{what}: dtype {x.dtype} is not supported by NCCL; use one of "
                            f"{sorted(_NCCL_TYPES)}")
        return getattr(self.nccl, entry[0]), entry[1]

    def _args(self, x, what: str):
        """(pointer, count, NCCL type) of array x."""
        t, k = self._type(x, what)
        return x.data.ptr, x.size * k, t

    def _op(self, op: str, x, what: str):
        if x.dtype.kind == "c" and op not in ("SUM", "AVG"):
            raise TypeError(f"{what}: ReduceOp.{op} is not defined for complex tensors; "
                            "use SUM or AVG")
        if op == "AVG" and not self.has_avg:
            return self.nccl.NCCL_SUM
        return getattr(self.nccl, _NCCL_OPS[op])

    def _check(self, arrays, what: str):
        for a in arrays:
            if not a.flags.c_contiguous:
                raise ValueError(f"{what}: NCCL needs C-contiguous arrays, got one of shape "
                                 f"{tuple(a.shape)} with strides {a.strides}; call "
                                 ".contiguous() (or cupy.ascontiguousarray) first")
            if a.device.id != self.device.id:
                raise ValueError(f"{what}: the group's NCCL communicator is on cuda:"
                                 f"{self.device.id} but a tensor is on cuda:{a.device.id}. "
                                 "Select the device first (cupy.cuda.Device(i).use(), or "
                                 "init_process_group(device_id=...)).")

    def _run(self, what: str, body, arrays, async_op: bool, result=None,
             blocking: bool = False):
        """Queue body(stream) on the comm stream after the current stream; a CudaWork."""
        self._check(arrays, what)
        with self.cupy.cuda.Device(self.device.id):   # a fresh Device: its stack is per object
            self.stream.wait_event(_cuda.record())
            with self._lock:   # one communicator: calls from several threads in one order
                keep = body(self.stream)
            done = _cuda.record(self.stream)
        work = CudaWork(what, done, self.device.id, (arrays, keep), self, result, blocking)
        if not async_op:
            work.wait()
        return work

    def _avg_fix(self, op: str, out, stream):
        """Without ncclAvg: divide the sum on the comm stream."""
        if op == "AVG" and not self.has_avg:
            with stream:
                out /= self.pg.size()

    # -- collectives -------------------------------------------------------------------------

    def all_reduce(self, x, op, async_op):
        def body(s):
            p, n, t = self._args(x, "all_reduce")
            self.comm.allReduce(p, p, n, t, self._op(op, x, "all_reduce"), s.ptr)
            self._avg_fix(op, x, s)
        return self._run("all_reduce", body, [x], async_op)

    def broadcast(self, x, root, async_op):
        def body(s):
            p, n, t = self._args(x, "broadcast")
            self.comm.bcast(p, n, t, root, s.ptr)
        return self._run("broadcast", body, [x], async_op)

    def reduce(self, x, op, root, async_op):
        def body(s):
            p, n, t = self._args(x, "reduce")
            self.comm.reduce(p, p, n, t, self._op(op, x, "reduce"), root, s.ptr)
            if self.pg.rank() == root:
                self._avg_fix(op, x, s)
        return self._run("reduce", body, [x], async_op)

    def all_gather_into_tensor(self, out, x, async_op):
        def body(s):
            p, n, t = self._args(x, "all_gather_into_tensor")
            self.comm.allGather(p, out.data.ptr, n, t, s.ptr)
        return self._run("all_gather_into_tensor", body, [out, x], async_op)

    def all_gather(self, outs, x, async_op):
        """The list form: into one flat buffer (made on the comm stream), then copied out."""
        def body(s):
            with s:
                flat = self.cupy.empty((len(outs),) + tuple(x.shape), x.dtype)
            p, n, t = self._args(x, "all_gather")
            self.comm.allGather(p, flat.data.ptr, n, t, s.ptr)
            with s:
                for o, part in zip(outs, flat):
                    o[...] = part
            return flat
        return self._run("all_gather", body, [x] + list(outs), async_op)

    def reduce_scatter_tensor(self, out, x, op, async_op):
        def body(s):
            p, n, t = self._args(out, "reduce_scatter_tensor")
            self.comm.reduceScatter(x.data.ptr, p, n, t, self._op(op, x, "reduce_scatter"),
                                    s.ptr)
            self._avg_fix(op, out, s)
        return self._run("reduce_scatter_tensor", body, [out, x], async_op)

    def reduce_scatter(self, out, ins, op, async_op):
        def body(s):
            with s:
                flat = self.cupy.stack([i.reshape(out.shape) for i in ins])
            p, n, t = self._args(out, "reduce_scatter")
            self.comm.reduceScatter(flat.data.ptr, p, n, t, self._op(op, out, "reduce_scatter"),
                                    s.ptr)
            self._avg_fix(op, out, s)
            return flat
        return self._run("reduce_scatter", body, [out] + list(ins), async_op)

    def _grouped(self, pairs):
        """Send/recv pairs in one NCCL group: (kind, array or (ptr, count, type), peer)."""
        self.nccl.groupStart()
        try:
            for kind, a, peer, s in pairs:
                p, n, t = a if isinstance(a, tuple) else self._args(a, kind)
                if kind == "send":
                    self.comm.send(p, n, t, peer, s.ptr)
                else:
                    self.comm.recv(p, n, t, peer, s.ptr)
        finally:
            self.nccl.groupEnd()

    def all_to_all(self, outs, ins, async_op):
        def body(s):
            pairs = []
            for peer in range(self.pg.size()):
                pairs += [("send", ins[peer], peer, s), ("recv", outs[peer], peer, s)]
            self._grouped(pairs)
        return self._run("all_to_all", body, list(outs) + list(ins), async_op)

    def all_to_all_single(self, out, x, out_splits, in_splits, async_op):
        row = x.size // x.shape[0] if x.shape[0] else 0
        t, k = self._type(x, "all_to_all_single")
        item = x.dtype.itemsize

        def body(s):
            pairs, io, oo = [], 0, 0
            for peer in range(self.pg.size()):
                ni, no = in_splits[peer] * row, out_splits[peer] * row
                pairs.append(("send", (x.data.ptr + io * item, ni * k, t), peer, s))
                pairs.append(("recv", (out.data.ptr + oo * item, no * k, t), peer, s))
                io, oo = io + ni, oo + no
            self._grouped(pairs)
        return self._run("all_to_all_single", body, [out, x], async_op)

    def gather(self, x, outs, root, async_op):
        me = self.pg.rank()

        def body(s):
            pairs = [("send", x, root, s)]
            if me == root:
                pairs += [("recv", o, peer, s) for peer, o in enumerate(outs)]
            self._grouped(pairs)
        return self._run("gather", body, [x] + list(outs or ()), async_op)

    def scatter(self, x, ins, root, async_op):
        me = self.pg.rank()

        def body(s):
            pairs = [("send", i, peer, s) for peer, i in enumerate(ins)] if me == root else []
            self._grouped(pairs + [("recv", x, root, s)])
        return self._run("scatter", body, [x] + list(ins or ()), async_op)

    def barrier(self, async_op):
        """An all_reduce of one element; waiting on it blocks the host (PyTorch's barrier)."""
        with self.cupy.cuda.Device(self.device.id):
            one = self.cupy.ones(1, self.cupy.float32)

        def body(s):
            self.comm.allReduce(one.data.ptr, one.data.ptr, 1, self.nccl.NCCL_FLOAT32,
                                self.nccl.NCCL_SUM, s.ptr)
        return self._run("barrier", body, [one], async_op, blocking=True)

    # -- point-to-point ----------------------------------------------------------------------

    def send(self, x, dst: int):
        return self._run("send", lambda s: self._grouped([("send", x, dst, s)]), [x], True)

    def recv(self, x, src: int):
        return self._run("recv", lambda s: self._grouped([("recv", x, src, s)]), [x], True,
                         result=self.pg.ranks[src])

    def batch(self, ops):
        """[(kind, x, peer)] of batch_isend_irecv in one NCCL group (so pairs that send to
        each other first cannot deadlock); one CudaWork per op, sharing the group's event."""
        arrays = [x for _, x, _ in ops]
        work = self._run("batch_isend_irecv", lambda s: self._grouped(
            [(kind, x, peer, s) for kind, x, peer in ops]), arrays, True)
        works = []
        for kind, _, peer in ops:
            w = CudaWork(kind, work._event, self.device.id, work._keep, self,
                         self.pg.ranks[peer] if kind == "recv" else None)
            works.append(w)
        return works

    def shutdown(self):
        """Destroy the communicator once this rank's queued calls are done. When they do not
        finish within the group's timeout, or NCCL reports an asynchronous error (a peer
        died mid-collective), abort it instead: waiting on the stream (or ncclCommDestroy,
        which also waits for them) would hang destroy_process_group forever."""
        try:
            with self.cupy.cuda.Device(self.device.id):
                done = _cuda.record(self.stream)
            _cuda.wait_event_host(done, self.pg.timeout_s, "destroy_process_group",
                                  self.check)
            self.check()
            self.comm.destroy()
        except Exception as e:  # noqa: BLE001 - any failure: abort, never hang
            _log.warning("destroy_process_group: aborting the NCCL communicator of group %s "
                         "(%s)", self.pg.gid, e)
            try:
                self.comm.abort()
            except Exception:  # noqa: BLE001 - nothing more to do on the way out
                pass
