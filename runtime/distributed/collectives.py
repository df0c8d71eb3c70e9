"""The collectives, as torch.distributed's functions. Each validates its arguments in the
caller's thread (a bad call fails here, on this rank, before anything is sent), then launches
a closure on the group's communication thread (see Note [Communication thread])."""
from __future__ import annotations

import numpy as np

from tensor import backend

from . import tcp_algorithms as algo
from .api import _group
from .process_group import _UFUNC, ReduceOp, Staged, check_op


def as_array(t, what: str, arg: str = "tensor", written: bool = False):
    """The array behind a zgrad Tensor (its .array) or a raw numpy/CuPy array.

    written: the collective writes into it, so a Tensor's version counter is bumped (a
    backward that saved it then refuses to run, as after any in-place op)."""
    if backend.is_array(t):
        return t
    data = getattr(t, "array", None)
    if data is not None and backend.is_array(data):
        if written and hasattr(t, "_vbox"):
            t._vbox[0] += 1
        return data
    raise TypeError(f"{what}: {arg} must be a zgrad Tensor or a numpy/CuPy array, got "
                    f"{type(t).__name__}")


def _nccl(pg, *arrays):
    """The group's NCCL communicator when every array lives on a GPU, else None."""
    comm = getattr(pg, "nccl", None)
    if comm is None or not arrays:
        return None
    on_gpu = [backend.device_of(a).type == "cuda" for a in arrays]
    return comm if all(on_gpu) else None


def _root(pg, r: int, what: str, arg: str) -> int:
    if r not in pg.ranks:
        raise ValueError(f"{what}: {arg}={r} is not a member of the group (ranks {pg.ranks})")
    return pg.ranks.index(r)


