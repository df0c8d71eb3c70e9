"""Custom differentiable ops: ``tensor.autograd.Function`` (as torch.autograd.Function)."""
from __future__ import annotations

from ..import backend
from .._grad_mode import state as _grad_state
from .._tensor import Node, Tensor, _edge, _new


class FunctionCtx:
    """The ``ctx`` passed to forward/backward: saves tensors and says which inputs need grad."""

    def __init__(self):
        self.needs_input_grad = ()
        self._saved = ()
        self._saved_versions = ()
        self.materialize_grads = True
        self._non_diff = set()

    def save_for_backward(self, *tensors):
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward: expected Tensors or None, got "
                                f"{type(t).__name__}; store other values as ctx attributes.")
        self._saved = tensors
        self._saved_versions = tuple((t._vbox, t._vbox[0], t) for t in tensors if t is not None)

    @property
    def saved_tensors(self):
        for box, v, t in self._saved_versions:
            if box[0] != v:
                raise RuntimeError("one of the variables needed for gradient computation has "
                                   "been modified by an inplace operation: a tensor saved with "
                                   f"save_for_backward is at version {box[0]}; expected "
                                   f"version {v}. Clone it before changing it.")
        return self._saved

    def mark_non_differentiable(self, *tensors):
        self._non_diff.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool):
        self.materialize_grads = bool(value)

    def mark_dirty(self, *tensors):
        pass  # in-place outputs are rebased like any output; see Note [In-place ops]


class Function:
    """Subclass with static ``forward(ctx, *args)`` and ``backward(ctx, *grad_outputs)``,
    then call ``MyFn.apply(*args)``. backward returns one gradient per forward argument
    (None for non-tensor or non-differentiable ones)."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("Function.forward is abstract: subclasses implement forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("Function.backward is abstract: subclasses implement backward(ctx, *grads)")

    @classmethod
    def apply(cls, *args):
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        prev = _grad_state.enabled
        _grad_state.enabled = False
        try:
            out = cls.forward(ctx, *args)
        finally:
            _grad_state.enabled = prev
        single = not isinstance(out, tuple)
        outs = (out,) if single else out
        for o in outs:
            if not isinstance(o, Tensor):
                raise TypeError(f"{cls.__name__}.forward must return Tensors, got "
                                f"{type(o).__name__}")
        wrapped = []
        for o in outs:
            t = _new(o.array)
            t._vbox = o._vbox
            wrapped.append(t)
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        if prev and any(ctx.needs_input_grad):
            n_args = len(args)
            materialize = ctx.materialize_grads

            def backward(*gys):
                if not materialize:
                    gys = tuple(None if g is None else g for g in gys)
                grads = cls.backward(ctx, *gys)
                if not isinstance(grads, tuple):
                    grads = (grads,)
                if len(grads) != n_args:
                    raise RuntimeError(f"{cls.__name__}.backward returned {len(grads)} gradients "
                                       f"but forward took {n_args} arguments; return one per "
                                       "argument (None where there is none).")
                return tuple(grads[i] for i in positions)
            meta = tuple((o.array.shape, o.array.dtype, backend.get_array_module(o.array))
                         for o in outs)
            node = Node(backward, tuple(_edge(args[i]) for i in positions), cls.__name__,
                        ctx._saved_versions, n_out=len(outs), out_meta=meta)
            node.opaque = True
            for i, t in enumerate(wrapped):
                if id(outs[i]) in ctx._non_diff or t.array.dtype.kind != "f":
                    continue
                t._node, t._out_idx, t.requires_grad = node, i, True
        return wrapped[0] if single else tuple(wrapped)
