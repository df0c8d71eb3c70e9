"""Autograd: ``grad``, ``backward``, ``Function``, grad modes and ``gradcheck`` (as torch.autograd)."""
from __future__ import annotations

import numpy as np

from .._grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .._tensor import Tensor
from ._checkpoint import checkpoint, checkpoint_sequential
from .engine import queue_callback, run_backward  # noqa: F401
from .function import Function, FunctionCtx

__all__ = ["grad", "backward", "Function", "FunctionCtx", "gradcheck", "gradgradcheck",
           "no_grad", "enable_grad", "set_grad_enabled", "is_grad_enabled", "checkpoint",
           "checkpoint_sequential", "Variable"]


class _VariableMeta(type):
    def __instancecheck__(cls, other):
        return isinstance(other, Tensor)


class Variable(metaclass=_VariableMeta):
    """The old ``torch.autograd.Variable(t, requires_grad=False)``: since PyTorch 0.4 a Tensor.

    As there, it returns a new leaf on the same storage with requires_grad as given, and
    ``isinstance(t, Variable)`` holds for every Tensor.
    """

    def __new__(cls, data, requires_grad=False, volatile=False):
        if not isinstance(data, Tensor):
            raise TypeError(f"Variable: expected a Tensor, got {type(data).__name__}")
        return data.detach().requires_grad_(bool(requires_grad))


def _seq(x):
    if x is None:
        return None
    return [x] if isinstance(x, Tensor) else list(x)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=False):
    """Gradients of `outputs` with respect to `inputs`, returned (not accumulated in .grad)."""
    outputs = _seq(outputs)
    inputs = _seq(inputs)
    gos = _seq(grad_outputs) or [None] * len(outputs)
    if len(gos) != len(outputs):
        raise RuntimeError(f"grad: got {len(gos)} grad_outputs for {len(outputs)} outputs")
    if retain_graph is None:
        retain_graph = create_graph
    return run_backward(outputs, gos, retain_graph=retain_graph, create_graph=create_graph,
                        inputs=inputs, allow_unused=allow_unused, accumulate=False)


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """Accumulate gradients of `tensors` into the leaves' .grad."""
    tensors = _seq(tensors)
    gts = _seq(grad_tensors) or [None] * len(tensors)
    run_backward(tensors, gts, retain_graph=create_graph if retain_graph is None else retain_graph,
                 create_graph=create_graph)


def _host(t):
    """A tensor's values as a float64 numpy array (copied from the GPU when there)."""
    from .. import backend
    return backend.to_numpy(t.array).astype(np.float64)


def _jacobians(func, inputs, eps):
    """Analytical and numerical Jacobians of func at inputs (lists per differentiable input)."""
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    out = func(*inputs)
    outs = [out] if isinstance(out, Tensor) else list(out)
    outs = [o for o in outs if o.requires_grad or o.array.dtype.kind == "f"]
    n_out = sum(o.numel() for o in outs)
    analytic = [np.zeros((n_out, inputs[i].numel())) for i in diff]
    row = 0
    for o in outs:
        for k in range(o.numel()):
            if not o.requires_grad:
                row += 1
                continue
            go = np.zeros(o.array.shape, o.array.dtype)
            go.reshape(-1)[k] = 1
            from ..creation import tensor as _t
            gs = grad([o], [inputs[i] for i in diff], [_t(go, device=o.device)], retain_graph=True,
                      allow_unused=True)
            for j, g in enumerate(gs):
                if g is not None:
                    analytic[j][row] = _host(g).reshape(-1)
            row += 1
    numeric = [np.zeros_like(a) for a in analytic]
    for j, i in enumerate(diff):
        x = inputs[i].array.reshape(-1)
        for k in range(x.size):
            old = x[k].copy()  # on CuPy x[k] is a 0-d view that the writes below change
            # not under no_grad: func may itself call grad() (gradgradcheck)
            x[k] = old + eps
            fp = func(*inputs)
            x[k] = old - eps
            fm = func(*inputs)
            x[k] = old
            fp = [fp] if isinstance(fp, Tensor) else list(fp)
            fm = [fm] if isinstance(fm, Tensor) else list(fm)
            d = np.concatenate([((_host(a) - _host(b))
                                 / (2 * eps)).reshape(-1) for a, b in zip(fp, fm)
                                if a.array.dtype.kind == "f"]) if n_out else np.zeros(0)
            numeric[j][:, k] = d
    return diff, analytic, numeric


def gradcheck(func, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True):
    """Check backward against central differences, as torch.autograd.gradcheck.

    Inputs that require grad should be float64 (float32 differences are too coarse).
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    for t in inputs:
        if isinstance(t, Tensor) and t.requires_grad and t.array.dtype != np.float64:
            import warnings
            warnings.warn(f"gradcheck: input of dtype {t.array.dtype} is not float64; the "
                          "check is likely to fail from rounding.", stacklevel=2)
    diff, analytic, numeric = _jacobians(func, inputs, eps)
    for j, i in enumerate(diff):
        a, n = analytic[j], numeric[j]
        if not np.allclose(a, n, rtol=rtol, atol=atol):
            if raise_exception:
                k = np.unravel_index(np.argmax(np.abs(a - n)), a.shape)
                raise RuntimeError(f"gradcheck: Jacobian mismatch for input {i}: analytical "
                                   f"{a[k]:.8g} vs numerical {n[k]:.8g} at (output {k[0]}, "
                                   f"element {k[1]}).\nanalytical:\n{a}\nnumerical:\n{n}")
            return False
    return True


def gradgradcheck(func, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True):
    """gradcheck of the first derivative (vector-Jacobian product with a fixed random vector)."""
    inputs = tuple(inputs)
    with no_grad():
        out0 = func(*inputs)
    outs0 = [out0] if isinstance(out0, Tensor) else list(out0)
    rng = np.random.default_rng(0)
    from ..creation import tensor as _t
    gos = [_t(rng.normal(size=o.array.shape), device=o.device) for o in outs0]

    def first(*xs):
        out = func(*xs)
        outs = [out] if isinstance(out, Tensor) else list(out)
        gs = grad(outs, [x for x in xs if isinstance(x, Tensor) and x.requires_grad], gos,
                  create_graph=True, allow_unused=True)
        return tuple(g for g in gs if g is not None)
    return gradcheck(first, inputs, eps, atol, rtol, raise_exception)
