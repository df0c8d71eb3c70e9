"""Elementwise ops: arithmetic with broadcasting and PyTorch's promotion, math, comparisons.

Each op is one function with its backward right under the forward (see STYLE.md). Backward
closures are written with these same differentiable ops, so ``create_graph=True`` yields
higher-order gradients.
"""
from __future__ import annotations

import math
from numbers import Number

import numpy as np

from .. import backend, dtypes
from .._grad_mode import state as _grad_state
from .._tensor import Tensor, _new, from_op

_SCALARS = (int, float, bool, np.generic)


def _mixed(op, x, z):
    raise RuntimeError(f"{op}: expected all tensors on the same device, got "
                       f"{backend.device_of(x)} and {backend.device_of(z)}. "
                       "Move one with .to(device).")


def _wrap(b):
    """A constant Tensor from a raw array or sequence (no grad)."""
    if isinstance(b, Tensor):
        return b
    if backend.is_array(b):
        return _new(b)
    from ..creation import tensor
    return tensor(b)


def _operands(op, a: Tensor, b):
    """The two arrays of a binary op after PyTorch's promotion, and b as a Tensor or None."""
    if isinstance(b, Tensor):
        x, z = a.array, b.array
        dx, dz = x.dtype, z.dtype
        if dx != dz:
            dt = dtypes.result_type(dx, dz, x.ndim == 0, z.ndim == 0)
            # numpy's ufuncs already give the other dtype for a bool operand: no cast pass
            if dx != dt and dx.kind != "b":
                x = x.astype(dt)
            if dz != dt and dz.kind != "b":
                z = z.astype(dt)
        if type(x) is not type(z):
            _mixed(op, x, z)
        return x, z, b
    if isinstance(b, _SCALARS):
        x = a.array
        dt = dtypes.scalar_result_type(x.dtype, b)
        if dt != x.dtype:
            x = x.astype(dt)
        if isinstance(b, np.generic):
            b = b.item()
        return x, b, None
    return _operands(op, a, _wrap(b))


def _to_float(x):
    return x if x.dtype.kind == "f" else x.astype(dtypes.get_default_dtype())


def sum_to(g: Tensor, shape) -> Tensor:
    """Sum a broadcast gradient back to `shape` (differentiable)."""
    gs = g.array.shape
    if gs == shape:
        return g
    lead = len(gs) - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, s in enumerate(shape)
                                      if s == 1 and gs[i + lead] != 1)
    r = g.sum(dim=axes, keepdim=True) if axes else g
    if lead:
        r = r.reshape(shape)
    elif r.array.shape != shape:
        r = r.reshape(shape)
    return r


# ---------------------------------------------------------------------------------------------
# arithmetic


def add(a, b, alpha=1):
    """a + alpha * b, with broadcasting."""
    if not isinstance(a, Tensor):
        return add(b, a) if alpha == 1 and isinstance(b, Tensor) else add(_wrap(a), b, alpha)
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, Tensor) else b * alpha
    x, z, bt = _operands("add", a, b)
    y = x + z
    sa = a.array.shape

    if bt is None:
        return from_op(y, (a,), lambda gy: (sum_to(gy, sa),), "add")
    sb = bt.array.shape

    def backward(gy):
        return sum_to(gy, sa), sum_to(gy, sb)
    return from_op(y, (a, bt), backward, "add")


def sub(a, b, alpha=1):
    """a - alpha * b, with broadcasting."""
    if not isinstance(a, Tensor):
        return rsub(b, a, alpha)
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, Tensor) else b * alpha
    x, z, bt = _operands("sub", a, b)
    if x.dtype.kind == "b":
        raise RuntimeError("sub: subtraction of bool tensors is not supported; "
                           "use logical_xor or ~ instead.")
    y = x - z
    sa = a.array.shape
    if bt is None:
        return from_op(y, (a,), lambda gy: (sum_to(gy, sa),), "sub")
    sb = bt.array.shape

    def backward(gy):
        return sum_to(gy, sa), sum_to(-gy, sb)
    return from_op(y, (a, bt), backward, "sub")


def rsub(a, b, alpha=1):
    """b - alpha * a (b is usually a Python scalar)."""
    if isinstance(b, Tensor):
        return sub(b, a, alpha)
    return add(neg(a) if alpha == 1 else mul(a, -alpha), b)


