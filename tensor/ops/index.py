"""Indexing (``t[idx]``, ``t[idx] = v``) and in-place ops with version counters.

Note [In-place ops]
~~~~~~~~~~~~~~~~~~~
An in-place op writes into the tensor's existing array (views and shared memory see it) and
bumps its version counter, so any backward that saved the old value refuses to run. When the
graph is being recorded, the op is computed out of place from an *alias* of the old value (a
copy carrying the tensor's old graph position), the result is written into the array, and the
tensor takes the new node as its grad_fn, so gradients flow through the in-place op as in
PyTorch. In-place ops with grad on a leaf that requires grad are refused, also through a view.

On a view (``x[:, 0] = v``, ``out[i].zero_()``, ``y.narrow(...).copy_(z)``) the *base's*
history is rewritten, as PyTorch's CopySlices does: the view's flat positions in its base come
from the data pointers and strides (``backend.view_positions``), the op runs on those positions
of an alias of the old base, and the base's new grad_fn (CopySlicesBackward0) puts the result
at those positions and passes the rest of the old base's gradient through. Every view records
the base's grad_fn it was derived from (``_view_node``); a view whose base has moved on since
(this view or another one was written, or the base itself) gets its history rebuilt as "these
positions of the base" when it is next used (``refresh_view``). The shared version counter still
makes every node that saved the base or a view before the write refuse to run.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from .._grad_mode import state as _grad_state
from .._tensor import Tensor, _new, from_op
from .elementwise import _xp, sum_to


def _convert_index(idx, xp):
    """Turn a Tensor/list index into arrays; report whether it has integer-array parts."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    out = []
    int_adv = False
    for i in idx:
        if isinstance(i, Tensor):
            d = i.array
            if d.dtype.kind in "iu":
                if d.ndim == 0:
                    out.append(int(d))
                    continue
                int_adv = True
            elif d.dtype.kind != "b":
                raise IndexError(f"tensors used as indices must be long, int or bool tensors, "
                                 f"got {d.dtype}")
            out.append(d if isinstance(d, xp.ndarray) else xp.asarray(backend.to_numpy(d)))
        elif isinstance(i, (list, np.ndarray)) or backend.is_array(i):
            arr = xp.asarray(i)
            if arr.dtype.kind in "iu":
                int_adv = True
            elif arr.dtype.kind == "b":
                pass
            elif arr.size == 0:
                arr = arr.astype(np.int64)
                int_adv = True
            else:
                raise IndexError(f"index arrays must be integer or bool, got {arr.dtype}")
            out.append(arr)
        else:
            out.append(i)
    return tuple(out), int_adv


def _index_tensors(idx):
    return tuple(i for i in (idx if isinstance(idx, tuple) else (idx,)) if isinstance(i, Tensor))


def getitem(a, idx):
    """a[idx] with ints, slices, None, Ellipsis, bool masks and integer arrays."""
    xp = _xp(a)
    key, int_adv = _convert_index(idx, xp)
    x = a.array
    try:
        y = x[key]
    except IndexError as e:
        raise IndexError(f"index {idx!r} is out of bounds for a tensor of shape "
                         f"{list(x.shape)}: {e}") from None
    if not backend.is_array(y):  # an element: index with a trailing ... for a 0-d view
        y = x[key + (Ellipsis,)] if not any(k is Ellipsis for k in key) else xp.asarray(y)
    shape = x.shape

    def backward(gy):
        return (_index_backward(gy, key, shape, int_adv),)
    # key holds the raw arrays of Tensor indices: save those Tensors so they are checked
    t = from_op(y, (a,), backward, "index", saved=_index_tensors(idx))
    if y.base is not None and (y.base is x or y.base is x.base):
        root = a._base if a._base is not None else a
        t._vbox, t._base, t._view_node = a._vbox, root, root._node
    return t


def _index_backward(gy, key, shape, int_adv):
    """Zeros of `shape` with gy added at `key` (repeated integer indices accumulate)."""
    xp = _xp(gy)
    gx = xp.zeros(shape, gy.array.dtype)
    if int_adv:
        backend.scatter_add(xp, gx, key, gy.array)
    else:
        gx[key] = gy.array
    return from_op(gx, (gy,), lambda g: (getitem(g, key),), "index_backward")


