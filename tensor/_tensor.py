"""The Tensor and the autograd graph node.

Note [Graph]
~~~~~~~~~~~~
An op computes its output array, then calls ``from_op(y, parents, backward, name)``. When grad
mode is on and a parent requires grad, the output gets a ``Node`` that holds the backward
closure and one *edge* per parent: ``(target, index, dtype)`` where target is the parent's
Node (with the parent's output index in it), the parent tensor itself when it is a leaf that
requires grad, or ``None``. The closure captures exactly what backward needs (the graph keeps
it alive until backward releases it). What a closure captures is what gets checked: every
Tensor among its ``__closure__`` cells has its version counter recorded, and backward refuses
to run if an in-place op changed one since (PyTorch's "modified by an inplace operation"
error). So a closure captures input *Tensors*, never their raw arrays (a raw array carries no
version counter); a closure that must hold raw arrays of a Tensor (getitem's key, clamp's
bounds) passes those Tensors as ``saved=``. A Tensor captured only for its shape would be
checked needlessly: capture the shape instead. An op whose backward needs its
own output (exp, tanh, sigmoid) passes ``save_output=True`` and receives the output as a second
argument; the node keeps only the output *array*, so there is no Tensor -> Node -> Tensor cycle
and the graph is freed by reference counting, not by the cyclic GC.

Views (reshape, transpose, basic indexing) share their base's version counter, so an in-place
change through a view is seen by every op that saved the base.
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from . import backend, dtypes
from ._grad_mode import state as _grad_state

_seq = itertools.count()
_object_new = object.__new__
_ndarray = np.ndarray
_generic = np.generic


class Node:
    """One recorded op: its backward closure and the edges to its inputs."""

    __slots__ = ("fn", "edges", "name", "saved", "seq", "hooks", "n_out", "out_meta", "y",
                 "out_vbox", "opaque", "__weakref__")

    def __init__(self, fn, edges, name, saved, n_out=1, out_meta=None):
        self.fn = fn
        self.edges = edges
        self.name = name
        self.saved = saved
        self.seq = next(_seq)
        self.hooks = None
        self.n_out = n_out
        self.out_meta = out_meta
        self.y = None
        self.out_vbox = None
        self.opaque = False  # a custom Function: its gradients may alias anything

    def name_(self) -> str:
        return "".join(p[:1].upper() + p[1:] for p in self.name.split("_")) + "Backward0"

    def __repr__(self):
        return f"<{self.name_()}>"

    @property
    def next_functions(self):
        """((node or leaf, output index), ...) per input, as PyTorch's grad_fn.next_functions."""
        return tuple((e[0], e[1]) if e is not None else (None, 0) for e in self.edges)


class RemovableHandle:
    """Returned by register_*hook; ``remove()`` takes the hook out again."""

    def __init__(self, hooks: list, hook):
        self._hooks, self._hook = hooks, hook

    def remove(self):
        try:
            self._hooks.remove(self._hook)
        except ValueError:
            pass


def _edge(p):
    if p is None or not p.requires_grad:
        return None
    node = p._node
    if node is None:
        return (p, 0, p.array.dtype)
    base = p._base
    if base is not None and base._node is not p._view_node:
        node = _refresh_view(p)  # the base's history was rewritten since (Note [In-place ops])
    return (node, p._out_idx, p.array.dtype)


def _refresh_view(v):
    from .ops.index import refresh_view
    return refresh_view(v)


def current_node(t):
    """t's grad_fn, rebuilt first when t is a view whose base's history was rewritten."""
    base = t._base
    if t._node is not None and base is not None and base._node is not t._view_node:
        return _refresh_view(t)
    return t._node


def _new(y, requires_grad=False):
    """A Tensor around array y, no graph (the fast constructor every op uses)."""
    if y.__class__ is not _ndarray and isinstance(y, _generic):
        y = np.asarray(y)  # numpy ufuncs return scalars for 0-d inputs; keep arrays
    t = _object_new(Tensor)
    t.array = y
    t.requires_grad = requires_grad
    t._vbox = [0]
    return t


