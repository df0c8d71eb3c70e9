"""ProcessGroup: one method per collective and point-to-point call, and the one place that
picks the route each call takes.

Note [Routes]
~~~~~~~~~~~~~
``runtime.distributed``'s functions validate their arguments and call the group's method,
as c10d's Python layer calls ``group.allreduce(...)``. A method picks its route in
``_route``, stages its arrays as flat host arrays and launches one closure on the group's
communication thread (Note [Communication thread]), which builds the ``Call`` descriptor
that travels to the route. Routes share one interface on flat C-contiguous numpy arrays
(all_reduce, reduce, broadcast, all_gather, gather, scatter, reduce_scatter, all_to_all,
barrier):

  nccl          every array on a GPU and the group has a communicator: every collective
                and point-to-point call with a known peer, on the communicator's stream,
                not through the thread (nccl.py; Note [CUDA work] in _cuda.py).
  shared memory every member on this host (``ShmComm``, Note [Shm reduce]).
  hierarchical  members on several hosts, some sharing one: all_reduce and reduce through
                shared memory within each host and a ring among the hosts' leaders; the
                other collectives over the group's TCP mesh.
  tcp           otherwise: ring or direct over the mesh (``TcpRoute``, Note [Ring and
                direct]). Point-to-point always takes the mesh (Note [Point-to-point]).
CuPy arrays bound for a host route are staged through pinned host memory on the thread
(Note [GPU staging] in _cuda.py).
"""
from __future__ import annotations

import numpy as np

from . import _cuda
from .tcp_algorithms import TcpRoute
from .transport import PeerMesh
from .work import POSTED, UFUNC, CommThread, ReduceOp, Staged, Work, check_op

__all__ = ["ProcessGroup", "ReduceOp", "Work", "check_op"]



def _staging(*arrays):
    """A GpuStaging for a host-route call with CuPy arrays among `arrays`, else None."""
    return _cuda.GpuStaging(arrays) if any(_cuda.is_cuda(a) for a in arrays) else None


class _Hierarchical:
    """Mixed layouts: all_reduce and reduce within each host, then among the hosts' leaders;
    every other collective is the flat TCP route's (attribute lookups fall through to it)."""

    def __init__(self, local, leaders: TcpRoute | None, flat: TcpRoute):
        self.local, self.leaders, self.flat = local, leaders, flat

    def all_reduce(self, call, x, ufunc, deadline):
        if self.local is not None:
            self.local.all_reduce(call, x, ufunc, deadline)
        if self.leaders is not None:
            self.leaders.all_reduce(call, x, ufunc, deadline)
        if self.local is not None:
            self.local.broadcast(call, x, 0, deadline)

    def reduce(self, call, x, ufunc, root, deadline):
        self.all_reduce(call, x, ufunc, deadline)

    def __getattr__(self, name):
        return getattr(self.flat, name)