def _check_int_avg(op: str, x, what: str):
    if op == "AVG" and x.dtype.kind not in "fc":
        raise TypeError(f"{what}: ReduceOp.AVG needs a floating-point tensor, got {x.dtype}. "
                        "Use SUM and divide, or cast to float first.")


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` over all ranks of `group`, in place on every rank."""
    pg = _group(group, "all_reduce")
    if pg is None:
        return None
    x = as_array(tensor, "all_reduce", written=True)
    op = check_op(op, "all_reduce")
    _check_int_avg(op, x, "all_reduce")
    comm = _nccl(pg, x)
    if comm is not None:
        return comm.all_reduce(x, op, async_op)

    def run(call, deadline):
        s = Staged(x)
        pg.all_reduce_flat(call, s.flat, op, deadline)
        s.write_back()
    return pg.submit("all_reduce", op, x.dtype, x.shape, None, run, async_op)


def broadcast(tensor, src: int, group=None, async_op: bool = False):
    """Copy `tensor` of global rank `src` into `tensor` on every rank of `group`."""
    pg = _group(group, "broadcast")
    if pg is None:
        return None
    x = as_array(tensor, "broadcast", written=True)
    root = _root(pg, src, "broadcast", "src")
    comm = _nccl(pg, x)
    if comm is not None:
        return comm.broadcast(x, root, async_op)

    def run(call, deadline):
        s = Staged(x)
        pg.broadcast_flat(call, s.flat, root, deadline)
        if pg.rank() != root:
            s.write_back()
    return pg.submit("broadcast", None, x.dtype, x.shape, src, run, async_op)


def reduce(tensor, dst: int, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` over the group into `tensor` on global rank `dst` (others unchanged)."""
    pg = _group(group, "reduce")
    if pg is None:
        return None
    x = as_array(tensor, "reduce", written=True)
    op = check_op(op, "reduce")
    _check_int_avg(op, x, "reduce")
    root = _root(pg, dst, "reduce", "dst")
    comm = _nccl(pg, x)
    if comm is not None:
        return comm.reduce(x, op, root, async_op)

    def run(call, deadline):
        # reduce is all_reduce on a scratch copy off the root: the same fast paths, and the
        # root's result is bitwise the all_reduce result
        s = Staged(x, copy=pg.rank() != root)
        pg.all_reduce_flat(call, s.flat, op, deadline)
        if pg.rank() == root:
            s.write_back()
    return pg.submit("reduce", op, x.dtype, x.shape, dst, run, async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op: bool = False):
    """output = the inputs of all ranks concatenated (dim 0) or stacked, in rank order."""
    pg = _group(group, "all_gather_into_tensor")
    if pg is None:
        return None
    out = as_array(output_tensor, "all_gather_into_tensor", "output_tensor", written=True)
    x = as_array(input_tensor, "all_gather_into_tensor", "input_tensor")
    n = pg.size()
    if out.size != x.size * n or out.dtype != x.dtype:
        raise ValueError(f"all_gather_into_tensor: output must hold world_size ({n}) x input "
                         f"elements of {x.dtype}; got output {tuple(out.shape)} {out.dtype}, "
                         f"input {tuple(x.shape)} {x.dtype}")
    comm = _nccl(pg, out, x)
    if comm is not None:
        return comm.all_gather(out, x, async_op)

    def run(call, deadline):
        s = Staged(out, copy=True)
        xs = Staged(x)
        me = pg.rank()
        s.flat[me * x.size:(me + 1) * x.size] = xs.flat
        algo.all_gather(pg.mesh, call, s.flat, deadline)
        s.write_back()
    return pg.submit("all_gather_into_tensor", None, x.dtype, x.shape, None, run, async_op)


def all_gather(tensor_list: list, tensor, group=None, async_op: bool = False):
    """tensor_list[r] = `tensor` of group rank r."""
    pg = _group(group, "all_gather")
    if pg is None:
        return None
    x = as_array(tensor, "all_gather")
    outs = [as_array(t, "all_gather", "tensor_list[i]", written=True) for t in tensor_list]
    n = pg.size()
    if len(outs) != n or any(o.shape != x.shape or o.dtype != x.dtype for o in outs):
        raise ValueError(f"all_gather: tensor_list must hold world_size ({n}) tensors of shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}; got "
                         f"{[(tuple(o.shape), str(o.dtype)) for o in outs]}")

    def run(call, deadline):
        flat = np.empty(x.size * n, x.dtype)
        me = pg.rank()
        flat[me * x.size:(me + 1) * x.size] = Staged(x).flat
        algo.all_gather(pg.mesh, call, flat, deadline)
        for r, o in enumerate(outs):
            _write(o, flat[r * x.size:(r + 1) * x.size])
    return pg.submit("all_gather", None, x.dtype, x.shape, None, run, async_op)


def _write(dst, flat: np.ndarray):
    host = flat.reshape(dst.shape)
    dst[...] = host if isinstance(dst, np.ndarray) else \
        backend.to_device(host, backend.device_of(dst))


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """output on rank r = the reduction over ranks of the r-th of world_size equal parts
    of input (flattened in C order)."""
    pg = _group(group, "reduce_scatter_tensor")
    if pg is None:
        return None
    out = as_array(output, "reduce_scatter_tensor", "output", written=True)
    x = as_array(input, "reduce_scatter_tensor", "input")
    op = check_op(op, "reduce_scatter_tensor")
    _check_int_avg(op, x, "reduce_scatter_tensor")
    n = pg.size()
    if x.size != out.size * n or out.dtype != x.dtype:
        raise ValueError(f"reduce_scatter_tensor: input must hold world_size ({n}) x output "
                         f"elements of one dtype; got input {tuple(x.shape)} {x.dtype}, output "
                         f"{tuple(out.shape)} {out.dtype}")
    comm = _nccl(pg, out, x)
    if comm is not None:
        return comm.reduce_scatter(out, x, op, async_op)

    def run(call, deadline):
        scratch = Staged(x, copy=True).flat
        me = pg.rank()
        res = np.empty(out.size, out.dtype)
        if pg.local is not None and pg.single_host:
            pg.all_reduce_flat(call, scratch, op, deadline)
            res[...] = scratch[me * out.size:(me + 1) * out.size]
        else:
            algo.reduce_scatter(pg.mesh, call, scratch, res, _UFUNC[op], deadline)
            if op == "AVG":
                np.divide(res, n, out=res)
        _write(out, res)
    return pg.submit("reduce_scatter_tensor", op, x.dtype, x.shape, None, run, async_op)


def gather(tensor, gather_list=None, dst: int = 0, group=None, async_op: bool = False):
    """gather_list[r] on global rank `dst` = `tensor` of group rank r."""
    pg = _group(group, "gather")
    if pg is None:
        return None
    x = as_array(tensor, "gather")
    root = _root(pg, dst, "gather", "dst")
    outs = None
    if pg.rank() == root:
        if gather_list is None or len(gather_list) != pg.size():
            raise ValueError(f"gather: on dst {dst}, gather_list must hold world_size "
                             f"({pg.size()}) tensors, got {gather_list!r:.80}")
        outs = [as_array(t, "gather", "gather_list[i]", written=True) for t in gather_list]
        if any(o.shape != x.shape or o.dtype != x.dtype for o in outs):
            raise ValueError(f"gather: gather_list tensors must match tensor {tuple(x.shape)} "
                             f"{x.dtype}")

    def run(call, deadline):
        flats = None if outs is None else [np.empty(x.size, x.dtype) for _ in outs]
        algo.gather(pg.mesh, call, Staged(x).flat, flats, root, deadline)
        if outs is not None:
            for o, f in zip(outs, flats):
                _write(o, f)
    return pg.submit("gather", None, x.dtype, x.shape, dst, run, async_op)


def scatter(tensor, scatter_list=None, src: int = 0, group=None, async_op: bool = False):
    """`tensor` on group rank r = scatter_list[r] of global rank `src`."""
    pg = _group(group, "scatter")
    if pg is None:
        return None
    x = as_array(tensor, "scatter", written=True)
    root = _root(pg, src, "scatter", "src")
    ins = None
    if pg.rank() == root:
        if scatter_list is None or len(scatter_list) != pg.size():
            raise ValueError(f"scatter: on src {src}, scatter_list must hold world_size "
                             f"({pg.size()}) tensors")
        ins = [as_array(t, "scatter", "scatter_list[i]") for t in scatter_list]
        if any(i.shape != x.shape or i.dtype != x.dtype for i in ins):
            raise ValueError(f"scatter: scatter_list tensors must match tensor {tuple(x.shape)} "
                             f"{x.dtype}")

    def run(call, deadline):
        s = Staged(x, copy=True)
        flats = None if ins is None else [Staged(i).flat for i in ins]
        algo.scatter(pg.mesh, call, s.flat, flats, root, deadline)
        s.write_back()
    return pg.submit("scatter", None, x.dtype, x.shape, src, run, async_op)


def _splits(sizes, n: int, dim0: int, what: str, arg: str) -> list[int]:
    if sizes is None or len(sizes) == 0:
        if dim0 % n:
            raise ValueError(f"all_to_all_single: {arg} dim 0 ({dim0}) must divide by world_size "
                             f"({n}) when no split sizes are given")
        return [dim0 // n] * n
    sizes = [int(s) for s in sizes]
    if len(sizes) != n or sum(sizes) != dim0 or min(sizes) < 0:
        raise ValueError(f"all_to_all_single: {what} must be {n} sizes >= 0 summing to {arg} "
                         f"dim 0 ({dim0}), got {sizes}")
    return sizes


def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None,
                      group=None, async_op: bool = False):
    """Split input along dim 0 and send part p to rank p; output gathers part r of every rank
    in rank order."""
    pg = _group(group, "all_to_all_single")
    if pg is None:
        return None
    out = as_array(output, "all_to_all_single", "output", written=True)
    x = as_array(input, "all_to_all_single", "input")
    n = pg.size()
    if out.dtype != x.dtype or out.shape[1:] != x.shape[1:] or x.ndim == 0:
        raise ValueError(f"all_to_all_single: input and output need one dtype and equal "
                         f"trailing dims; got input {tuple(x.shape)} {x.dtype}, output "
                         f"{tuple(out.shape)} {out.dtype}")
    row = int(np.prod(x.shape[1:], dtype=np.int64))
    isz = _splits(input_split_sizes, n, x.shape[0], "input_split_sizes", "input")
    osz = _splits(output_split_sizes, n, out.shape[0], "output_split_sizes", "output")

    def run(call, deadline):
        xf = Staged(x).flat
        res = np.empty(out.size, out.dtype)
        io, oo = np.cumsum([0] + isz) * row, np.cumsum([0] + osz) * row
        ins = [xf[io[p]:io[p + 1]] for p in range(n)]
        outs = [res[oo[p]:oo[p + 1]] for p in range(n)]
        algo.all_to_all(pg.mesh, call, ins, outs, deadline)
        _write(out, res)
    return pg.submit("all_to_all_single", None, x.dtype, None, None, run, async_op)


def barrier(group=None, async_op: bool = False, device_ids=None):
    """Return once every rank of `group` has entered the barrier."""
    pg = _group(group, "barrier")
    if pg is None:
        return None
    return pg.submit("barrier", None, None, None, None,
                     lambda call, deadline: pg.barrier_flat(call, deadline), async_op)