def _saved(backward, extra):
    """Version records of every Tensor the closure captures, plus `extra` (Note [Graph])."""
    out = None
    cells = backward.__closure__
    if cells is not None:
        for c in cells:
            try:
                v = c.cell_contents
            except ValueError:  # a cell not filled yet (a name bound after the closure)
                continue
            if isinstance(v, Tensor):
                box = v._vbox
                if out is None:
                    out = [(box, box[0], v)]
                else:
                    out.append((box, box[0], v))
    if extra:
        out = out or []
        out.extend((t._vbox, t._vbox[0], t) for t in extra if t is not None)
    return tuple(out) if out else ()


def from_op(y, parents, backward, name, saved=(), save_output=False):
    """Wrap op output array `y`; record a Node when grad mode is on and a parent needs grad.

    Args:
        parents: the input Tensors (None for a non-tensor input), in the order backward
            returns their gradients.
        backward: ``backward(gy) -> tuple of grads`` (``backward(gy, out)`` with save_output).
        saved: Tensors whose raw arrays the closure holds (Tensors it captures directly are
            found in its closure cells); their versions are checked at backward.
    """
    if y.__class__ is not _ndarray and isinstance(y, _generic):
        y = np.asarray(y)
    t = _object_new(Tensor)
    t.array = y
    t._vbox = [0]
    if _grad_state.enabled:
        for p in parents:
            if p is not None and p.requires_grad:
                break
        else:
            return t
        node = Node(backward, tuple(map(_edge, parents)), name, _saved(backward, saved))
        if save_output:
            node.y = y
            node.out_vbox = t._vbox
        t._node = node
        t.requires_grad = True
    return t


def _rebuild_tensor(data, requires_grad):
    """Unpickle a Tensor (its array pickled by handle when it lives in shared memory)."""
    t = _new(data, requires_grad)
    return t


