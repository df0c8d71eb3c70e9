"""Dtypes and PyTorch's type-promotion rules.

zgrad's dtypes are numpy dtypes (``tensor.float32 is numpy.dtype('float32')``), so an array's
dtype *is* its tensor's dtype and no per-op conversion is needed. ``Tensor.dtype`` hands out a
thin wrapper (``dtype`` below) that equals the numpy dtype and prints as PyTorch's. Promotion follows PyTorch, not
numpy: an int tensor times a Python float is float32 (the default float dtype), and a 0-dim
tensor does not widen a dimensioned tensor of the same category.
"""
from __future__ import annotations

import numpy as np

float16 = half = np.dtype("float16")
float32 = float = np.dtype("float32")
float64 = double = np.dtype("float64")
int8 = np.dtype("int8")
int16 = short = np.dtype("int16")
int32 = int = np.dtype("int32")
int64 = long = np.dtype("int64")
uint8 = np.dtype("uint8")
bool = np.dtype("bool")  # noqa: A001 - PyTorch's name


class _BFloat16:
    """``tensor.bfloat16``: a name for amp.autocast, not a tensor dtype (numpy has none;
    see Note [Autocast] in tensor/_autocast.py)."""

    name = "bfloat16"
    is_floating_point = True
    itemsize = 2

    def __repr__(self):
        return "tensor.bfloat16"


bfloat16 = _BFloat16()

_DTYPES = {"float16": float16, "half": float16, "float32": float32, "float": float32,
           "float64": float64, "double": float64, "int8": int8, "int16": int16, "short": int16,
           "int32": int32, "int": int32, "int64": int64, "long": int64, "uint8": uint8,
           "bool": bool}

_default_float = [float32]


def get_default_dtype() -> np.dtype:
    """The dtype of float tensors made from Python floats (float32 unless changed)."""
    return _default_float[0]


def set_default_dtype(d) -> None:
    """Set the default float dtype (float16, float32 or float64), as torch.set_default_dtype."""
    d = as_dtype(d)
    if d.kind != "f":
        raise TypeError(f"set_default_dtype: expected a floating dtype, got {d}")
    _default_float[0] = d
    _CACHE.clear()


def as_dtype(d) -> np.dtype:
    """Normalise a dtype spec (tensor.float32, 'float32', numpy types) to a numpy dtype."""
    if d is None:
        return None
    if d is bfloat16 or (isinstance(d, str) and d.split(".")[-1] == "bfloat16"):
        raise TypeError("bfloat16 tensors are not supported (numpy has no bfloat16 dtype); "
                        "use tensor.amp.autocast('cpu', dtype=tensor.bfloat16), which emulates "
                        "it, or float16/float32.")
    if isinstance(d, np.dtype):
        out = d
    elif isinstance(d, dtype):
        out = d.dtype
    elif isinstance(d, str):
        out = _DTYPES.get(d.replace("tensor.", "").replace("torch.", ""))
        if out is None:
            raise TypeError(f"unknown dtype {d!r}; expected one of {sorted(_DTYPES)}")
    else:
        import builtins
        if d is builtins.float:
            return get_default_dtype()
        if d is builtins.int:
            return int64
        if d is builtins.bool:
            return bool
        out = np.dtype(d)
    if out.name not in _DTYPES:
        raise TypeError(f"dtype {out} is not supported; expected one of float16/32/64, "
                        "int8/16/32/64, uint8, bool")
    return out


builtins_bool = type(True)

# category: 0 bool, 1 integer, 2 float
_CAT = {"b": 0, "u": 1, "i": 1, "f": 2}
_CACHE: dict = {}


def result_type(a: np.dtype, b: np.dtype, a_dim0: builtins_bool, b_dim0: builtins_bool) -> np.dtype:
    """PyTorch's promotion of two tensor dtypes; 0-dim tensors only win across categories."""
    if a == b:
        return a
    key = (a, b, a_dim0, b_dim0)
    r = _CACHE.get(key)
    if r is None:
        ca, cb = _CAT[a.kind], _CAT[b.kind]
        if a_dim0 != b_dim0:
            dim_t, zero_t = (b, a) if a_dim0 else (a, b)
            r = dim_t if _CAT[dim_t.kind] >= _CAT[zero_t.kind] else zero_t
        elif ca != cb:
            r = a if ca > cb else b   # int64 + float16 -> float16, as PyTorch (numpy says float64)
        else:
            r = np.promote_types(a, b)
        _CACHE[key] = r
    return r


def scalar_result_type(d: np.dtype, s) -> np.dtype:
    """Dtype of (tensor of dtype d) op (Python scalar s), as PyTorch: the scalar is weak."""
    t = type(s)
    if t is builtins_bool:
        return d
    if t is type(1):
        return int64 if d.kind == "b" else d
    if t is type(1.0):
        return d if d.kind == "f" else get_default_dtype()
    if isinstance(s, np.generic):  # numpy scalars behave like Python scalars of their kind
        return scalar_result_type(d, s.item())
    raise TypeError(f"expected a Tensor or a Python number, got {t.__name__}")


def scalar_dtype(s) -> np.dtype:
    """Dtype of a tensor made from a Python scalar."""
    t = type(s)
    if t is builtins_bool:
        return bool
    if t is type(1):
        return int64
    if t is type(1.0):
        return get_default_dtype()
    if isinstance(s, np.generic):
        return np.dtype(s.dtype)
    raise TypeError(f"expected a Python number, got {t.__name__}")


class dtype:
    """What ``Tensor.dtype`` returns: the numpy dtype, printed as PyTorch prints its dtypes.

    ``print(t.dtype)`` shows ``tensor.float32`` (a script that prints ``x.dtype`` reads as
    it does under PyTorch), while the object compares and hashes equal to the numpy dtype
    (``t.dtype == tensor.float32``, dict keys, ``in`` tests) and numpy and CuPy accept it
    wherever they take a dtype (through its ``.dtype`` attribute). The module-level names
    (``tensor.float32``) stay the numpy dtypes themselves, so ``t.dtype is tensor.float32`` is
    False: compare dtypes with ``==``.
    """

    __slots__ = ("dtype",)

    def __init__(self, np_dtype):
        object.__setattr__(self, "dtype", np_dtype)

    def __getattr__(self, name):  # kind, itemsize, name, char, ... from the numpy dtype
        return getattr(object.__getattribute__(self, "dtype"), name)

    def __eq__(self, other):
        if isinstance(other, dtype):
            other = other.dtype
        try:
            return self.dtype == other
        except TypeError:
            return False

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self.dtype)

    def __repr__(self):
        return f"tensor.{self.dtype.name}"

    __str__ = __repr__

    def __reduce__(self):
        return (dtype, (self.dtype,))

    @property
    def is_floating_point(self) -> bool:
        return self.dtype.kind == "f"

    @property
    def is_signed(self) -> bool:
        return self.dtype.kind in "if"


_WRAPPED = {}


def wrap(np_dtype) -> dtype:
    """The (cached) printable dtype for a numpy dtype."""
    w = _WRAPPED.get(np_dtype)
    if w is None:
        w = _WRAPPED[np_dtype] = dtype(np_dtype)
    return w
