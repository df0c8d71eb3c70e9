"""Shape ops: views (reshape, permute, expand, ...), joins and splits, gather/scatter, tril/triu.

Ops that return a view of their input's memory share its version counter (see Note [Graph]).
"""
from __future__ import annotations

import numpy as np

from .. import backend, dtypes
from .._tensor import Tensor, _new, from_op
from .elementwise import _xp, sum_to
from .reduce import _dims


def _as_view(t: Tensor, a: Tensor) -> Tensor:
    root = a._base if a._base is not None else a
    t._vbox, t._base, t._view_node = a._vbox, root, root._node
    return t


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(int(s) for s in shape)


def reshape(a, *shape):
    """Reshape (a view when the memory layout allows, as PyTorch)."""
    shape = _shape_arg(shape)
    x = a.array
    try:
        y = x.reshape(shape)
    except ValueError:
        raise RuntimeError(f"reshape: shape {list(shape)} is invalid for input of size "
                           f"{x.size} (shape {list(x.shape)}).") from None
    src = x.shape
    t = from_op(y, (a,), lambda gy: (gy.reshape(src),), "reshape")
    if y.base is not None and (y.base is x or y.base is x.base):
        _as_view(t, a)
    return t


def view(a, *shape):
    """A view with a new shape; the input must be laid out compatibly (else use reshape)."""
    if len(shape) == 1 and isinstance(shape[0], (np.dtype, str, type)):
        raise TypeError("view(dtype) is not supported; use .to(dtype)")
    shape = _shape_arg(shape)
    x = a.array
    n = 1
    for d in shape:
        n *= d if d != -1 else 1
    if (-1 not in shape and n != x.size) or (-1 in shape and (n == 0 or x.size % n)):
        raise RuntimeError(f"view: shape {list(shape)} is invalid for input of size {x.size}.")
    try:  # copy=False raises instead of copying when the strides don't allow a view
        y = x.reshape(shape, copy=False) if isinstance(x, np.ndarray) else x.reshape(shape)
    except ValueError:
        y = None
    if y is None or not (x.size == 0 or y.base is x or (y.base is not None and y.base is x.base)):
        raise RuntimeError("view size is not compatible with input tensor's size and "
                           "stride; use .reshape(...) instead.")
    src = x.shape
    return _as_view(from_op(y, (a,), lambda gy: (gy.reshape(src),), "view"), a)


def permute(a, *dims):
    dims = _shape_arg(dims)
    nd = a.array.ndim
    if sorted(d % nd if nd else 0 for d in dims) != list(range(nd)):
        raise RuntimeError(f"permute: dims {list(dims)} is not a permutation of the "
                           f"{nd} dims of the input")
    dims = tuple(d % nd for d in dims)
    inv = tuple(np.argsort(dims))
    y = _xp(a).transpose(a.array, dims)
    return _as_view(from_op(y, (a,), lambda gy: (gy.permute(inv),), "permute"), a)


def transpose(a, dim0, dim1):
    nd = a.array.ndim
    if nd == 0:
        return a
    (d0,), (d1,) = _dims(dim0, nd, "transpose"), _dims(dim1, nd, "transpose")
    y = _xp(a).swapaxes(a.array, d0, d1)
    return _as_view(from_op(y, (a,), lambda gy: (gy.transpose(d0, d1),), "transpose"), a)


def t_(a):
    if a.array.ndim > 2:
        raise RuntimeError(f"t(): expects a tensor with <= 2 dims, got {a.array.ndim}; "
                           "use transpose(dim0, dim1) or .mT")
    return transpose(a, 0, 1) if a.array.ndim == 2 else a


def T(a):
    return permute(a, tuple(range(a.array.ndim - 1, -1, -1)))


def mT(a):
    return transpose(a, -2, -1)


def squeeze(a, dim=None):
    x = a.array
    if dim is None:
        axes = tuple(i for i, s in enumerate(x.shape) if s == 1)
    else:
        axes = tuple(i for i in _dims(dim, x.ndim, "squeeze") if x.ndim and x.shape[i] == 1)
    if not axes:
        return _as_view(from_op(x.view(), (a,), lambda gy: (gy,), "squeeze"), a)
    src = x.shape
    y = x.squeeze(axes)
    return _as_view(from_op(y, (a,), lambda gy: (gy.reshape(src),), "squeeze"), a)