# ---------------------------------------------------------------------------------------------
# in-place


def _check_inplace(a: Tensor, op: str):
    """Refuse in-place ops with grad on a leaf that requires grad, directly or through a view."""
    if a._node is None and a.requires_grad:
        raise RuntimeError(f"{op}: a leaf Variable that requires grad is being used in an in-place "
                           "operation. Wrap it in `with tensor.no_grad():` (as optimizers do) or "
                           "use the out-of-place op.")
    base = a._base
    if base is not None and base._node is None and base.requires_grad:
        raise RuntimeError(f"{op}: a view of a leaf Variable that requires grad is being used in "
                           "an in-place operation. Wrap it in `with tensor.no_grad():` or "
                           "clone() the leaf first.")


def _write(a: Tensor, y, op: str):
    """Write array y into a's array, keeping its identity; check the dtype and writability."""
    x = a.array
    if y.dtype != x.dtype and not np.can_cast(y.dtype, x.dtype, casting="same_kind"):
        raise RuntimeError(f"{op}: result type {y.dtype} can't be cast to the desired output "
                           f"type {x.dtype}; convert the tensor first (e.g. .float()).")
    try:
        x[...] = y
    except ValueError as e:
        if "read-only" in str(e):
            raise RuntimeError(f"{op}: unsupported operation: more than one element of the "
                               "written-to tensor refers to a single memory location (an "
                               "expand()ed view?). Call .clone() before writing.") from None
        raise RuntimeError(f"{op}: output with shape {list(x.shape)} doesn't match the "
                           f"broadcast shape {list(y.shape)}") from None


def _needs_graph(a, args) -> bool:
    if not _grad_state.enabled:
        return False
    if a.requires_grad:
        return True
    for v in args:
        if isinstance(v, Tensor) and v.requires_grad:
            return True
    return False


def _alias_old(a: Tensor) -> Tensor:
    """The tensor's current value and graph position, detached from its array."""
    old = _new(a.array.copy(), a.requires_grad)
    old._node, old._out_idx = a._node, a._out_idx
    return old


def _copy_slices(old, pos, value):
    """old (a contiguous copy of a base) with `value` written at flat positions `pos`."""
    y = old.array.copy()
    y.reshape(-1)[pos] = value.array
    shape, vshape = y.shape, value.array.shape

    def backward(gy):
        xp = _xp(gy)
        keep = xp.ones(gy.array.size, bool)
        keep[pos] = False
        g_val = getitem(gy.reshape(-1), pos)
        return gy * _new(keep.reshape(shape)), sum_to(g_val, vshape)
    return from_op(y, (old, value), backward, "copy_slices")


def _rewrite_base(a: Tensor, apply, op: str):
    """In-place op with grad on view `a`: compute it on the old view, then give the base a new
    history (PyTorch's CopySlices) and the view a history that reads from the new base."""
    base = a._base
    pos = backend.view_positions(base.array, a.array)
    old = _alias_old(base)
    r = apply(getitem(old.reshape(-1), pos))
    if r.array.shape != a.array.shape:
        r = r.expand(a.array.shape)
    if r.array.dtype != a.array.dtype:
        r = r.to(a.array.dtype)
    new = _copy_slices(old, pos, r)
    _write(a, r.array, op)
    base._node, base._out_idx, base.requires_grad = new._node, 0, True
    refresh_view(a, pos)


def refresh_view(v: Tensor, pos=None):
    """Give view v the history "these positions of my base", after its base's history changed.

    A view made before an in-place op on its base (or on another view of it) still points to
    the base's old history; its values may have changed since, so like PyTorch (which
    regenerates a view's grad_fn when the base's version moved) it is rebuilt from the base.
    """
    base = v._base
    if pos is None:
        pos = backend.view_positions(base.array, v.array)
    prev = _grad_state.enabled
    _grad_state.enabled = True
    try:
        r = getitem(base.reshape(-1), pos)
    finally:
        _grad_state.enabled = prev
    v._node, v._out_idx, v.requires_grad = r._node, 0, True
    v._view_node = base._node
    return v._node


