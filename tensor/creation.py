"""Tensor creation: tensor, zeros, ones, arange, rand, ..., from_numpy (as PyTorch)."""
from __future__ import annotations

import numpy as np

from . import backend, dtypes
from . import random as _random
from ._tensor import Tensor, _new


def _device(dev):
    return backend.device(dev) if dev is not None else backend.get_default_device()


def _infer_dtype(arr: np.ndarray, data) -> np.dtype:
    k = arr.dtype.kind
    if isinstance(data, (np.ndarray, np.generic)) or backend.is_array(data):
        return dtypes.as_dtype(arr.dtype)
    if k == "f":
        return dtypes.get_default_dtype()
    if k in "iu":
        return dtypes.int64
    if k == "b":
        return dtypes.bool
    raise TypeError(f"tensor: could not infer a dtype from {type(data).__name__} with numpy "
                    f"dtype {arr.dtype}; expected numbers, bools or nested lists of them.")


def _to_array(data, dtype, device=None):
    """An array (numpy, or cupy for cuda) from Python data, arrays or Tensors."""
    if isinstance(data, Tensor):
        arr = data.array
    elif backend.is_array(data):
        arr = data
    else:
        if isinstance(data, (list, tuple)) and any(isinstance(v, Tensor) for v in data):
            data = [v.tolist() if isinstance(v, Tensor) else v for v in data]
        try:
            arr = np.asarray(data)
        except ValueError as e:
            raise ValueError(f"tensor: expected a rectangular nested sequence of numbers, "
                             f"got ragged data ({e})") from None
    dt = dtypes.as_dtype(dtype) if dtype is not None else _infer_dtype(arr, data)
    if arr.dtype != dt:
        arr = arr.astype(dt)
    if device is None and not isinstance(data, Tensor):
        device = backend.get_default_device()  # new data goes to the default device
    if device is not None:
        arr = backend.to_device(arr, backend.device(device))
    return arr