def mul(a, b):
    """Elementwise a * b, with broadcasting."""
    if not isinstance(a, Tensor):
        return mul(b, a) if isinstance(b, Tensor) else mul(_wrap(a), b)
    x, z, bt = _operands("mul", a, b)
    y = x * z
    sa = a.array.shape
    if bt is None:
        return from_op(y, (a,), lambda gy: (mul(gy, b),), "mul")
    sb = bt.array.shape

    def backward(gy):
        # A broadcast input gets its gradient summed back to its own shape.
        return (sum_to(gy * bt, sa) if a.requires_grad else None,
                sum_to(gy * a, sb) if bt.requires_grad else None)
    return from_op(y, (a, bt), backward, "mul")


def div(a, b, rounding_mode=None):
    """a / b (true division: integer inputs give a float result, as PyTorch)."""
    if rounding_mode is not None:
        if rounding_mode == "floor":
            return floor_divide(a, b)
        if rounding_mode == "trunc":  # not differentiable, as floor division
            x, z, _ = _operands("div", _wrap(a), b)
            q = _xp(_wrap(a)).trunc(x / z)
            return _new(q if x.dtype.kind == "f" else q.astype(x.dtype))
        raise ValueError(f"div: rounding_mode must be None, 'floor' or 'trunc', got {rounding_mode!r}")
    if not isinstance(a, Tensor):
        return mul(reciprocal(b), a) if isinstance(b, Tensor) else div(_wrap(a), b)
    x, z, bt = _operands("div", a, b)
    if x.dtype.kind != "f":
        x = x.astype(dtypes.get_default_dtype())
        z = z.astype(x.dtype) if bt is not None else z
    y = x / z
    sa = a.array.shape
    if bt is None:
        return from_op(y, (a,), lambda gy: (gy / b,), "div")
    sb = bt.array.shape

    def backward(gy):
        return (sum_to(gy / bt, sa) if a.requires_grad else None,
                sum_to(-gy * a / (bt * bt), sb) if bt.requires_grad else None)
    return from_op(y, (a, bt), backward, "div")


