"""Autocast's state and cast policy (used by ops; the public API is tensor.amp.autocast).

Note [Autocast]
~~~~~~~~~~~~~~~
Inside ``amp.autocast(device_type, dtype)`` an op that consults the policy casts its floating
inputs first: ops in ``LOWER_PRECISION`` (matmul, linear, attention, and convolutions when they
join) run in the autocast dtype, ops in ``FLOAT32[device_type]`` run in float32: the losses on
both devices, and on CUDA also softmax, normalisation and logsumexp (PyTorch's CPU autocast
leaves those in the input's dtype, and so does zgrad's). The tables are keyed by op name, so
an op joins by decorating itself with ``@policy("its_name")`` and adding the name here. Casts
are differentiable (gradients come back in the input's dtype, as in PyTorch).

bfloat16 is *emulated*: numpy has no native bfloat16 (ml_dtypes' bfloat16 is a numpy
"void"-kind dtype, so every floating-point check in zgrad would need to learn it, and CuPy
has none), so a bfloat16 cast rounds float32 values to bfloat16's precision (8-bit mantissa,
round to nearest even) and keeps them in float32 storage; results then read as float32 in
``.dtype``. The arithmetic (bf16 inputs, float32 accumulation, a bf16-rounded result) is what
PyTorch's CPU bf16 matmul does. float16 is a real numpy/CuPy dtype and is used as such.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

LOWER_PRECISION = {"matmul", "linear", "conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d",
                   "bmm", "mm", "scaled_dot_product_attention"}
_LOSSES = {"nll_loss", "cross_entropy", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
           "binary_cross_entropy_with_logits", "binary_cross_entropy"}
FLOAT32 = {"cpu": _LOSSES,
           "cuda": _LOSSES | {"softmax", "log_softmax", "logsumexp", "layer_norm", "group_norm",
                              "norm", "sum", "prod", "cumsum"}}

BFLOAT16 = "bfloat16"  # the marker tensor.bfloat16 stands for (see the Note)


class _State(threading.local):
    dtype = None   # None: autocast off; else np.float16 or BFLOAT16
    device_type = None


state = _State()


def _round_bf16_array(x):
    """float32 values rounded to the nearest bfloat16 (ties to even), still float32."""
    u = x.astype(np.float32).view(np.uint32)
    r = ((u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000).astype(np.uint32)
    from .backend import get_array_module
    # NaNs keep their payload (rounding could carry one into infinity); a select, not a
    # branch on nan.any(), so a CuPy array is never read back to the host here
    return get_array_module(x).where(x != x, x.astype(np.float32), r.view(np.float32))


def round_bf16(t):
    """Differentiable rounding to bfloat16 precision (the gradient is rounded the same way)."""
    from ._tensor import from_op
    return from_op(_round_bf16_array(t.array), (t,), lambda gy: (round_bf16(gy),), "to_bf16")


def _cast(t, target):
    from ._tensor import Tensor
    if not isinstance(t, Tensor) or t.array.dtype.kind != "f":
        return t
    if target == BFLOAT16:
        return round_bf16(t.to(np.float32) if t.array.dtype != np.float32 else t)
    return t if t.array.dtype == target else t.to(target)


def cast_inputs(op: str, *tensors):
    """The op's floating inputs cast by the autocast policy (unchanged when autocast is off
    or the op is in neither table)."""
    dt = state.dtype
    if dt is None:
        return tensors
    if op in LOWER_PRECISION:
        return tuple(_cast(t, dt) for t in tensors)
    if op in FLOAT32[state.device_type]:
        return tuple(_cast(t, np.dtype(np.float32)) for t in tensors)
    return tensors


def policy(op: str):
    """Decorator: run the op under the autocast policy for `op` when autocast is on.

    The op's own inner ops see autocast off (they compute in what the policy chose), and a
    lower-precision op's result is rounded again under bf16 emulation.
    """
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            dt = state.dtype
            if dt is None:
                return fn(*args, **kwargs)
            args = cast_inputs(op, *args)
            kwargs = {k: (cast_inputs(op, v)[0]) for k, v in kwargs.items()}
            state.dtype = None
            try:
                y = fn(*args, **kwargs)
            finally:
                state.dtype = dt
            return round_bf16(y) if dt == BFLOAT16 and op in LOWER_PRECISION else y
        return wrapper
    return deco