def tensor(data, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A new tensor holding a copy of `data` (lists, numbers, arrays, Tensors)."""
    arr = _to_array(data, dtype, device)
    src = data.array if isinstance(data, Tensor) else data
    if arr is src or (isinstance(arr, np.ndarray) and arr.base is not None and arr.base is src):
        arr = arr.copy()  # never alias the caller's array (np.asarray of a memmap is a view)
    t = _new(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like tensor(), but shares memory with an array or Tensor when dtype/device match."""
    if isinstance(data, Tensor) and dtype is None and device is None:
        return data
    return _new(_to_array(data, dtype, device))


def from_numpy(a: np.ndarray) -> Tensor:
    """A tensor sharing memory with numpy array `a` (writes are seen by both)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(a).__name__}")
    dtypes.as_dtype(a.dtype)
    return _new(a)


def _make(fn, size, dtype, device, requires_grad, default=None):
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    size = tuple(int(s) for s in size)
    for s in size:
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(size)}")
    dt = dtypes.as_dtype(dtype) if dtype is not None else (default or dtypes.get_default_dtype())
    xp = backend.xp_for(_device(device))
    t = _new(fn(xp, size, dt))
    if requires_grad:
        t.requires_grad_(True)
    return t


def zeros(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(lambda xp, s, d: xp.zeros(s, d), size, dtype, device, requires_grad)


def ones(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(lambda xp, s, d: xp.ones(s, d), size, dtype, device, requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(lambda xp, s, d: xp.empty(s, d), size, dtype, device, requires_grad)


def full(size, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    default = dtypes.scalar_dtype(fill_value) if not isinstance(fill_value, Tensor) else None
    return _make(lambda xp, s, d: xp.full(s, fill_value, d), (tuple(size),), dtype, device,
                 requires_grad, default)


def eye(n, m=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(lambda xp, s, d: xp.eye(n, m if m is not None else n, dtype=d), (), dtype,
                 device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False) -> Tensor:
    """Values in [start, end) with `step`; int64 unless an argument is a float."""
    if end is None:
        start, end = 0, start
    is_float = any(isinstance(v, float) for v in (start, end, step))
    default = dtypes.get_default_dtype() if is_float else dtypes.int64
    return _make(lambda xp, s, d: xp.arange(start, end, step).astype(d), (), dtype, device,
                 requires_grad, default)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False) -> Tensor:
    return _make(lambda xp, s, d: xp.linspace(start, end, steps).astype(d), (), dtype, device,
                 requires_grad)


def rand(*size, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    """U[0, 1) samples from `generator` (the default one unless given)."""
    dev = _device(device)
    return _make(lambda xp, s, d: _random.uniform_array(s, d, dev, generator), size, dtype,
                 device, requires_grad)


def randn(*size, generator=None, dtype=None, device=None, requires_grad=False) -> Tensor:
    """N(0, 1) samples from `generator`."""
    dev = _device(device)
    return _make(lambda xp, s, d: _random.normal_array(s, d, dev, generator), size, dtype,
                 device, requires_grad)


def randint(low, high=None, size=None, generator=None, dtype=None, device=None,
            requires_grad=False) -> Tensor:
    """Integers in [low, high), as torch.randint(low=0, high, size)."""
    if size is None:
        if high is None or not isinstance(high, (tuple, list)):
            raise TypeError("randint: expected randint(high, size) or randint(low, high, size)")
        low, high, size = 0, low, high
    elif high is None:
        low, high = 0, low
    dev = _device(device)
    return _make(lambda xp, s, d: _random.integers_array(low, high, s, d, dev, generator),
                 (tuple(size),), dtype, device, requires_grad, dtypes.int64)


def randperm(n, generator=None, dtype=None, device=None) -> Tensor:
    """A random permutation of 0..n-1 (int64)."""
    dev = _device(device)
    arr = _random.permutation_array(int(n), dev, generator)
    return _new(arr if dtype is None else arr.astype(dtypes.as_dtype(dtype)))


def multinomial(probs, num_samples, replacement=False, generator=None) -> Tensor:
    """Sample indices from (rows of) non-negative weights, as torch.multinomial."""
    p = backend.to_numpy(probs.array if isinstance(probs, Tensor) else np.asarray(probs))
    p = p.astype(np.float64)
    if p.ndim not in (1, 2):
        raise RuntimeError(f"multinomial: prob_dist must be 1 or 2 dim, got {p.ndim}")
    if (p < 0).any() or not np.isfinite(p).all():
        raise RuntimeError("multinomial: probabilities must be finite and non-negative")
    rng = _random._gen(generator).np_rng
    rows = p[None] if p.ndim == 1 else p
    out = []
    for row in rows:
        s = row.sum()
        if s <= 0:
            raise RuntimeError("multinomial: invalid distribution (sum of probabilities <= 0)")
        if not replacement and num_samples > (row > 0).sum():
            raise RuntimeError(f"multinomial: cannot sample {num_samples} > the "
                               f"{int((row > 0).sum())} non-zero categories without replacement")
        out.append(rng.choice(len(row), size=num_samples, replace=replacement, p=row / s))
    r = np.asarray(out, np.int64)
    dev = probs.device if isinstance(probs, Tensor) else backend.CPU  # as torch: probs' device
    return _new(backend.to_device(r[0] if p.ndim == 1 else r, dev))


def normal(mean, std, size=None, generator=None, dtype=None, device=None) -> Tensor:
    if size is None:
        raise TypeError("normal: give size=(...) for scalar mean/std")
    dev = _device(device)
    return _make(lambda xp, s, d: _random.normal_array(s, d, dev, generator, mean, std),
                 (tuple(size),), dtype, device, False)


def _like(fn):
    def like(t, dtype=None, device=None, requires_grad=False, **kw):
        return fn(t.array.shape, dtype=dtype if dtype is not None else t.array.dtype,
                  device=device if device is not None else t.device, requires_grad=requires_grad,
                  **kw)
    like.__name__ = fn.__name__ + "_like"
    like.__doc__ = f"{fn.__name__} with the shape (and by default dtype/device) of `t`."
    return like


zeros_like = _like(zeros)
ones_like = _like(ones)
empty_like = _like(empty)
rand_like = _like(rand)
randn_like = _like(randn)


def full_like(t, fill_value, dtype=None, device=None, requires_grad=False) -> Tensor:
    return full(t.array.shape, fill_value, dtype=dtype or t.array.dtype,
                device=device or t.device, requires_grad=requires_grad)


def randint_like(t, low, high=None, dtype=None, device=None) -> Tensor:
    return randint(low, high, tuple(t.array.shape), dtype=dtype or t.array.dtype,
                   device=device or t.device)


class _LegacyMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor) and obj.array.dtype == cls._dtype

    def __repr__(cls):
        return f"<class 'tensor.{cls.__name__}'>"


def _legacy(name, dtype):
    """torch.LongTensor & co: ``T(2, 3)`` is an uninitialised 2x3 tensor, ``T([1, 2])`` a
    tensor of that data; ``isinstance(t, T)`` checks the dtype."""
    def __new__(cls, *args, device=None):
        if len(args) == 1 and not isinstance(args[0], int):
            return tensor(args[0], dtype=dtype, device=device)
        return empty(*(args or (0,)), dtype=dtype, device=device)
    return _LegacyMeta(name, (), {"__new__": __new__, "_dtype": dtypes.as_dtype(dtype),
                                  "__doc__": _legacy.__doc__})


FloatTensor = _legacy("FloatTensor", "float32")
DoubleTensor = _legacy("DoubleTensor", "float64")
HalfTensor = _legacy("HalfTensor", "float16")
LongTensor = _legacy("LongTensor", "int64")
IntTensor = _legacy("IntTensor", "int32")
ShortTensor = _legacy("ShortTensor", "int16")
CharTensor = _legacy("CharTensor", "int8")
ByteTensor = _legacy("ByteTensor", "uint8")
BoolTensor = _legacy("BoolTensor", "bool")