def floor_divide(a, b):
    """a // b (not differentiable, as in PyTorch)."""
    a = _wrap(a)
    x, z, _ = _operands("floor_divide", a, b)
    return _new(x // z)


def remainder(a, b):
    """a % b with Python's sign convention (differentiable in a)."""
    a = _wrap(a)
    x, z, bt = _operands("remainder", a, b)
    y = x % z
    return from_op(y, (a,), lambda gy: (gy,), "remainder")


def neg(a):
    """-a."""
    if a.array.dtype.kind == "b":
        raise RuntimeError("neg: negation of a bool tensor is not supported; use ~ instead.")
    return from_op(-a.array, (a,), lambda gy: (-gy,), "neg")


def pow(a, b):
    """a ** b for a Tensor base and a Tensor or Python-number exponent."""
    if not isinstance(a, Tensor):
        return rpow(b, a)
    x, z, bt = _operands("pow", a, b)
    if bt is None:
        if x.dtype.kind in "iu" and isinstance(z, int) and z < 0:
            raise RuntimeError("pow: integers to negative integer powers are not allowed.")
        y = x ** z
        p = b

        def backward(gy):
            if p == 0:
                return (gy * 0,)
            if p == 2:
                return (gy * a * 2,)
            return (gy * p * a ** (p - 1),)
        return from_op(y, (a,), backward, "pow")
    y = x ** z
    sa, sb = a.array.shape, bt.array.shape

    def backward_t(gy, out):
        ga = sum_to(gy * bt * a ** (bt - 1), sa) if a.requires_grad else None
        gb = None
        if bt.requires_grad:
            # d/db a**b = a**b log a; 0 where a <= 0 (the limit for b > 0), as PyTorch
            loga = log(where(a > 0, a, 1.0))
            gb = sum_to(gy * out * loga, sb)
        return ga, gb
    return from_op(y, (a, bt), backward_t, "pow", save_output=True)


def rpow(s, a):
    """s ** a for a Python-number base and a Tensor exponent."""
    x = _to_float(a.array) if isinstance(s, float) else a.array
    y = s ** x
    ls = math.log(s) if s > 0 else float("nan")
    return from_op(y, (a,), lambda gy, out: (gy * out * ls,), "pow", save_output=True)


def reciprocal(a):
    """1 / a."""
    y = 1.0 / _to_float(a.array)
    return from_op(y, (a,), lambda gy, out: (-gy * out * out,), "reciprocal", save_output=True)


# ---------------------------------------------------------------------------------------------
# math


def exp(a):
    return from_op(_xp(a).exp(_to_float(a.array)), (a,), lambda gy, out: (gy * out,), "exp", save_output=True)


def _xp(a):
    return np if isinstance(a.array, np.ndarray) else backend.get_array_module(a.array)


def log(a):
    y = _xp(a).log(_to_float(a.array))
    return from_op(y, (a,), lambda gy: (gy / a,), "log")


def log1p(a):
    y = _xp(a).log1p(_to_float(a.array))
    return from_op(y, (a,), lambda gy: (gy / (a + 1),), "log1p")


def log2(a):
    return log(a) * (1.0 / math.log(2.0))


def log10(a):
    return log(a) * (1.0 / math.log(10.0))


def expm1(a):
    y = _xp(a).expm1(_to_float(a.array))
    return from_op(y, (a,), lambda gy, out: (gy * (out + 1),), "expm1", save_output=True)


def sqrt(a):
    y = _xp(a).sqrt(_to_float(a.array))
    return from_op(y, (a,), lambda gy, out: (gy / (out * 2),), "sqrt", save_output=True)


def rsqrt(a):
    xp = _xp(a)
    y = 1.0 / xp.sqrt(_to_float(a.array))
    return from_op(y, (a,), lambda gy, out: (gy * out * out * out * -0.5,), "rsqrt",
                   save_output=True)


def square(a):
    return mul(a, a)


def abs(a):
    y = _xp(a).abs(a.array)
    return from_op(y, (a,), lambda gy: (gy * sign(a),), "abs")


def sign(a):
    y = _xp(a).sign(a.array)
    return from_op(y, (a,), lambda gy: (gy * 0,), "sign")


def sin(a):
    y = _xp(a).sin(_to_float(a.array))
    return from_op(y, (a,), lambda gy: (gy * cos(a),), "sin")


def cos(a):
    y = _xp(a).cos(_to_float(a.array))
    return from_op(y, (a,), lambda gy: (-gy * sin(a),), "cos")


def tanh(a):
    y = _xp(a).tanh(_to_float(a.array))
    return from_op(y, (a,), lambda gy, out: (gy * (1 - out * out),), "tanh", save_output=True)


def sigmoid(a):
    xp = _xp(a)
    x = _to_float(a.array)
    # split by sign so exp never overflows: sigmoid(x) = exp(x) / (1 + exp(x)) for x < 0
    e = xp.exp(-xp.abs(x))
    y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
    return from_op(y, (a,), lambda gy, out: (gy * out * (1 - out),), "sigmoid", save_output=True)


def relu(a):
    xp = _xp(a)
    y = xp.maximum(a.array, 0).astype(a.array.dtype, copy=False)

    def backward(gy, out):
        if not _grad_state.enabled:  # first-order fast path
            return (_new(gy.array * (out.array > 0)),)
        return (gy * (out.array > 0),)
    return from_op(y, (a,), backward, "relu", save_output=True)


def erf(a):
    y = backend.erf(_xp(a), _to_float(a.array))
    c = 2.0 / math.sqrt(math.pi)
    return from_op(y, (a,), lambda gy: (gy * exp(-(a * a)) * c,), "erf")


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu(a, approximate: str = "none"):
    """GELU: x * Phi(x) (exact, with erf) or the tanh approximation."""
    if a.array.__class__ is not np.ndarray:  # fused CUDA kernel, see Note [Fused kernels]
        from ..cuda import kernels as _fused
        if _fused.applies_gelu(a, approximate):
            return _fused.gelu(a, approximate)
    xp = _xp(a)
    x = _to_float(a.array)
    if approximate == "tanh":
        k = math.sqrt(2.0 / math.pi)
        inner = k * (x + 0.044715 * x ** 3)
        y = (0.5 * x * (1 + xp.tanh(inner))).astype(x.dtype, copy=False)

        def backward_t(gy):
            t = tanh((a + a * a * a * 0.044715) * k)
            dinner = (1 + a * a * (3 * 0.044715)) * k
            return (gy * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * dinner),)
        return from_op(y, (a,), backward_t, "gelu")
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    y = (0.5 * x * (1 + backend.erf(xp, x * _SQRT1_2))).astype(x.dtype, copy=False)

    def backward(gy):
        cdf = (erf(a * _SQRT1_2) + 1) * 0.5
        pdf = exp(a * a * -0.5) * _INV_SQRT_2PI
        return (gy * (cdf + a * pdf),)
    return from_op(y, (a,), backward, "gelu")


