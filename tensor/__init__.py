"""zgrad's tensor layer: Tensor, autograd, nn, optim (the ``torch`` of zgrad).

    import tensor
    x = tensor.randn(3, 4, requires_grad=True)
    (x.relu() * 2).sum().backward()
"""
from __future__ import annotations

from . import _hostmem  # noqa: F401  (tunes glibc's allocator on import: Note [Host allocator])
from . import backend, dtypes
from ._grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from ._tensor import Size, Tensor
from . import _methods  # noqa: F401  (attaches ops to Tensor)
from . import _inplace_view  # noqa: F401,E402  (unsqueeze_, t_, ... on Tensor)
from .backend import device, get_default_device, set_default_device
from .creation import (arange, as_tensor, empty, empty_like, eye, from_numpy, full, full_like,
                       linspace, multinomial, normal, ones, ones_like, rand, rand_like, randint,
                       randint_like, randn, randn_like, randperm, tensor, zeros, zeros_like)
from .creation import (BoolTensor, ByteTensor, CharTensor, DoubleTensor, FloatTensor,  # noqa
                       HalfTensor, IntTensor, LongTensor, ShortTensor)
from .dtypes import (bfloat16, bool, double, float, float16, float32, float64, get_default_dtype,
                     half, int, int8, int16, int32, int64, long, set_default_dtype, short, uint8)
from .ops.elementwise import (abs, add, allclose, ceil, clamp, cos, div, equal, erf, exp, expm1,
                              floor, gelu, isfinite, isinf, isnan, log, log1p, log2, log10,
                              logical_and, logical_not, logical_or, maximum, minimum, mul, neg,
                              pow, reciprocal, relu, round, rsqrt, sigmoid, sign, silu, sin,
                              softplus, sqrt, square, sub, tanh, trunc, where)
from .ops.elementwise import eq, ge, gt, le, lt, ne  # noqa: F401
from .ops.linalg import bmm, dot, matmul, mm, outer
from .ops.nn import log_softmax, softmax
from .ops.sort import argsort, diag, sort, topk
from .ops.reduce import (all, amax, amin, any, argmax, argmin, count_nonzero, cumprod, cumsum,
                         logsumexp, max, mean, min, norm, prod, std, sum, var, var_mean)
from .ops.shape import (broadcast_to, cat, chunk, flatten, flip, gather, hstack, index_select,
                        masked_fill, movedim, narrow, permute, repeat, reshape, roll, scatter,
                        scatter_add, split, squeeze, stack, transpose, tril, triu, unbind,
                        unflatten, unsqueeze, vstack)
from .random import (Generator, default_generator, get_rng_state, initial_seed, manual_seed,
                     seed, set_rng_state)
from . import autograd  # noqa: E402
from ._out import with_out as _with_out

# torch.<fn>(..., out=t) writes into t (see tensor/_out.py); the Tensor methods take no out=.
(abs, add, bmm, cat, clamp, cos, cumsum, div, exp, log, matmul, maximum, minimum, mm, mul,
 neg, pow, sigmoid, sin, sqrt, stack, sub, sum, tanh, where) = map(_with_out, (
    abs, add, bmm, cat, clamp, cos, cumsum, div, exp, log, matmul, maximum, minimum, mm, mul,
    neg, pow, sigmoid, sin, sqrt, stack, sub, sum, tanh, where))

concat = concatenate = cat
clip = clamp
divide = div
multiply = mul
subtract = sub
t = lambda a: a.t()  # noqa: E731


def is_tensor(obj) -> bool:
    return isinstance(obj, Tensor)


def numel(t) -> int:
    return t.numel()


def clone(t):
    return t.clone()


def detach(t):
    return t.detach()


def is_floating_point(t) -> bool:
    return t.is_floating_point()


def __getattr__(name):
    # nn, optim and serialization load lazily so `import tensor` stays quick
    import importlib
    if name in ("nn", "optim", "futures", "amp", "accelerator", "backends", "distributions",
                "cuda"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in ("save", "load"):
        return getattr(importlib.import_module(f"{__name__}.serialization"), name)
    if name == "autocast":   # torch.autocast is torch.amp.autocast (the AMP recipe uses it)
        return importlib.import_module(f"{__name__}.amp").autocast
    raise AttributeError(f"module 'tensor' has no attribute {name!r}")
