"""Parameter initialisation, as torch.nn.init: every function fills its tensor in place under
no_grad, draws from ``generator`` (the default generator when None, so ``tensor.manual_seed``
fixes them) and returns the tensor.
"""
from __future__ import annotations

import math

from .._grad_mode import no_grad
from .._tensor import Tensor

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity: str, param=None) -> float:
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain's table)."""
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one "
                     f"of {list(_LINEAR) + ['tanh', 'relu', 'leaky_relu', 'selu']}")


def _calculate_fan_in_and_fan_out(t: Tensor):
    if t.dim() < 2:
        raise ValueError(f"Fan in and fan out can not be computed for a tensor with fewer than 2 "
                         f"dimensions (got shape {list(t.shape)})")
    receptive = 1
    for s in t.shape[2:]:
        receptive *= s
    return t.shape[1] * receptive, t.shape[0] * receptive


def _calculate_correct_fan(t: Tensor, mode: str) -> int:
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(t: Tensor, a: float = 0.0, b: float = 1.0, generator=None) -> Tensor:
    """Fill t with U(a, b)."""
    with no_grad():
        return t.uniform_(a, b, generator=generator)


def normal_(t: Tensor, mean: float = 0.0, std: float = 1.0, generator=None) -> Tensor:
    """Fill t with N(mean, std^2)."""
    with no_grad():
        return t.normal_(mean, std, generator=generator)


def trunc_normal_(t: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0, generator=None) -> Tensor:
    """Fill t with N(mean, std^2) truncated to [a, b] (redrawing the values outside)."""
    if not a < b:
        raise ValueError(f"trunc_normal_: expected a < b, got a={a}, b={b}")
    with no_grad():
        t.normal_(mean, std, generator=generator)
        bad = (t.array < a) | (t.array > b)
        # rejection sampling: each round keeps the in-range draws (P(in) > 0 for a < b)
        for _ in range(1000):
            if not bool(bad.any()):
                break
            fresh = t.array.copy()
            Tensor(fresh).normal_(mean, std, generator=generator)
            t.array[bad] = fresh[bad]
            bad = (t.array < a) | (t.array > b)
        t.array.clip(a, b, out=t.array)
        t._vbox[0] += 1
    return t


def constant_(t: Tensor, val: float) -> Tensor:
    with no_grad():
        return t.fill_(val)


def ones_(t: Tensor) -> Tensor:
    return constant_(t, 1.0)


def zeros_(t: Tensor) -> Tensor:
    with no_grad():
        return t.zero_()


def eye_(t: Tensor) -> Tensor:
    """Fill a 2-D tensor with the identity (ones on the diagonal)."""
    if t.dim() != 2:
        raise ValueError(f"eye_: only 2-D tensors are supported, got shape {list(t.shape)}")
    from ..backend import get_array_module
    with no_grad():
        t.array[...] = get_array_module(t.array).eye(*t.shape, dtype=t.dtype)
        t._vbox[0] += 1
    return t


def xavier_uniform_(t: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    a = math.sqrt(3.0) * gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return uniform_(t, -a, a, generator)


def xavier_normal_(t: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def kaiming_uniform_(t: Tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None) -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan) (He et al., 2015)."""
    if 0 in t.shape:
        return t
    fan = _calculate_correct_fan(t, mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(t, -bound, bound, generator)


def kaiming_normal_(t: Tensor, a: float = 0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None) -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan)."""
    if 0 in t.shape:
        return t
    fan = _calculate_correct_fan(t, mode)
    return normal_(t, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator)


def orthogonal_(t: Tensor, gain: float = 1.0, generator=None) -> Tensor:
    """Fill t (>= 2-D, viewed as (t.shape[0], rest)) with a (semi-)orthogonal matrix times
    `gain` (Saxe et al., 2013), as torch.nn.init.orthogonal_: the Q of a QR factorisation of a
    standard normal matrix, its columns' signs fixed by diag(R) so Q is uniformly distributed.
    """
    if t.dim() < 2:
        raise ValueError(f"orthogonal_: only tensors with 2 or more dimensions are supported, "
                         f"got shape {list(t.shape)}")
    if t.numel() == 0:
        return t
    from ..backend import get_array_module
    rows = t.shape[0]
    cols = t.numel() // rows
    with no_grad():
        flat = t.new_empty((rows, cols)).normal_(0.0, 1.0, generator=generator).array
        xp = get_array_module(flat)
        if rows < cols:
            flat = flat.T
        q, r = xp.linalg.qr(flat.astype(xp.float64))
        q *= xp.sign(xp.diagonal(r))
        if rows < cols:
            q = q.T
        t.array[...] = (q * gain).reshape(t.shape).astype(t.array.dtype)
        t._vbox[0] += 1
    return t