class ProcessGroup:
    """A group of ranks with its mesh, its optional shared segment and its thread."""

    def __init__(self, gid: int, ranks: list[int], global_rank: int, timeout_s: float):
        self.gid, self.ranks, self.timeout_s = gid, list(ranks), timeout_s
        self.group_rank = self.ranks.index(global_rank)
        self.mesh: PeerMesh | None = None
        self.leader_mesh: PeerMesh | None = None   # hierarchical all_reduce, one per host
        self.local = None                          # ShmComm among this host's members
        self.is_leader = True
        self.single_host = True
        self.hierarchical = False                  # shm per host, then leaders over TCP
        self.nccl = None                           # NcclComm (nccl.py) for CuPy arrays
        self.nccl_barrier = False                  # backend="nccl": barrier through NCCL
        self.nccl_lazy = None                      # backend="auto": builds self.nccl once
        self._tcp: TcpRoute | None = None
        self._hier: _Hierarchical | None = None
        self._comm = CommThread(f"zgrad-comm-g{gid}", timeout_s, self._abort_links,
                                self._progress, self._fail_posted)

    def rank(self) -> int:
        return self.group_rank

    def size(self) -> int:
        return len(self.ranks)

    def __repr__(self):
        return (f"ProcessGroup(id={self.gid}, ranks={self.ranks}, "
                f"backend={'zmq+nccl' if self.nccl is not None else 'zmq'})")

    # -- routes (see Note [Routes]) --------------------------------------------------------

    @property
    def tcp(self) -> TcpRoute:
        if self._tcp is None:
            self._tcp = TcpRoute(self.mesh)
        return self._tcp

    def _nccl_for(self, arrays, collective: bool = True):
        """The NCCL communicator for a call on `arrays`, if they are all on a GPU and the
        group has (or, the first time, can build) one; else None. Only a collective builds
        it (building is collective): point-to-point takes NCCL once a collective on GPU
        arrays has built it, on both ranks alike in a program whose ranks agree."""
        if (self.nccl is None and self.nccl_lazy is None) or not arrays or \
                not all(_cuda.is_cuda(a) for a in arrays):
            return None
        if self.nccl is None and collective:
            setup, self.nccl_lazy = self.nccl_lazy, None
            setup()    # sets self.nccl, or leaves None when ranks share a GPU
        return self.nccl

    def _route(self, name: str, *arrays):
        """The one place a call's route is chosen."""
        nccl = self._nccl_for(arrays)
        if nccl is not None:
            return nccl
        if self.local is not None and self.single_host:
            return self.local
        if self.hierarchical:
            if self._hier is None:
                leaders = TcpRoute(self.leader_mesh) if self.leader_mesh is not None else None
                self._hier = _Hierarchical(self.local, leaders, self.tcp)
            return self._hier
        return self.tcp

    def _launch(self, fn, async_op: bool, name: str, x=None, gpu=None, **fields) -> Work:
        """Run fn(call, deadline) on the group's thread; the Call takes x's dtype and shape.

        gpu: the call's GpuStaging when it stages CuPy arrays (Note [GPU staging]): its Work
        gets the copy-back event, and its input buffers go back when fn returns."""
        if x is not None:
            fields.setdefault("dtype", x.dtype.name)
            fields.setdefault("shape", tuple(int(s) for s in x.shape))
        if gpu is not None:
            inner = fn

            def fn(call, deadline):
                gpu.work = self._comm.current
                result = inner(call, deadline)
                if result is not POSTED:
                    gpu.finish()
                return result
        return self._comm.submit(fn, async_op, name, **fields)

    def _abort_links(self, message: str):
        for mesh in (self.mesh, self.leader_mesh):
            if mesh is not None:
                mesh.abort(message)
        if self.local is not None:
            self.local.abort(message)

    def _progress(self, block_ms: int) -> bool:
        return self._tcp is not None and self._tcp.progress(block_ms)

    def _fail_posted(self, exc: BaseException):
        if self._tcp is not None:
            self._tcp.fail_posted(exc)

    def _avg(self, op: str, flat: np.ndarray):
        if op == "AVG":
            np.divide(flat, self.size(), out=flat)

    def _global(self, group_rank: int) -> int:
        return self.ranks[group_rank]

    # -- collectives: validated arrays in, a Work out (see Note [Routes]) ------------------
    # roots are group ranks; descriptors name the global rank, as the user wrote it

    def allreduce(self, x, op: str = "SUM", async_op: bool = False):
        route = self._route("all_reduce", x)
        if route is self.nccl:
            return self.nccl.all_reduce(x, op, async_op)
        gpu = _staging(x)

        def run(call, deadline):
            s = Staged(x, gpu=gpu)
            route.all_reduce(call, s.flat, UFUNC[op], deadline)
            self._avg(op, s.flat)
            s.write_back()
        return self._launch(run, async_op, "all_reduce", x, gpu, op=op)

    def broadcast(self, x, root: int, async_op: bool = False):
        route = self._route("broadcast", x)
        if route is self.nccl:
            return self.nccl.broadcast(x, root, async_op)
        gpu, me = _staging(x), self.group_rank

        def run(call, deadline):
            s = Staged(x, gpu=gpu, read=me == root)
            route.broadcast(call, s.flat, root, deadline)
            if me != root:
                s.write_back()
        return self._launch(run, async_op, "broadcast", x, gpu, root=self._global(root))

    def reduce(self, x, root: int, op: str = "SUM", async_op: bool = False):
        route = self._route("reduce", x)
        if route is self.nccl:
            return self.nccl.reduce(x, op, root, async_op)
        me, gpu = self.group_rank, _staging(x)

        def run(call, deadline):
            s = Staged(x, copy=me != root, gpu=gpu)   # a route may use x off the root as scratch
            route.reduce(call, s.flat, UFUNC[op], root, deadline)
            if me == root:
                self._avg(op, s.flat)
                s.write_back()
        return self._launch(run, async_op, "reduce", x, gpu, op=op, root=self._global(root))

    def allgather(self, outs: list, x, async_op: bool = False):
        route = self._route("all_gather", x, *outs)
        if route is self.nccl:
            return self.nccl.all_gather(outs, x, async_op)
        gpu = _staging(x, *outs)

        def run(call, deadline):
            staged = [Staged(o, gpu=gpu, read=False) for o in outs]
            route.all_gather(call, Staged(x, gpu=gpu).flat, [s.flat for s in staged], deadline)
            for s in staged:
                s.write_back()
        return self._launch(run, async_op, "all_gather", x, gpu)

    def allgather_into_tensor(self, out, x, async_op: bool = False):
        route = self._route("all_gather_into_tensor", out, x)
        if route is self.nccl:
            return self.nccl.all_gather_into_tensor(out, x, async_op)
        gpu = _staging(out, x)

        def run(call, deadline):
            s = Staged(out, gpu=gpu, read=False)
            route.all_gather(call, Staged(x, gpu=gpu).flat, s.flat, deadline)
            s.write_back()
        return self._launch(run, async_op, "all_gather_into_tensor", x, gpu)

    def gather(self, x, outs: list | None, root: int, async_op: bool = False):
        route = self._route("gather", x, *(outs or ()))
        if route is self.nccl:
            return self.nccl.gather(x, outs, root, async_op)
        gpu = _staging(x, *(outs or ()))

        def run(call, deadline):
            staged = None if outs is None else [Staged(o, gpu=gpu, read=False) for o in outs]
            route.gather(call, Staged(x, gpu=gpu).flat, staged and [s.flat for s in staged],
                         root, deadline)
            for s in staged or ():
                s.write_back()
        return self._launch(run, async_op, "gather", x, gpu, root=self._global(root))

    def scatter(self, x, ins: list | None, root: int, async_op: bool = False):
        route = self._route("scatter", x, *(ins or ()))
        if route is self.nccl:
            return self.nccl.scatter(x, ins, root, async_op)
        gpu = _staging(x, *(ins or ()))

        def run(call, deadline):
            s = Staged(x, gpu=gpu, read=False)
            flats = None if ins is None else [Staged(i, gpu=gpu).flat for i in ins]
            route.scatter(call, s.flat, flats, root, deadline)
            s.write_back()
        return self._launch(run, async_op, "scatter", x, gpu, root=self._global(root))

    def reduce_scatter(self, out, ins: list, op: str = "SUM", async_op: bool = False):
        route = self._route("reduce_scatter", out, *ins)
        if route is self.nccl:
            return self.nccl.reduce_scatter(out, ins, op, async_op)
        gpu = _staging(out, *ins)

        def run(call, deadline):
            s = Staged(out, gpu=gpu, read=False)
            route.reduce_scatter(call, [Staged(i, gpu=gpu).flat for i in ins], s.flat,
                                 UFUNC[op], deadline)
            self._avg(op, s.flat)
            s.write_back()
        return self._launch(run, async_op, "reduce_scatter", out, gpu, op=op)

    def reduce_scatter_tensor(self, out, x, op: str = "SUM", async_op: bool = False):
        route = self._route("reduce_scatter_tensor", out, x)
        if route is self.nccl:
            return self.nccl.reduce_scatter_tensor(out, x, op, async_op)
        n, m, gpu = self.size(), out.size, _staging(out, x)

        def run(call, deadline):
            xf = Staged(x, gpu=gpu).flat
            s = Staged(out, gpu=gpu, read=False)
            route.reduce_scatter(call, [xf[p * m:(p + 1) * m] for p in range(n)], s.flat,
                                 UFUNC[op], deadline)
            self._avg(op, s.flat)
            s.write_back()
        return self._launch(run, async_op, "reduce_scatter_tensor", x, gpu, op=op)

    def alltoall(self, outs: list, ins: list, async_op: bool = False):
        """outs[p] = ins[me] of rank p; sizes may differ per pair (checked by the route)."""
        route = self._route("all_to_all", *outs, *ins)
        if route is self.nccl:
            return self.nccl.all_to_all(outs, ins, async_op)
        gpu = _staging(*outs, *ins)

        def run(call, deadline):
            staged = [Staged(o, gpu=gpu, read=False) for o in outs]
            route.all_to_all(call, [Staged(i, gpu=gpu).flat for i in ins],
                             [s.flat for s in staged], deadline)
            for s in staged:
                s.write_back()
        return self._launch(run, async_op, "all_to_all", gpu=gpu, dtype=ins[0].dtype.name)

    def alltoall_single(self, out, x, out_splits: list[int], in_splits: list[int],
                        async_op: bool = False):
        """all_to_all of dim-0 slices: rank p gets rows in_splits[p] of x, in rank order."""
        route = self._route("all_to_all_single", out, x)
        if route is self.nccl:
            return self.nccl.all_to_all_single(out, x, out_splits, in_splits, async_op)
        row = int(np.prod(x.shape[1:], dtype=np.int64))
        gpu = _staging(out, x)

        def run(call, deadline):
            xf = Staged(x, gpu=gpu).flat
            s = Staged(out, gpu=gpu, read=False)
            io, oo = np.cumsum([0] + in_splits) * row, np.cumsum([0] + out_splits) * row
            n = self.size()
            route.all_to_all(call, [xf[io[p]:io[p + 1]] for p in range(n)],
                             [s.flat[oo[p]:oo[p + 1]] for p in range(n)], deadline)
            s.write_back()
        return self._launch(run, async_op, "all_to_all_single", gpu=gpu, dtype=x.dtype.name)

    def barrier(self, async_op: bool = False):
        if self.nccl is not None and self.nccl_barrier:
            return self.nccl.barrier(async_op)
        return self._launch(lambda call, deadline: self._route("barrier").barrier(call, deadline),
                            async_op, "barrier")

    # -- point-to-point (see Note [Point-to-point]) ----------------------------------------

    def send(self, x, dst: int, tag: int = 0) -> Work:
        """Post x for group rank `dst`; the Work finishes once x may be reused. A CuPy
        array goes through NCCL when the group has it (tags are then ignored, as NCCL's)."""
        nccl = self._nccl_for([x], collective=False)
        if nccl is not None:
            return nccl.send(x, dst)
        gpu = _staging(x)

        def run(call, deadline):
            self.tcp.post_send(call, dst, Staged(x, gpu=gpu).flat, self._comm.current,
                               deadline)
            return POSTED
        return self._launch(run, True, "send", x, gpu, collective=False, tag=tag)

    def recv(self, x, src: int | None, tag: int = 0) -> Work:
        """Post a receive into x from group rank `src` (None: any); the Work's result() is
        the sender's global rank. NCCL (CuPy arrays) needs `src`."""
        nccl = None if src is None else self._nccl_for([x], collective=False)
        if nccl is not None:
            return nccl.recv(x, src)
        gpu = _staging(x)

        def run(call, deadline):
            self.tcp.post_recv(call, src, Staged(x, gpu=gpu, read=False), self._comm.current,
                               deadline)
            return POSTED
        return self._launch(run, True, "recv", x, gpu, collective=False, tag=tag)

    def batch_p2p(self, ops: list):
        """[(kind, x, peer)] posted together: one NCCL group when every array is on a GPU
        and the group has NCCL, else one by one; a Work per op."""
        nccl = self._nccl_for([x for _, x, _, _ in ops], collective=False)
        if nccl is not None:
            return nccl.batch([(kind, x, peer) for kind, x, peer, _ in ops])
        return [self.send(x, peer, tag) if kind == "send" else self.recv(x, peer, tag)
                for kind, x, peer, tag in ops]

    def shutdown(self, timeout_s: float = 5.0):
        self._comm.shutdown(timeout_s)
        if self.nccl is not None:
            self.nccl.shutdown()
        for mesh in (self.mesh, self.leader_mesh):
            if mesh is not None:
                mesh.close()
        if self.local is not None:
            self.local.close()