def _inplace_graph(a: Tensor, apply, op: str):
    """Record in-place op ``a := apply(old a)`` (see Note [In-place ops])."""
    _check_inplace(a, op)
    if a._base is not None:  # a view: the base's history is rewritten (a base with none gets one)
        _rewrite_base(a, apply, op)
        return
    old = _alias_old(a)
    r = apply(old)
    _write(a, r.array, op)
    a._node, a._out_idx, a.requires_grad = r._node, r._out_idx, r.requires_grad


def _check_no_grad_view(a: Tensor, op: str):
    base = a._base
    if _grad_state.enabled and base is not None and base.requires_grad and not a.requires_grad:
        raise RuntimeError(f"{op}: a view was created in no_grad mode (or by .data-style "
                           "access) and is being modified in place with grad mode enabled; "
                           "the base's gradient would be wrong. Modify it under no_grad, or "
                           "create the view with grad mode on.")


def inplace(a: Tensor, fn, *args, op: str = "inplace", **kw) -> Tensor:
    """Apply out-of-place op fn(a, *args) in place (see Note [In-place ops])."""
    if _needs_graph(a, args):
        # a.mul_(a): the op's inputs are the old value, not the tensor being overwritten
        _inplace_graph(a, lambda old: fn(old, *(old if v is a else v for v in args), **kw), op)
    else:
        _check_no_grad_view(a, op)
        prev = _grad_state.enabled
        _grad_state.enabled = False
        try:
            r = fn(a, *args, **kw)
        finally:
            _grad_state.enabled = prev
        _write(a, r.array, op)
    a._vbox[0] += 1
    return a


def _index_put(old, key, value, key_tensors=()):
    xp = _xp(old)
    y = old.array.copy()
    vt = value if isinstance(value, Tensor) else None
    v = vt.array if vt is not None else value
    y[key] = v
    shape = old.array.shape
    # the value's values are not read in backward: capture its shape, not the Tensor
    vshape = vt.array.shape if vt is not None and vt.requires_grad else None

    def backward(gy):
        mask = xp.ones(shape, bool)
        mask[key] = False
        g_old = gy * _new(mask)
        g_val = None
        if vshape is not None:
            sel = getitem(gy, key)
            g_val = sum_to(sel, vshape) if sel.array.shape != vshape else sel
        return g_old, g_val
    return from_op(y, (old, vt), backward, "index_put", saved=key_tensors)


def setitem(a, idx, value):
    """a[idx] = value (a Tensor, an array or a number), recorded by autograd when needed."""
    xp = _xp(a)
    key, int_adv = _convert_index(idx, xp)
    if isinstance(value, Tensor) and type(value.array) is not type(a.array):
        raise RuntimeError(f"setitem: the value is on {value.device} but the tensor is on "
                           f"{a.device}; move it with .to(device).")
    if _needs_graph(a, (value,)):
        kt = _index_tensors(idx)
        _inplace_graph(a, lambda old: _index_put(old, key, value, kt), "setitem")
    else:
        _check_no_grad_view(a, "setitem")
        v = value.array if isinstance(value, Tensor) else value
        try:
            a.array[key] = v
        except ValueError as e:
            raise RuntimeError(f"setitem: can't assign a value of shape "
                               f"{list(getattr(v, 'shape', ()))} to index {idx!r} of a tensor of "
                               f"shape {list(a.array.shape)}: {e}") from None
    a._vbox[0] += 1


def filled(a, value):
    """A tensor like a filled with value; the gradient to a is zero."""
    xp = _xp(a)
    y = xp.full(a.array.shape, value, a.array.dtype)
    return from_op(y, (a,), lambda gy: (gy * 0,), "fill")


def copy_from(a, src):
    """src broadcast to a's shape and cast to a's dtype (gradient flows to src only)."""
    xp = _xp(a)
    s = src.array if isinstance(src, Tensor) else xp.asarray(src)
    if type(s) is not type(a.array):
        s = backend.to_device(s, a.device)
    y = xp.broadcast_to(s, a.array.shape).astype(a.array.dtype)
    st = src if isinstance(src, Tensor) else None
    sshape = s.shape if st is not None else None

    def backward(gy):  # reads no input values: captures shapes only
        return gy * 0, (sum_to(gy, sshape) if sshape is not None else None)
    return from_op(y, (a, st), backward, "copy")