def unsqueeze(a, dim):
    nd = a.array.ndim + 1
    if not -nd <= dim < nd:
        raise IndexError(f"unsqueeze: dim {dim} out of range; expected [{-nd}, {nd - 1}]")
    d = dim % nd
    y = _xp(a).expand_dims(a.array, d)
    return _as_view(from_op(y, (a,), lambda gy: (gy.squeeze(d),), "unsqueeze"), a)


def flatten(a, start_dim=0, end_dim=-1):
    x = a.array
    if x.ndim == 0:
        return reshape(a, (1,))
    s, e = start_dim % x.ndim, end_dim % x.ndim
    if s > e:
        raise RuntimeError(f"flatten: start_dim {start_dim} is after end_dim {end_dim}")
    shape = x.shape[:s] + (-1 if x.size else int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return reshape(a, shape)


def unflatten(a, dim, sizes):
    x = a.array
    d = dim % x.ndim
    return reshape(a, x.shape[:d] + tuple(sizes) + x.shape[d + 1:])


def expand(a, *sizes):
    """Broadcast to `sizes` (-1 keeps a dim) without copying, as Tensor.expand."""
    sizes = _shape_arg(sizes)
    x = a.array
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise RuntimeError(f"expand: the number of sizes ({len(sizes)}) must be >= the number "
                           f"of dims ({x.ndim})")
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    if shape == x.shape:
        return a
    try:
        y = _xp(a).broadcast_to(x, shape)
    except ValueError:
        raise RuntimeError(f"expand: the expanded size {list(shape)} must match the existing "
                           f"size {list(x.shape)} at non-singleton dimensions") from None
    src = x.shape
    return _as_view(from_op(y, (a,), lambda gy: (sum_to(gy, src),), "expand"), a)


def expand_as(a, other):
    return expand(a, other.array.shape)


def broadcast_to(a, shape):
    return expand(a, tuple(shape))


def repeat(a, *sizes):
    """Tile the tensor `sizes` times along each dim, as Tensor.repeat."""
    sizes = _shape_arg(sizes)
    x = a.array
    if len(sizes) < x.ndim:
        raise RuntimeError(f"repeat: number of repeat dims ({len(sizes)}) can not be smaller than "
                           f"number of tensor dims ({x.ndim})")
    xs = (1,) * (len(sizes) - x.ndim) + x.shape
    y = _xp(a).tile(x.reshape(xs), sizes)
    src = x.shape

    def backward(gy):
        inter = []
        for r, s in zip(sizes, xs):
            inter += [r, s]
        g = gy.reshape(inter).sum(tuple(range(0, len(inter), 2)))
        return (g.reshape(src),)
    return from_op(y, (a,), backward, "repeat")


def contiguous(a):
    x = a.array
    if x.flags.c_contiguous:
        return a
    y = _xp(a).ascontiguousarray(x)
    return from_op(y, (a,), lambda gy: (gy,), "contiguous")


def clone(a):
    return from_op(a.array.copy(), (a,), lambda gy: (gy,), "clone")


def to_dtype(a, dtype):
    """Cast; differentiable between floating dtypes."""
    dt = dtypes.as_dtype(dtype)
    if dt == a.array.dtype:
        return a
    y = a.array.astype(dt)
    src = a.array.dtype
    if dt.kind != "f" or src.kind != "f":
        return _new(y)
    return from_op(y, (a,), lambda gy: (gy.to(src),), "to")


def narrow(a, dim, start, length):
    (d,) = _dims(dim, a.array.ndim, "narrow")
    idx = (slice(None),) * d + (slice(start, start + length),)
    return a[idx]


def split(a, split_size_or_sections, dim=0):
    """Split into chunks of `split_size` (the last may be smaller) or of the given sizes."""
    (d,) = _dims(dim, a.array.ndim, "split")
    n = a.array.shape[d]
    if isinstance(split_size_or_sections, int):
        step = split_size_or_sections
        if step <= 0 and n:
            raise ValueError(f"split: split_size must be positive, got {step}")
        sizes = [min(step, n - i) for i in range(0, n, step)] if n else [0]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise RuntimeError(f"split: sizes {sizes} sum to {sum(sizes)}, but dim {d} has "
                               f"size {n}")
    out, start = [], 0
    pre = (slice(None),) * d
    for s in sizes:
        out.append(a[pre + (slice(start, start + s),)])
        start += s
    return tuple(out)


def chunk(a, chunks, dim=0):
    (d,) = _dims(dim, a.array.ndim, "chunk")
    n = a.array.shape[d]
    step = -(-n // chunks) if n else 1
    return split(a, max(step, 1), d)


def unbind(a, dim=0):
    (d,) = _dims(dim, a.array.ndim, "unbind")
    pre = (slice(None),) * d
    return tuple(a[pre + (i,)] for i in range(a.array.shape[d]))


def cat(tensors, dim=0):
    """Concatenate along an existing dim."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("cat: expected a non-empty list of Tensors")
    from .elementwise import _wrap
    tensors = [_wrap(t) for t in tensors]
    # PyTorch skips legacy empty 1-D tensors in cat
    nd = max(t.array.ndim for t in tensors)
    ts = [t for t in tensors if not (t.array.ndim == 1 and t.array.shape[0] == 0 and nd > 1)] \
        or tensors[:1]
    (d,) = _dims(dim, ts[0].array.ndim, "cat")
    dt = ts[0].array.dtype
    for t in ts[1:]:
        dt = dtypes.result_type(dt, t.array.dtype, False, False)
    xp = _xp(ts[0])
    arrays = [t.array if t.array.dtype == dt else t.array.astype(dt) for t in ts]
    try:
        y = xp.concatenate(arrays, axis=d)
    except ValueError as e:
        raise RuntimeError(f"cat: sizes of tensors must match except in dim {d}; got shapes "
                           f"{[list(t.array.shape) for t in ts]} ({e})") from None
    sizes = [t.array.shape[d] for t in ts]

    def backward(gy):
        return split(gy, sizes, d)
    return from_op(y, tuple(ts), backward, "cat")


def stack(tensors, dim=0):
    """Stack along a new dim."""
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack: expected a non-empty list of Tensors")
    shapes = {tuple(t.array.shape) for t in tensors}
    if len(shapes) > 1:
        raise RuntimeError(f"stack: expects each tensor to be equal size, got {sorted(shapes)}")
    nd = tensors[0].array.ndim + 1
    d = dim % nd
    return cat([t.unsqueeze(d) for t in tensors], d)


def hstack(tensors):
    return cat(tensors, 0 if tensors[0].array.ndim == 1 else 1)


def vstack(tensors):
    return cat([t.reshape(1, -1) if t.array.ndim == 1 else t for t in tensors], 0)


def flip(a, dims):
    dims = _dims(dims if isinstance(dims, (list, tuple)) else (dims,), a.array.ndim, "flip")
    y = _xp(a).flip(a.array, dims)
    return from_op(y, (a,), lambda gy: (gy.flip(dims),), "flip")


def roll(a, shifts, dims=None):
    xp = _xp(a)
    if dims is None:
        src = a.array.shape
        y = xp.roll(a.array.reshape(-1), shifts).reshape(src)
        return from_op(y, (a,), lambda gy: (gy.reshape(-1).roll(-shifts).reshape(src),), "roll")
    y = xp.roll(a.array, shifts, dims)
    neg = tuple(-s for s in shifts) if isinstance(shifts, (tuple, list)) else -shifts
    return from_op(y, (a,), lambda gy: (gy.roll(neg, dims),), "roll")


def _check_index(op, index, dim, a):
    if index.array.dtype.kind not in "iu":
        raise TypeError(f"{op}: index must be an integer tensor, got {index.array.dtype}")
    (d,) = _dims(dim, a.array.ndim, op)
    n = a.array.shape[d]
    backend.assert_index_on_device(_xp(index), index.array, n, f"{op}: index out of bounds for "
                                   f"dim {d} with size {n}; expected indices in [{-n}, {n - 1}].")


def gather(a, dim, index):
    """out[i][j] = a[index[i][j]][j] for dim=0 (as torch.gather)."""
    _check_index("gather", index, dim, a)
    (d,) = _dims(dim, a.array.ndim, "gather")
    xp = _xp(a)
    y = xp.take_along_axis(a.array, index.array, d)
    src = a.array.shape

    def backward(gy):
        z = _new(xp.zeros(src, gy.array.dtype))
        return z.scatter_add(d, index, gy), None
    return from_op(y, (a, index), backward, "gather")


def scatter_add(a, dim, index, src):
    """out = a.clone(); out[index[i][j]][j] += src[i][j] for dim=0 (as torch.scatter_add)."""
    _check_index("scatter_add", index, dim, a)
    (d,) = _dims(dim, a.array.ndim, "scatter_add")
    xp = _xp(a)
    y = a.array.copy()
    idx = _scatter_index(xp, index.array, d)
    backend.scatter_add(xp, y, idx, src.array[tuple(slice(0, s) for s in index.array.shape)]
                       .astype(y.dtype, copy=False))

    def backward(gy):
        return gy, None, gy.gather(d, index)
    return from_op(y, (a, index, src), backward, "scatter_add")


def scatter(a, dim, index, src):
    """out = a.clone(); out[index[i][j]][j] = src[i][j] for dim=0 (src a Tensor or number)."""
    _check_index("scatter", index, dim, a)
    (d,) = _dims(dim, a.array.ndim, "scatter")
    xp = _xp(a)
    y = a.array.copy()
    idx = _scatter_index(xp, index.array, d)
    st = src if isinstance(src, Tensor) else None
    y[idx] = st.array[tuple(slice(0, s) for s in index.array.shape)] if st is not None else src
    mask = xp.zeros(a.array.shape, bool)
    mask[idx] = True

    has_src = st is not None  # a flag, not the tensor: src's values are not read in backward

    def backward(gy):
        ga = gy * _new(~mask)
        gs = gy.gather(d, index) if has_src else None
        return ga, None, gs
    return from_op(y, (a, index, st), backward, "scatter")


def _scatter_index(xp, index, d):
    """The fancy index that addresses out[..., index, ...] along dim d."""
    nd = index.ndim
    return tuple(index if i == d else
                 xp.arange(n).reshape((1,) * i + (n,) + (1,) * (nd - i - 1))
                 for i, n in enumerate(index.shape))


def masked_fill(a, mask, value):
    """a with `value` where mask is True (mask broadcasts)."""
    m = mask.array if isinstance(mask, Tensor) else mask
    if m.dtype != np.bool_:
        raise TypeError(f"masked_fill: mask must be a bool tensor, got {m.dtype}")
    xp = _xp(a)
    v = value
    if isinstance(value, Tensor):  # its array, not .item(): no host sync on a GPU
        v = value.array.reshape(()) if value.array.size == 1 else value.item()
    y = xp.where(m, xp.asarray(v, dtype=a.array.dtype), a.array)

    mt = mask if isinstance(mask, Tensor) else _new(m)  # captured: version-checked

    def backward(gy):
        return (gy * _new(~mt.array),)
    return from_op(y, (a,), backward, "masked_fill")


def tril(a, diagonal=0):
    y = _xp(a).tril(a.array, diagonal)
    return from_op(y, (a,), lambda gy: (gy.tril(diagonal),), "tril")


def triu(a, diagonal=0):
    y = _xp(a).triu(a.array, diagonal)
    return from_op(y, (a,), lambda gy: (gy.triu(diagonal),), "triu")


def index_select(a, dim, index):
    (d,) = _dims(dim, a.array.ndim, "index_select")
    if isinstance(index, Tensor):
        n = a.array.shape[d]
        backend.assert_index_on_device(_xp(index), index.array, n, f"index_select: index out of "
                                       f"bounds for dim {d} with size {n}.")
    return a[(slice(None),) * d + (index,)]


def movedim(a, source, destination):
    nd = a.array.ndim
    src = [source] if isinstance(source, int) else list(source)
    dst = [destination] if isinstance(destination, int) else list(destination)
    src = [s % nd for s in src]
    dst = [s % nd for s in dst]
    order = [n for n in range(nd) if n not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    return permute(a, order)
