"""Attach the op functions to Tensor as methods and operators (PyTorch's method names)."""
from __future__ import annotations

from . import backend, dtypes
from ._tensor import Tensor, from_op
from .ops import elementwise as E
from .ops import index as I
from .ops import linalg as L
from .ops import nn as N
from .ops import reduce as R
from .ops import shape as S
from .ops import sort as O


def _to_device(a, dev, non_blocking=False):
    dev = backend.device(dev)
    if a.device == dev:
        return a
    src = a.device
    y = backend.to_device(a.array, dev, non_blocking=non_blocking)
    return from_op(y, (a,), lambda gy: (gy.to(src),), "to")


def pin_memory(self):
    """A copy in page-locked host memory, so .to('cuda', non_blocking=True) runs async (as
    Tensor.pin_memory; raises without CUDA, as PyTorch's CPU-only builds do)."""
    if self.device.type != "cpu":
        raise RuntimeError(f"pin_memory: the tensor is on {self.device}; only CPU tensors can "
                           "be pinned.")
    if backend.is_pinned(self.array):
        return self
    return from_op(backend.pin_array(self.array), (self,), lambda gy: (gy,), "pin_memory")


def to(self, *args, **kwargs):
    """to(dtype) / to(device) / to(device, dtype) / to(other): a moved and/or cast tensor."""
    dev = kwargs.pop("device", None)
    dt = kwargs.pop("dtype", None)
    non_blocking = bool(kwargs.pop("non_blocking", False))
    copy = kwargs.pop("copy", False)
    if kwargs:
        raise TypeError(f"to(): unexpected arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            dev, dt = a.device, a.dtype
        elif isinstance(a, backend.device) or (isinstance(a, str) and a.split(":")[0] in
                                                ("cpu", "cuda")):
            dev = a
        elif isinstance(a, int) and not isinstance(a, bool):
            dev = backend.device("cuda", a)
        else:
            dt = a
    out = self
    if dev is not None:
        out = _to_device(out, dev, non_blocking)
    if dt is not None:
        out = S.to_dtype(out, dt)
    if copy and out is self:
        out = S.clone(self)
    return out


def _r(fn):
    return lambda a, b: fn(b, a)


def _inplace_method(name, fn):
    def method(self, *args, **kw):
        return I.inplace(self, fn, *args, op=name, **kw)
    method.__name__ = name
    method.__doc__ = f"In-place version of {fn.__name__} (bumps the version counter)."
    return method


def _random_fill(name, make):
    def method(self, *args, generator=None, **kw):
        y = make(self, *args, generator=generator, **kw)
        # recorded like any in-place op: the new values do not depend on the old ones
        return I.inplace(self, lambda old: from_op(y, (old,), lambda gy: (gy * 0,), name),
                         op=name)
    method.__name__ = name
    return method


def _uniform(self, a=0.0, b=1.0, generator=None):
    from . import random
    return random.uniform_array(self.array.shape, self.array.dtype, self.device, generator, a, b)


def _normal(self, mean=0.0, std=1.0, generator=None):
    from . import random
    return random.normal_array(self.array.shape, self.array.dtype, self.device, generator, mean, std)


def _bernoulli(self, p=0.5, generator=None):
    from . import random
    return random.uniform_array(self.array.shape, "float64", self.device, generator) < p


def _random_int(self, low=0, high=None, generator=None):
    from . import random
    if high is None:
        low, high = 0, (low if low else 2 ** 31)
    return random.integers_array(low, high, self.array.shape, self.array.dtype, self.device,
                                 generator)


def _install():
    T = Tensor
    # operators
    T.__add__ = E.add
    T.__radd__ = E.add  # commutative: a Python scalar stays a scalar (no CPU tensor on cuda)
    T.__sub__ = E.sub
    T.__rsub__ = lambda a, b: E.rsub(a, b)
    T.__mul__ = E.mul
    T.__rmul__ = E.mul
    T.__truediv__ = E.div
    T.__rtruediv__ = lambda a, b: E.mul(E.reciprocal(a), b)
    T.__floordiv__ = E.floor_divide
    T.__rfloordiv__ = lambda a, b: E.floor_divide(E._wrap(b), a)
    T.__mod__ = E.remainder
    T.__pow__ = E.pow
    T.__rpow__ = lambda a, b: E.rpow(b, a)
    T.__matmul__ = L.matmul
    T.__rmatmul__ = _r(L.matmul)
    T.__neg__ = E.neg
    T.__pos__ = lambda a: a
    T.__abs__ = E.abs
    T.__invert__ = E.invert
    T.__and__ = E.logical_and_
    T.__or__ = E.logical_or_
    T.__xor__ = E.logical_xor_
    T.__rand__ = _r(E.logical_and_)
    T.__ror__ = _r(E.logical_or_)
    T.__eq__ = E.eq
    T.__ne__ = E.ne
    T.__lt__ = E.lt
    T.__le__ = E.le
    T.__gt__ = E.gt
    T.__ge__ = E.ge
    T.__getitem__ = I.getitem
    T.__setitem__ = I.setitem
    # methods with PyTorch's names
    for name, fn in dict(
            add=E.add, sub=E.sub, mul=E.mul, div=E.div, pow=E.pow, neg=E.neg, exp=E.exp,
            log=E.log, log1p=E.log1p, log2=E.log2, log10=E.log10, expm1=E.expm1, sqrt=E.sqrt,
            rsqrt=E.rsqrt, square=E.square, abs=E.abs, sign=E.sign, sin=E.sin, cos=E.cos,
            tanh=E.tanh, sigmoid=E.sigmoid, relu=E.relu, erf=E.erf, clamp=E.clamp, clip=E.clamp,
            maximum=E.maximum, minimum=E.minimum, reciprocal=E.reciprocal, floor=E.floor,
            ceil=E.ceil, round=E.round, trunc=E.trunc, remainder=E.remainder,
            floor_divide=E.floor_divide, lerp=E.lerp,
            eq=E.eq, ne=E.ne, lt=E.lt, le=E.le, gt=E.gt, ge=E.ge, logical_not=E.logical_not,
            logical_and=E.logical_and, logical_or=E.logical_or, isnan=E.isnan, isinf=E.isinf,
            isfinite=E.isfinite, allclose=E.allclose, equal=E.equal,
            sum=R.sum, mean=R.mean, prod=R.prod, max=R.max, min=R.min, amax=R.amax, amin=R.amin,
            argmax=R.argmax, argmin=R.argmin, var=R.var, std=R.std, logsumexp=R.logsumexp,
            norm=R.norm, all=R.all, any=R.any, cumsum=R.cumsum, cumprod=R.cumprod,
            count_nonzero=R.count_nonzero,
            reshape=S.reshape, view=S.view, permute=S.permute, transpose=S.transpose, t=S.t_,
            squeeze=S.squeeze, unsqueeze=S.unsqueeze, flatten=S.flatten, unflatten=S.unflatten,
            expand=S.expand, expand_as=S.expand_as, broadcast_to=S.broadcast_to,
            repeat=S.repeat, contiguous=S.contiguous, clone=S.clone, narrow=S.narrow,
            split=S.split, chunk=S.chunk, unbind=S.unbind, flip=S.flip, roll=S.roll,
            gather=S.gather, scatter_add=S.scatter_add, scatter=S.scatter,
            masked_fill=S.masked_fill, tril=S.tril, triu=S.triu, index_select=S.index_select,
            movedim=S.movedim, matmul=L.matmul, mm=L.mm, bmm=L.bmm, dot=L.dot,
            softmax=N.softmax, log_softmax=N.log_softmax, to=to, sort=O.sort,
            argsort=O.argsort, topk=O.topk, diag=O.diag, msort=lambda a: O.sort(a, 0).values,
            elu=E.elu).items():
        setattr(T, name, fn)
    T.T = property(S.T)
    T.mT = property(S.mT)
    T.view_as = lambda a, o: S.view(a, o.array.shape)
    T.reshape_as = lambda a, o: S.reshape(a, o.array.shape)
    T.type_as = lambda a, o: S.to_dtype(a, o.array.dtype)
    T.where = lambda a, cond, b: E.where(cond, a, b)
    T.cpu = lambda a: _to_device(a, "cpu")
    T.cuda = lambda a, device=None, non_blocking=False: _to_device(
        a, backend.device("cuda", device), non_blocking)
    T.pin_memory = pin_memory
    T.is_pinned = lambda a: backend.is_pinned(a.array)
    for name, dt in (("float", dtypes.float32), ("double", dtypes.float64),
                     ("half", dtypes.float16), ("long", dtypes.int64), ("int", dtypes.int32),
                     ("short", dtypes.int16), ("bool", dtypes.bool), ("byte", dtypes.uint8),
                     ("char", dtypes.int8)):
        setattr(T, name, (lambda d: lambda a: S.to_dtype(a, d))(dt))
    T.type = lambda a, dtype=None: (f"tensor.{a.array.dtype.name}" if dtype is None
                                    else S.to_dtype(a, dtype))
    for name, fn in dict(new_zeros="zeros", new_ones="ones", new_empty="empty").items():
        setattr(T, name, (lambda f: lambda a, *size, dtype=None, device=None, requires_grad=False:
                          getattr(_creation(), f)(*size, dtype=dtype or a.array.dtype,
                                                  device=device or a.device,
                                                  requires_grad=requires_grad))(fn))
    T.new_full = lambda a, size, v, dtype=None, device=None: _creation().full(
        size, v, dtype=dtype or a.array.dtype, device=device or a.device)
    T.new_tensor = lambda a, data, dtype=None, device=None: _creation().tensor(
        data, dtype=dtype or a.array.dtype, device=device or a.device)
    # in-place ops (Note [In-place ops])
    for name, fn in dict(add_=E.add, sub_=E.sub, mul_=E.mul, div_=E.div, pow_=E.pow,
                         neg_=E.neg, exp_=E.exp, log_=E.log, sqrt_=E.sqrt, abs_=E.abs,
                         tanh_=E.tanh, sigmoid_=E.sigmoid, relu_=E.relu, clamp_=E.clamp,
                         elu_=E.elu, silu_=E.silu,
                         clip_=E.clamp, masked_fill_=S.masked_fill, scatter_add_=S.scatter_add,
                         scatter_=S.scatter, fill_=I.filled, copy_=I.copy_from,
                         tril_=S.tril, triu_=S.triu, floor_=E.floor, round_=E.round,
                         maximum_=E.maximum, minimum_=E.minimum, lerp_=E.lerp).items():
        setattr(T, name, _inplace_method(name, fn))
    # augmented assignment is in place, as in PyTorch: `p -= lr * p.grad` writes into p's
    # storage (without these, Python falls back to `p = p - ...` and silently rebinds the name)
    for name, fn in dict(__iadd__=E.add, __isub__=E.sub, __imul__=E.mul, __itruediv__=E.div,
                         __ifloordiv__=E.floor_divide, __imod__=E.remainder, __ipow__=E.pow,
                         __imatmul__=L.matmul, __iand__=E.logical_and_, __ior__=E.logical_or_,
                         __ixor__=E.logical_xor_).items():
        setattr(T, name, _inplace_method(name, fn))
    for name, fn in dict(floor_divide_=E.floor_divide, remainder_=E.remainder,
                         bitwise_and_=E.logical_and_, bitwise_or_=E.logical_or_,
                         bitwise_xor_=E.logical_xor_).items():
        setattr(T, name, _inplace_method(name, fn))
    T.zero_ = lambda a: I.inplace(a, I.filled, 0, op="zero_")
    T.addcmul_ = lambda a, t1, t2, value=1: I.inplace(a, lambda x: x + t1 * t2 * value,
                                                      op="addcmul_")
    T.addcdiv_ = lambda a, t1, t2, value=1: I.inplace(a, lambda x: x + t1 / t2 * value,
                                                      op="addcdiv_")
    T.uniform_ = _random_fill("uniform_", _uniform)
    T.normal_ = _random_fill("normal_", _normal)
    T.bernoulli_ = _random_fill("bernoulli_", _bernoulli)
    T.random_ = _random_fill("random_", _random_int)


def _creation():
    from . import creation
    return creation


_install()
