"""Module hooks: forward pre/post hooks and full backward (pre-)hooks, as PyTorch's.

Note [Module backward hooks]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
As PyTorch's BackwardHook does, the module's Tensor inputs and its Tensor outputs each pass
through one identity node. Backward reaches the output node first: it runs the backward
pre-hooks on grad_output (they may replace it) and keeps it. It then reaches the input node,
which calls each backward hook with (grad_input, grad_output); a hook may return a new
grad_input. When no input requires grad, the hooks run at the output node with grad_input all
None, as in PyTorch.
"""
from __future__ import annotations

from ..._grad_mode import is_grad_enabled
from ..._tensor import Tensor
from ...autograd.function import Function


class _Identity(Function):
    """Passes tensors through; its backward hands their gradients to `on_grads`."""

    @staticmethod
    def forward(ctx, on_grads, *ts):
        ctx.on_grads = on_grads
        return tuple(t.detach() for t in ts)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + tuple(ctx.on_grads(grads))


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


def _run_forward_pre_hooks(m, args, kwargs):
    for key, hook in list(m._forward_pre_hooks.items()):
        if ("kwargs", id(m._forward_pre_hooks), key) in m._hook_flags:
            r = hook(m, args, kwargs)
            if r is not None:
                if not (isinstance(r, tuple) and len(r) == 2):
                    raise RuntimeError("forward pre-hook with kwargs must return None or a "
                                       f"tuple of (new_args, new_kwargs), got {r!r}")
                args, kwargs = _as_tuple(r[0]), r[1]
        else:
            r = hook(m, args)
            if r is not None:
                args = _as_tuple(r)
    return args, kwargs


def _run_forward_hooks(m, args, kwargs, out, only_always=False):
    for key, hook in list(m._forward_hooks.items()):
        if only_always and ("always", key) not in m._hook_flags:
            continue
        if ("kwargs", id(m._forward_hooks), key) in m._hook_flags:
            r = hook(m, args, kwargs, out)
        else:
            r = hook(m, args, out)
        if r is not None and not only_always:
            out = r
    return out


def _wrap_inputs(m, args, state):
    """Route the Tensor args that require grad through an identity whose backward calls the
    module's backward hooks (Note [Module backward hooks])."""
    pos = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    diff = [i for i in pos if args[i].requires_grad]
    state["n_in"] = len(pos)
    if not diff:
        return args

    def on_grads(grads):
        g_in = [None] * len(pos)
        for i, g in zip(diff, grads):
            g_in[pos.index(i)] = g
        g_in = _call_backward_hooks(m, tuple(g_in), state.get("grad_output", ()))
        return tuple(g_in[pos.index(i)] for i in diff)
    new = _as_tuple(_Identity.apply(on_grads, *(args[i] for i in diff)))
    args = list(args)
    for i, t in zip(diff, new):
        args[i] = t
    state["wrapped_inputs"] = True
    return tuple(args)


def _call_backward_hooks(m, grad_input, grad_output):
    for hook in list(m._backward_hooks.values()):
        r = hook(m, grad_input, grad_output)
        if r is not None:
            r = _as_tuple(r)
            if len(r) != len(grad_input):
                raise RuntimeError(f"backward hook returned {len(r)} gradients; expected "
                                   f"{len(grad_input)} (one per Tensor input).")
            grad_input = r
    return grad_input


def _wrap_outputs(m, out, state):
    single = isinstance(out, Tensor)
    outs = (out,) if single else out
    if not isinstance(outs, tuple):
        return out
    idx = [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o.requires_grad]
    if not idx:
        return out

    def on_grads(grads):
        for hook in list(m._backward_pre_hooks.values()):
            r = hook(m, grads)
            if r is not None:
                grads = _as_tuple(r)
        state["grad_output"] = grads
        if not state.get("wrapped_inputs"):
            _call_backward_hooks(m, (None,) * state["n_in"], grads)
        return grads
    new = _as_tuple(_Identity.apply(on_grads, *(outs[i] for i in idx)))
    outs = list(outs)
    for i, t in zip(idx, new):
        outs[i] = t
    return outs[0] if single else tuple(outs)


def call_with_hooks(m, args, kwargs):
    """Module.__call__ when the module has hooks."""
    args, kwargs = _run_forward_pre_hooks(m, args, kwargs)
    backward = (m._backward_hooks or m._backward_pre_hooks) and is_grad_enabled()
    state = {}
    if backward:
        args = _wrap_inputs(m, args, state)
    try:
        out = m.forward(*args, **kwargs)
    except BaseException:
        _run_forward_hooks(m, args, kwargs, None, only_always=True)
        raise
    out = _run_forward_hooks(m, args, kwargs, out)
    if backward:
        out = _wrap_outputs(m, out, state)
    return out