def silu(a):
    """x * sigmoid(x)."""
    return mul(a, sigmoid(a))


def elu(a, alpha=1.0):
    """x where x > 0 else alpha * (exp(x) - 1)."""
    xp = _xp(a)
    x = _to_float(a.array)
    y = xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0))).astype(x.dtype, copy=False)

    def backward(gy, out):
        # d/dx: 1 above 0, out + alpha below (alpha * exp(x) without recomputing exp)
        return (gy * where(out > 0, 1.0, out + alpha),)
    return from_op(y, (a,), backward, "elu", save_output=True)


def softplus(a, beta=1.0, threshold=20.0):
    """log(1 + exp(beta x)) / beta, linear above threshold (as torch)."""
    xp = _xp(a)
    x = _to_float(a.array)
    bx = x * beta
    y = xp.where(bx > threshold, x, xp.logaddexp(0, bx) / beta).astype(x.dtype, copy=False)
    return from_op(y, (a,), lambda gy: (gy * where(a * beta > threshold, 1.0, sigmoid(a * beta)),),
                   "softplus")


def clamp(a, min=None, max=None):
    """Clamp to [min, max]; the gradient flows where the input was inside the range."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    xp = _xp(a)
    lo = min.array if isinstance(min, Tensor) else min
    hi = max.array if isinstance(max, Tensor) else max
    x = a.array
    if isinstance(lo, float) or isinstance(hi, float):
        x = _to_float(x)
    y = xp.clip(x, lo, hi)
    if y.dtype != x.dtype:
        y = y.astype(x.dtype)

    def backward(gy):
        mask = xp.ones(a.array.shape, bool)
        if lo is not None:
            mask &= a.array >= lo
        if hi is not None:
            mask &= a.array <= hi
        return (gy * mask,)
    # Tensor bounds are read (as raw arrays) in backward: record their versions too
    return from_op(y, (a,), backward, "clamp",
                   saved=tuple(v for v in (min, max) if isinstance(v, Tensor)))


def maximum(a, b):
    """Elementwise max; on ties the gradient is split evenly, as PyTorch."""
    return _minmax(a, b, True)


def minimum(a, b):
    """Elementwise min; on ties the gradient is split evenly, as PyTorch."""
    return _minmax(a, b, False)


def _minmax(a, b, is_max):
    a, b = _wrap(a), _wrap(b)
    x, z, _ = _operands("maximum" if is_max else "minimum", a, b)
    xp = _xp(a)
    y = xp.maximum(x, z) if is_max else xp.minimum(x, z)
    sa, sb = a.array.shape, b.array.shape

    def backward(gy):
        wa = (x > z) if is_max else (x < z)
        tie = (x == z) * 0.5
        wa = wa + tie
        wb = 1 - wa
        return sum_to(gy * wa, sa), sum_to(gy * wb, sb)
    return from_op(y, (a, b), backward, "maximum" if is_max else "minimum", saved=(a, b))


def _where_scalars(cond, a, b):
    """where() with two Python numbers: PyTorch's dtype (bool, else int64, else the default
    float dtype), on cond's device; nothing to differentiate."""
    kinds = {type(v) for v in (a, b)}
    if not kinds <= {bool, int, float}:
        raise TypeError(f"where: expected Tensors or Python numbers, got "
                        f"{type(a).__name__} and {type(b).__name__}")
    dt = (np.dtype(bool) if kinds == {bool} else np.dtype(np.int64) if float not in kinds
          else dtypes.get_default_dtype())
    xp = _xp(cond)
    return _new(xp.where(cond.array, xp.asarray(a, dt), xp.asarray(b, dt)))


