"""The collectives, as torch.distributed's functions. Each validates its arguments in the
caller's thread (a bad call fails here, on this rank, before anything is sent), then calls
the group's method, which picks the route (see Note [Routes])."""
from __future__ import annotations

from tensor import backend

from .api import _group
from .work import ReduceOp, check_op


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


def _root(pg, r: int, what: str, arg: str) -> int:
    if r not in pg.ranks:
        raise ValueError(f"{what}: {arg}={r} is not a member of the group (ranks {pg.ranks})")
    return pg.ranks.index(r)


def _reduce_op(op, x, what: str) -> str:
    op = check_op(op, what)
    if op == "AVG" and x.dtype.kind not in "fc":
        raise TypeError(f"{what}: ReduceOp.AVG needs a floating-point tensor, got {x.dtype}. "
                        "Use SUM and divide, or cast to float first.")
    return op


def _arrays(ts, n: int, like, what: str, arg: str, written: bool = False) -> list:
    """A list of n arrays, each of like's shape and dtype."""
    if ts is None or len(ts) != n:
        raise ValueError(f"{what}: {arg} must hold world_size ({n}) tensors, got "
                         f"{'None' if ts is None else len(ts)}")
    arrs = [as_array(t, what, f"{arg}[{i}]", written) for i, t in enumerate(ts)]
    bad = [(i, tuple(a.shape), str(a.dtype)) for i, a in enumerate(arrs)
           if a.shape != like.shape or a.dtype != like.dtype]
    if bad:
        raise ValueError(f"{what}: every tensor of {arg} must have shape {tuple(like.shape)} "
                         f"and dtype {like.dtype}; got (index, shape, dtype) {bad}")
    return arrs


def _done(work, async_op: bool):
    return work if async_op else None


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` over all ranks of `group`, in place on every rank."""
    pg = _group(group, "all_reduce")
    if pg is None:
        return None
    x = as_array(tensor, "all_reduce", written=True)
    return _done(pg.allreduce(x, _reduce_op(op, x, "all_reduce"), async_op), async_op)


def broadcast(tensor, src: int, group=None, async_op: bool = False):
    """Copy `tensor` of global rank `src` into `tensor` on every rank of `group`."""
    pg = _group(group, "broadcast")
    if pg is None:
        return None
    x = as_array(tensor, "broadcast", written=True)
    return _done(pg.broadcast(x, _root(pg, src, "broadcast", "src"), async_op), async_op)


def reduce(tensor, dst: int, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` over the group into `tensor` on global rank `dst` (others unchanged)."""
    pg = _group(group, "reduce")
    if pg is None:
        return None
    x = as_array(tensor, "reduce", written=True)
    op = _reduce_op(op, x, "reduce")
    return _done(pg.reduce(x, _root(pg, dst, "reduce", "dst"), op, async_op), async_op)


def all_gather(tensor_list: list, tensor, group=None, async_op: bool = False):
    """tensor_list[r] = `tensor` of group rank r."""
    pg = _group(group, "all_gather")
    if pg is None:
        return None
    x = as_array(tensor, "all_gather")
    outs = _arrays(tensor_list, pg.size(), x, "all_gather", "tensor_list", written=True)
    return _done(pg.allgather(outs, x, async_op), async_op)


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
    return _done(pg.allgather_into_tensor(out, x, async_op), async_op)


def gather(tensor, gather_list=None, dst: int = 0, group=None, async_op: bool = False):
    """gather_list[r] on global rank `dst` = `tensor` of group rank r."""
    pg = _group(group, "gather")
    if pg is None:
        return None
    x = as_array(tensor, "gather")
    root = _root(pg, dst, "gather", "dst")
    outs = _arrays(gather_list, pg.size(), x, "gather", f"gather_list (on dst {dst})",
                   written=True) if pg.rank() == root else None
    return _done(pg.gather(x, outs, root, async_op), async_op)


def scatter(tensor, scatter_list=None, src: int = 0, group=None, async_op: bool = False):
    """`tensor` on group rank r = scatter_list[r] of global rank `src`."""
    pg = _group(group, "scatter")
    if pg is None:
        return None
    x = as_array(tensor, "scatter", written=True)
    root = _root(pg, src, "scatter", "src")
    ins = _arrays(scatter_list, pg.size(), x, "scatter", f"scatter_list (on src {src})") \
        if pg.rank() == root else None
    return _done(pg.scatter(x, ins, root, async_op), async_op)


def reduce_scatter(output, input_list: list, op=ReduceOp.SUM, group=None,
                   async_op: bool = False):
    """output on group rank r = the reduction over ranks of their input_list[r]."""
    pg = _group(group, "reduce_scatter")
    if pg is None:
        return None
    out = as_array(output, "reduce_scatter", "output", written=True)
    op = _reduce_op(op, out, "reduce_scatter")
    ins = _arrays(input_list, pg.size(), out, "reduce_scatter", "input_list")
    return _done(pg.reduce_scatter(out, ins, op, async_op), async_op)


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """output on rank r = the reduction over ranks of the r-th of world_size equal parts
    of input (flattened in C order)."""
    pg = _group(group, "reduce_scatter_tensor")
    if pg is None:
        return None
    out = as_array(output, "reduce_scatter_tensor", "output", written=True)
    x = as_array(input, "reduce_scatter_tensor", "input")
    op = _reduce_op(op, x, "reduce_scatter_tensor")
    n = pg.size()
    if x.size != out.size * n or out.dtype != x.dtype:
        raise ValueError(f"reduce_scatter_tensor: input must hold world_size ({n}) x output "
                         f"elements of one dtype; got input {tuple(x.shape)} {x.dtype}, output "
                         f"{tuple(out.shape)} {out.dtype}")
    return _done(pg.reduce_scatter_tensor(out, x, op, async_op), async_op)


def all_to_all(output_tensor_list: list, input_tensor_list: list, group=None,
               async_op: bool = False):
    """output_tensor_list[p] = input_tensor_list[r] of rank p, on every rank r (tensors may
    differ in size per pair; one dtype)."""
    pg = _group(group, "all_to_all")
    if pg is None:
        return None
    n = pg.size()
    for arg, ts in (("output_tensor_list", output_tensor_list),
                    ("input_tensor_list", input_tensor_list)):
        if ts is None or len(ts) != n:
            raise ValueError(f"all_to_all: {arg} must hold world_size ({n}) tensors")
    outs = [as_array(t, "all_to_all", f"output_tensor_list[{i}]", True)
            for i, t in enumerate(output_tensor_list)]
    ins = [as_array(t, "all_to_all", f"input_tensor_list[{i}]")
           for i, t in enumerate(input_tensor_list)]
    if len({a.dtype for a in outs + ins}) != 1:
        raise ValueError(f"all_to_all: every tensor needs one dtype, got "
                         f"{sorted({str(a.dtype) for a in outs + ins})}")
    return _done(pg.alltoall(outs, ins, async_op), async_op)


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
    isz = _splits(input_split_sizes, n, x.shape[0], "input_split_sizes", "input")
    osz = _splits(output_split_sizes, n, out.shape[0], "output_split_sizes", "output")
    return _done(pg.alltoall_single(out, x, osz, isz, async_op), async_op)


def barrier(group=None, async_op: bool = False, device_ids=None):
    """Return once every rank of `group` has entered the barrier."""
    pg = _group(group, "barrier")
    if pg is None:
        return None
    return _done(pg.barrier(async_op), async_op)