class Tensor:
    """An n-dimensional array with define-by-run autograd, on numpy (CPU) or CuPy (GPU).

    ``.array`` is the raw array (numpy.ndarray or cupy.ndarray). Most methods are attached by
    ``tensor/_methods.py`` from the op modules.
    """

    # class-level defaults keep the per-op constructor short: an op sets only what differs
    grad = None
    requires_grad = False
    _node = None
    _out_idx = 0
    _base = None
    _view_node = None  # the base's grad_fn when this view's history was last derived from it
    _hooks = None
    _post_hooks = None
    _retains_grad = False
    _is_param = False
    __array_priority__ = 1000  # numpy scalars defer to Tensor's reflected operators

    def __init__(self, data=None, *sizes, requires_grad=False):
        # Tensor(array) wraps without copying; use tensor.tensor(...) for PyTorch's copy.
        # Otherwise PyTorch's legacy constructor: Tensor([0]) is float (the default dtype, as
        # char_rnn_generation's `loss = torch.Tensor([0]); loss += l` needs) and
        # Tensor(2, 3) is an uninitialised float tensor of that shape.
        if data is None:
            data = np.empty((0,), dtypes.get_default_dtype())
        elif isinstance(data, Tensor):
            data = data.array
        elif sizes or (isinstance(data, (int, np.integer)) and not isinstance(data, bool)):
            shape = (data, *sizes)
            if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                       for n in shape):
                raise TypeError(f"Tensor(*sizes): expected ints, got {shape}; to wrap data, "
                                "pass one list or array: Tensor([1, 2]).")
            data = np.empty(tuple(int(n) for n in shape), dtypes.get_default_dtype())
        elif not backend.is_array(data):
            from .creation import _to_array
            data = _to_array(data, dtypes.get_default_dtype())
        self.array = data
        self.requires_grad = bool(requires_grad)
        self._vbox = [0]

    # -- PyTorch's .data ------------------------------------------------------------------------
    @property
    def data(self):
        """A Tensor sharing this storage, detached, ``requires_grad=False`` (as torch's .data).

        As in PyTorch it has its own version counter: changes made through it are hidden from
        autograd (that is the point of .data, and its danger; prefer ``detach()`` or no_grad).
        """
        return _new(self.array)

    @data.setter
    def data(self, value):
        if isinstance(value, Tensor):
            value = value.array
        elif not backend.is_array(value):
            raise TypeError(f"data: expected a Tensor (or a numpy/CuPy array), got "
                            f"{type(value).__name__}; wrap it with tensor.tensor(...).")
        self.array = value

    # -- metadata ---------------------------------------------------------------------------
    @property
    def shape(self):
        return Size(self.array.shape)

    def size(self, dim=None):
        if dim is None:
            return Size(self.array.shape)
        return self.array.shape[dim]

    @property
    def dtype(self):
        """The element type; prints as PyTorch's (``tensor.float32``), equals the numpy dtype."""
        return dtypes.wrap(self.array.dtype)

    @property
    def device(self):
        return backend.device_of(self.array)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def dim(self) -> int:
        return self.array.ndim

    def numel(self) -> int:
        return int(self.array.size)

    nelement = numel

    def element_size(self) -> int:
        return self.array.itemsize

    def stride(self, dim=None):
        st = tuple(s // self.array.itemsize for s in self.array.strides)
        return st if dim is None else st[dim]

    def is_contiguous(self) -> bool:
        return bool(self.array.flags.c_contiguous)

    def is_floating_point(self) -> bool:
        return self.array.dtype.kind == "f"

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        return current_node(self)

    @property
    def _version(self) -> int:
        return self._vbox[0]

    def __len__(self):
        if self.array.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.array.shape[0]

    # -- conversion --------------------------------------------------------------------------
    def numpy(self, force: bool = False) -> np.ndarray:
        """The data as a numpy array, sharing memory on the CPU (as Tensor.numpy)."""
        if self.requires_grad and not force:
            raise RuntimeError("numpy(): can't call numpy() on a Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        if not isinstance(self.array, np.ndarray):
            if not force:
                raise TypeError(f"numpy(): the tensor is on {self.device}; "
                                "call .cpu() first to copy it to host memory.")
            return backend.to_numpy(self.array)
        return self.array

    def item(self):
        if self.array.size != 1:
            raise ValueError(f"item(): a Tensor with {self.array.size} elements cannot be "
                             "converted to a Python scalar; expected exactly one element.")
        return self.array.reshape(()).item() if isinstance(self.array, np.ndarray) \
            else backend.to_numpy(self.array).reshape(()).item()

    def tolist(self):
        return backend.to_numpy(self.array).tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.array.dtype.kind not in "iu" or self.array.size != 1:
            raise TypeError("only integer tensors of a single element can be used as an index")
        return int(self.item())

    def __bool__(self):
        if self.array.size != 1:
            raise RuntimeError(f"Boolean value of a Tensor with {self.array.size} elements is "
                               "ambiguous; use .any() or .all().")
        return bool(self.item())

    def __array__(self, dtype=None, copy=None):
        a = backend.to_numpy(self.array)
        return a if dtype is None else a.astype(dtype)

    __hash__ = object.__hash__

    def __reduce_ex__(self, protocol):
        if self._node is not None:
            raise RuntimeError("pickling a non-leaf Tensor (one with a grad_fn) is not supported; "
                               "pickle t.detach() instead.")
        return (_rebuild_tensor, (self.array, self.requires_grad))

    def __deepcopy__(self, memo):
        if self._node is not None:
            raise RuntimeError("Only leaf Tensors support deepcopy; detach() first.")
        t = self.__class__.__new__(self.__class__)
        t.array = self.array.copy()
        t.requires_grad = self.requires_grad
        t._vbox = [0]
        if self.grad is not None:
            t.grad = self.grad.__deepcopy__(memo)
        memo[id(self)] = t
        return t

    # -- autograd ----------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's .grad (as Tensor.backward)."""
        from .autograd.engine import run_backward
        run_backward([self], [gradient], retain_graph=create_graph if retain_graph is None
                     else retain_graph, create_graph=create_graph, inputs=inputs)

    def detach(self):
        """A new Tensor on the same data, cut from the graph."""
        t = _new(self.array)
        t._vbox = self._vbox
        return t

    def detach_(self):
        if self._base is not None and self._base.requires_grad:
            raise RuntimeError("detach_(): can't detach a view of a tensor that requires grad "
                               "in place; use detach() instead.")
        self._node = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad: bool = True):
        if self._node is not None and not requires_grad:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor: only leaves can "
                               "change requires_grad; use detach() instead.")
        if requires_grad and self.array.dtype.kind != "f":
            raise RuntimeError(f"only floating point tensors can require gradients, got "
                               f"{self.array.dtype}.")
        self.requires_grad = bool(requires_grad)
        return self

    def retain_grad(self):
        """Keep .grad for this non-leaf tensor after backward."""
        if self._node is None:
            return self  # leaves keep their grad anyway
        if not self._retains_grad:
            self._retains_grad = True
            ref = weakref.ref(self)

            def hook(g):
                t = ref()
                if t is not None:
                    gd = g if _grad_state.enabled else g.detach()
                    t.grad = gd if t.grad is None else t.grad + gd
            self._add_node_hook(hook)
        return self

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    def _add_node_hook(self, hook):
        node = self._node
        if node.hooks is None:
            node.hooks = {}
        hooks = node.hooks.setdefault(self._out_idx, [])
        hooks.append(hook)
        return hooks

    def register_hook(self, hook):
        """hook(grad) -> Tensor or None, called with this tensor's gradient during backward."""
        if not self.requires_grad:
            raise RuntimeError("register_hook: cannot register a hook on a tensor that doesn't "
                               "require gradient.")
        if self._node is None:
            if self._hooks is None:
                self._hooks = []
            self._hooks.append(hook)
            return RemovableHandle(self._hooks, hook)
        return RemovableHandle(self._add_node_hook(hook), hook)

    def register_post_accumulate_grad_hook(self, hook):
        """hook(tensor), called after this leaf's .grad was updated by backward (DDP uses it)."""
        if self._node is not None:
            raise RuntimeError("register_post_accumulate_grad_hook: only leaf tensors have it.")
        if self._post_hooks is None:
            self._post_hooks = []
        self._post_hooks.append(hook)
        return RemovableHandle(self._post_hooks, hook)

    # -- shared memory (see shm) ---------------------------------------------------------------
    def share_memory_(self):
        """Move the storage into shared memory (a no-op if it is there or on a GPU)."""
        if isinstance(self.array, np.ndarray):
            import shm
            if not shm.is_shared(self.array):
                self.array = shm.share(self.array)
        if self.grad is not None:
            self.grad.share_memory_()
        return self

    def is_shared(self) -> bool:
        """True when the storage is in shared memory (CUDA tensors are: they travel by IPC)."""
        import shm
        return shm.is_shared(self.array)

    # -- repr ----------------------------------------------------------------------------------
    def __repr__(self):
        from ._format import format_tensor
        return format_tensor(self)

    __str__ = __repr__

    def __format__(self, spec):
        if self.array.ndim == 0:
            return self.item().__format__(spec)
        return object.__format__(self, spec)

    def __iter__(self):
        if self.array.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.array.shape[0]))


class Size(tuple):
    """A shape, as torch.Size: a tuple with numel()."""

    def numel(self) -> int:
        n = 1
        for s in self:
            n *= s
        return n

    def __repr__(self):
        return f"Size({list(self)})"