def where(cond, a, b):
    """a where cond else b (a, b Tensors or Python numbers), with broadcasting."""
    c = cond.array if isinstance(cond, Tensor) else cond
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        ref = a if isinstance(a, Tensor) else b
    elif isinstance(cond, Tensor):
        return _where_scalars(cond, a, b)     # torch.where(outputs > 0.5, 1, 0)
    else:
        raise TypeError("where: expected cond, a or b to be a Tensor")
    at = a if isinstance(a, Tensor) else None
    bt = b if isinstance(b, Tensor) else None
    if at is not None and bt is not None:
        x, z, _ = _operands("where", at, bt)
    elif at is not None:
        x, z, _ = _operands("where", at, b)
    else:
        z, x, _ = _operands("where", bt, a)
    xp = _xp(ref)
    y = xp.where(c, x, z)
    if y.dtype != (x.dtype if backend.is_array(x) else z.dtype):
        y = y.astype(x.dtype if backend.is_array(x) else z.dtype)

    ct = cond if isinstance(cond, Tensor) else _new(c)  # captured: version-checked
    sa = at.array.shape if at is not None else None
    sb = bt.array.shape if bt is not None else None

    def backward(gy):
        ga = sum_to(where(ct, gy, 0.0), sa) if sa is not None else None
        gb = sum_to(where(ct, 0.0, gy), sb) if sb is not None else None
        return ga, gb
    return from_op(y, (at, bt), backward, "where")


# ---------------------------------------------------------------------------------------------
# comparisons and logic (not differentiable)


def _cmp(name, fn):
    def op(a, b):
        a = _wrap(a)
        x, z, _ = _operands(name, a, b)
        return _new(fn(x, z))
    op.__name__ = name
    op.__doc__ = f"Elementwise {name} -> bool tensor (not differentiable)."
    return op


import operator as _operator  # noqa: E402

eq = _cmp("eq", _operator.eq)
ne = _cmp("ne", _operator.ne)
lt = _cmp("lt", _operator.lt)
le = _cmp("le", _operator.le)
gt = _cmp("gt", _operator.gt)
ge = _cmp("ge", _operator.ge)


def _bitwise(name, fn):
    def op(a, b):
        a = _wrap(a)
        x, z, _ = _operands(name, a, b)
        if x.dtype.kind == "f":
            raise TypeError(f"{name}: expected bool or integer tensors, got {x.dtype}")
        return _new(fn(x, z))
    op.__name__ = name
    return op


logical_and_ = _bitwise("and", _operator.and_)
logical_or_ = _bitwise("or", _operator.or_)
logical_xor_ = _bitwise("xor", _operator.xor)


def logical_not(a):
    return _new(_xp(a).logical_not(a.array))


def logical_and(a, b):
    return _new(_xp(a).logical_and(a.array, _wrap(b).array))


def logical_or(a, b):
    return _new(_xp(a).logical_or(a.array, _wrap(b).array))


def invert(a):
    if a.array.dtype.kind == "f":
        raise TypeError("~: expected a bool or integer tensor, got a float tensor")
    return _new(~a.array)


def isnan(a):
    return _new(_xp(a).isnan(a.array))


def isinf(a):
    return _new(_xp(a).isinf(a.array))


def isfinite(a):
    return _new(_xp(a).isfinite(a.array))


def allclose(a, b, rtol=1e-5, atol=1e-8, equal_nan=False) -> bool:
    return bool(_xp(a).allclose(a.array, _wrap(b).array, rtol=rtol, atol=atol, equal_nan=equal_nan))


def equal(a, b) -> bool:
    return tuple(a.array.shape) == tuple(b.array.shape) and bool((a.array == b.array).all())


def floor(a):
    return from_op(_xp(a).floor(a.array), (a,), lambda gy: (gy * 0,), "floor")


def ceil(a):
    return from_op(_xp(a).ceil(a.array), (a,), lambda gy: (gy * 0,), "ceil")


def round(a, decimals=0):
    return from_op(_xp(a).round(a.array, decimals), (a,), lambda gy: (gy * 0,), "round")


def trunc(a):
    return from_op(_xp(a).trunc(a.array), (a,), lambda gy: (gy * 0,), "trunc")


def lerp(a, b, weight):
    return a + (b - a) * weight


def is_number(x) -> bool:
    return isinstance(x, Number)
