"""The fake device array and the ``cupy`` module namespace over numpy (see Note [Fake CuPy]).

``ndarray`` wraps a numpy array and behaves as CuPy's where the two differ in ways that break
code written for numpy:
  - mixing with a numpy array (``fake + np_array``, ``xp.where(m, np_a, b)``, ``np.asarray(fake)``,
    ``fake[...] = np_array``) raises TypeError, as CuPy's kernels and implicit conversion do;
  - reductions and element indexing return 0-d arrays, never numpy scalars;
  - a numpy function called on it dispatches to the fake module (``__array_function__``) and
    fails when CuPy lacks the function (the names CuPy lacks that zgrad could reach are listed
    in ``MISSING``);
  - ``ufunc.at`` accepts only the dtypes CuPy's scatter kernels do (no int64, no bool);
  - its random Generator has only the methods CuPy's has (no ``normal``, ``permutation``, ...),
    and its draws are a function of ``bit_generator._state`` (a device array, as cuRAND's).
``.data.ptr`` is the address of the numpy memory, so pointer tables and runtime copies work.
Every name served is noted in ``USED``; ``missing_in(cupy)`` lists those the real CuPy lacks.
"""
from __future__ import annotations

import atexit
import types
import weakref

import numpy as np

from . import runtime

# top-level names, ndarray attributes and Generator methods numpy has and CuPy 14.2 lacks
MISSING = {"errstate", "seterr", "geterr", "add_docstring", "asfarray", "msort", "alltrue",
           "sometrue", "product", "cumproduct", "in1d", "row_stack", "trapz", "float128",
           "complex256", "longdouble", "object_", "str_", "bytes_", "void", "datetime64",
           "timedelta64", "char", "rec", "ma", "ctypeslib", "polynomial", "nditer",
           "ndenumerate", "ndindex", "frompyfunc", "vectorize", "piecewise", "apply_along_axis",
           "apply_over_axes", "memmap", "format_parser", "recarray", "chararray", "matrix",
           "asmatrix", "bmat", "busday_count", "is_busday", "datetime_as_string", "nanpercentile"}
MISSING_ATTR = {"itemset", "ctypes", "__array_interface__", "tostring", "newbyteorder",
                "setflags", "resize", "getfield", "setfield", "byteswap", "dumps", "partition"}
GENERATOR_METHODS = {"random", "standard_normal", "integers", "uniform", "beta", "binomial",
                     "exponential", "gamma", "poisson", "standard_exponential", "standard_gamma"}
AT_DTYPES = {np.dtype(t) for t in ("int32", "uint32", "uint64", "float16", "float32", "float64")}

BY_PTR = weakref.WeakValueDictionary()  # data pointer -> the array whose .data gave it out
LIVE = weakref.WeakValueDictionary()    # id -> every fake array alive: the device memory, for
                                        # Note [Fake graph capture]


_ALLOCATED = weakref.WeakValueDictionary()  # id -> numpy buffers an allocator gave out


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def snapshot():
    """A copy of every device buffer alive (begin_capture)."""
    roots = {}
    for w in list(LIVE.values()):
        r = _root(w._a)
        roots.setdefault(id(r), (r, r.copy()))
    return roots


def restore(snap):
    """Give the buffers of snapshot() their contents back; fill float buffers made since then
    with NaN (end_capture: the capture ran nothing, they are uninitialised)."""
    for r, saved in snap.values():
        np.copyto(r, saved)
    for w in list(LIVE.values()):
        r = _root(w._a)
        if id(r) not in snap and r.dtype.kind in "fc" and r.flags.writeable:
            r[...] = np.nan


def _refill(out, new):
    """Replay of an op that made `out`: its new result goes into out's buffer."""
    if isinstance(out, ndarray):
        if out._a is not new:
            np.copyto(out._a, new, casting="unsafe")
    elif isinstance(out, (tuple, list)) and isinstance(new, (tuple, list)):
        for o, n in zip(out, new):
            _refill(o, n)


def _mixed(where):
    raise TypeError(f"fake cupy: a numpy array reached {where}; CuPy refuses to mix host "
                    "and device arrays (use xp = backend.get_array_module(x) and xp.asarray).")


def unwrap(v, where, allow_numpy=False):
    """Inner numpy arrays of fakes in v (recursively); a real numpy array is an error."""
    if isinstance(v, ndarray):
        return v._a
    if type(v) is np.ndarray:
        if not allow_numpy and v.ndim > 0:
            _mixed(where)
        return v
    if isinstance(v, (list, tuple)):
        return type(v)(unwrap(e, where, allow_numpy) for e in v)
    if isinstance(v, dict):
        return {k: unwrap(e, where, allow_numpy) for k, e in v.items()}
    return v


def _wrap(v, parent=None):
    """Fakes around the numpy arrays in v; a view of parent's memory gets parent's owner as
    its ``base`` (CuPy's views keep their owner alive and report it, as numpy's do)."""
    if isinstance(v, np.ndarray):
        w = ndarray(v)
        if parent is not None and v.base is not None and (v.base is parent._a or
                                                          v.base is parent._a.base):
            w._own, w._dev = (parent if parent._own is None else parent._own), parent._dev
        return w
    if isinstance(v, np.generic):
        return ndarray(np.asarray(v))
    if isinstance(v, tuple):
        return tuple(_wrap(e, parent) for e in v)
    if isinstance(v, list):
        return [_wrap(e, parent) for e in v]
    return v


USED = set()  # (where, sorted keyword names) of every call: see missing_in()


def _dump_used():  # for a run whose USED another process checks (ZGRAD_FAKE_USED_OUT)
    import json
    import os
    out = os.environ.get("ZGRAD_FAKE_USED_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(sorted([w, list(k)] for w, k in USED), f)


atexit.register(_dump_used)


def missing_in(cupy) -> list:
    """The functions and ndarray methods the fake served (USED), and the cupy.cuda names it
    has, that the real `cupy` lacks: where the fake is more lenient than CuPy (run on a
    machine with CuPy)."""
    out = []
    for where, _ in sorted(USED):
        if where.startswith("cupy.") and not where.endswith(".at"):
            obj = cupy
            for part in where.split(".")[1:]:
                obj = getattr(obj, part, None)
            if obj is None:
                out.append(where)
        elif where.startswith("ndarray.") and not hasattr(cupy.ndarray, where[8:]):
            out.append(where)
    for prefix, fake, real in (("cupy.cuda.", runtime.cuda, cupy.cuda),  # the fake's runtime too
                               ("cupy.cuda.runtime.", runtime.runtime, cupy.cuda.runtime)):
        out += [prefix + n for n in vars(fake) if n[0] != "_" and n != "nccl"
                and not hasattr(real, n)]
    return out


_NO_NODE = ("empty", "empty_like")   # allocations: no graph node


def _call(fn, where, args, kw, allow_numpy=False, parent=None):
    USED.add((where, tuple(sorted(kw))))
    if parent is None:
        parent = next((a for a in args if isinstance(a, ndarray)), None)
    ua, ukw = unwrap(args, where, allow_numpy), unwrap(kw, where, allow_numpy)
    out = _wrap(fn(*ua, **ukw), parent)
    if not where.endswith(_NO_NODE):
        runtime.record(lambda: _refill(out, fn(*ua, **ukw)))
    return out


def _host_read():
    """A device -> host read waits for the stream: CUDA refuses that inside a capture, and
    under cupyx.allow_synchronize(False) CuPy raises DeviceSynchronized."""
    runtime._no_sync_in_capture(runtime.get_current_stream())
    runtime._declare_synchronize()


def _wrapped_index(shape, key):
    """key with its integer-array parts taken modulo their axis' size: CuPy's integer-array
    indexing (getitem, setitem, take, take_along_axis, scatter) wraps out-of-range indices
    where numpy raises (CuPy's documented difference; Note [Device asserts] relies on it)."""
    parts = list(key) if isinstance(key, tuple) else [key]

    def width(p):  # the axes p consumes
        if p is None:
            return 0
        if isinstance(p, np.ndarray) and p.dtype == np.bool_:
            return p.ndim
        return 1
    axis, out = 0, []
    for i, p in enumerate(parts):
        if p is Ellipsis:
            axis = len(shape) - sum(width(q) for q in parts[i + 1:] if q is not Ellipsis)
            out.append(p)
            continue
        if isinstance(p, list) and p and all(isinstance(e, (int, np.integer)) for e in p):
            p = np.asarray(p)
        if isinstance(p, np.ndarray) and p.dtype.kind in "iu" and axis < len(shape) \
                and shape[axis] > 0:
            p = np.mod(p, shape[axis])
        out.append(p)
        axis += width(p)
    return tuple(out) if isinstance(key, tuple) else out[0]


class _MemoryPointer:
    """What ``ndarray.data`` is: the address, and the async host copies CuPy's pointer has."""

    def __init__(self, arr):
        self.ptr = arr._a.__array_interface__["data"][0]
        BY_PTR[self.ptr] = arr

    def copy_from_host_async(self, src_ptr, nbytes, stream=None):
        # CuPy 14 refuses this one while capturing; runtime.memcpyAsync has no such guard
        if (stream or runtime.get_current_stream()).is_capturing():
            raise RuntimeError("the current stream is capturing, so H2D transfers are "
                               "disallowed")
        runtime.memcpy(self.ptr, src_ptr, nbytes)

    def copy_to_host_async(self, dst_ptr, nbytes, stream=None):
        runtime.memcpy(dst_ptr, self.ptr, nbytes)


class _core_ndarray:  # noqa: N801 (cupy._core.ndarray: the operators live on the base class)
    __slots__ = ()


class ndarray(_core_ndarray):  # noqa: N801 (CuPy's name)
    """A device array stand-in: a numpy array that refuses to mix with numpy arrays."""

    __slots__ = ("_a", "_own", "_dev", "__weakref__")
    __array_priority__ = 100

    def __init__(self, a):  # on the current device, as CuPy's new arrays
        self._a, self._own, self._dev = a, None, runtime.state.device
        LIVE[id(self)] = self
        alloc = runtime.state.allocator
        if alloc is not None and a.base is None and _ALLOCATED.get(id(a)) is not a:
            _ALLOCATED[id(a)] = a      # a new buffer comes from the thread's allocator (a
            alloc(a.nbytes)            # graph's private pool), once

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        return getattr(_Ufunc(ufunc), method)(*inputs, **kw)

    def __array_function__(self, func, types_, args, kwargs):
        name = func.__name__
        mod = func.__module__.split(".")[1:]
        if name in MISSING or (mod and mod[0] not in ("linalg", "fft", "lib", "random")):
            return NotImplemented
        return _call(func, f"numpy.{name}", args, kwargs)

    # attributes
    shape = property(lambda s: s._a.shape)
    dtype = property(lambda s: s._a.dtype)
    ndim = property(lambda s: s._a.ndim)
    size = property(lambda s: s._a.size)
    strides = property(lambda s: s._a.strides)
    itemsize = property(lambda s: s._a.itemsize)
    nbytes = property(lambda s: s._a.nbytes)
    T = property(lambda s: _wrap(s._a.T, s))
    mT = property(lambda s: _wrap(s._a.mT, s))
    flags = property(lambda s: types.SimpleNamespace(c_contiguous=s._a.flags.c_contiguous,
                                                     f_contiguous=s._a.flags.f_contiguous,
                                                     owndata=s._a.flags.owndata))
    base = property(lambda s: s._own if s._own is not None or s._a.base is None
                    else ndarray(s._a.base))
    data = property(_MemoryPointer)
    device = property(lambda s: runtime.Device(s._dev))

    def __getattr__(self, name):
        if name in MISSING_ATTR or name.startswith("__"):
            raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")
        USED.add((f"ndarray.{name}", ()))
        attr = getattr(self._a, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *a, **k: _call(attr, f"ndarray.{name}", a, k, parent=self)

    def get(self, stream=None, order="C", out=None, blocking=True):
        _host_read()
        if out is None:
            return self._a.copy()
        out[...] = self._a
        return out

    def set(self, arr, stream=None):
        self._a[...] = arr
        runtime.record(lambda: self._a.__setitem__(Ellipsis, arr))

    def item(self):
        _host_read()
        return self._a.item()

    def tolist(self):
        _host_read()
        return self._a.tolist()

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(e) for e in self._a)

    def __bool__(self):
        _host_read()
        return bool(self._a)

    def __float__(self):
        _host_read()
        return float(self._a)

    def __int__(self):
        _host_read()
        return int(self._a)

    def __index__(self):
        if self._a.dtype.kind not in "iu" or self._a.ndim:
            raise TypeError("only integer scalar arrays can be converted to a scalar index")
        return int(self._a)

    def __complex__(self):
        _host_read()
        return complex(self._a)

    def __repr__(self):
        return "fake_cupy." + repr(self._a)

    def __getitem__(self, key):
        k = _wrapped_index(self._a.shape, unwrap(key, "__getitem__", allow_numpy=True))
        y = self._a[k]
        if isinstance(y, np.generic):  # CuPy's element is a 0-d view, not a copied scalar
            k = (k if isinstance(k, tuple) else (k,)) + (Ellipsis,)
            y = self._a[k]
        out = _wrap(y, self)
        if not (isinstance(y, np.ndarray) and
                np.may_share_memory(y, self._a)):  # a view is no node; a gathered copy is
            runtime.record(lambda: _refill(out, self._a[k]))
        return out

    def __setitem__(self, key, value):
        k = _wrapped_index(self._a.shape, unwrap(key, "__setitem__", allow_numpy=True))
        advanced = any(isinstance(e, (np.ndarray, list)) for e in
                       (k if isinstance(k, tuple) else (k,)))
        # CuPy's setitem without an array index fills from a scalar or copies a cupy array
        v = unwrap(value, "__setitem__ (a non-scalar numpy value)", advanced)
        self._a[k] = v
        runtime.record(lambda: self._a.__setitem__(k, v))

    def __copy__(self):
        out = ndarray(self._a.copy())
        runtime.record(lambda: _refill(out, self._a))
        return out

    def __deepcopy__(self, memo):
        return self.__copy__()

    def __reduce__(self):
        raise TypeError("fake cupy arrays are not picklable in this test double")


def _binop(name):
    def op(self, other):
        f = getattr(self._a.__class__, name)
        o = unwrap(other, f"ndarray.{name}")
        r = f(self._a, o)
        out = self if r is self._a else _wrap(r)
        runtime.record(lambda: _refill(out, f(self._a, o)))
        return out
    op.__name__ = name
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
           "xor", "lshift", "rshift", "divmod"):
    for _f in (f"__{_n}__", f"__r{_n}__", f"__i{_n}__"):
        if hasattr(np.ndarray, _f):
            setattr(_core_ndarray, _f, _binop(_f))
for _f in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
    setattr(_core_ndarray, _f, _binop(_f))
def _unop(name):
    def op(self):
        f = getattr(self._a.__class__, name)
        out = _wrap(f(self._a))
        runtime.record(lambda: _refill(out, f(self._a)))
        return out
    return op


for _f in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(_core_ndarray, _f, _unop(_f))
_core_ndarray.__hash__ = None


class _Ufunc:
    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kw):
        out = kw.get("out")
        r = _call(self._uf, f"ufunc {self.__name__}", args, kw)
        if out is not None:  # keep the caller's fake out array
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return r

    def at(self, a, indices, b=None):
        USED.add((f"cupy.{self.__name__}.at", ()))
        # CuPy casts b to a's dtype (a numpy b is copied over) and then needs a dtype its
        # atomic scatter kernels have
        if self.__name__ not in ("add", "subtract", "maximum", "minimum") or \
                a.dtype not in AT_DTYPES:
            raise TypeError(f"fake cupy: {self.__name__}.at on {a.dtype} is not supported by "
                            "CuPy's scatter kernels (int32, uint32, uint64, float16, float32, "
                            "float64 only)")
        vals = unwrap(b, f"{self.__name__}.at", allow_numpy=True)
        args = (unwrap(a, "ufunc.at"), _wrapped_index(a.shape, unwrap(indices, "ufunc.at", True)),
                None if vals is None else np.asarray(vals).astype(a.dtype))
        self._uf.at(*args)
        runtime.record(lambda: self._uf.at(*args))

    def reduce(self, *a, **k):
        return _call(self._uf.reduce, f"{self.__name__}.reduce", a, k)

    def accumulate(self, *a, **k):
        return _call(self._uf.accumulate, f"{self.__name__}.accumulate", a, k)

    def outer(self, *a, **k):
        return _call(self._uf.outer, f"{self.__name__}.outer", a, k)


class _BitGenerator:
    """cupy.random.XORWOW's attributes that tensor.random reads: ``_state`` (the device array
    of cuRAND states: here one uint64), ``_size`` (how many states), ``generator`` (the
    RandGenerators enum that init_curand takes) and ``_seed``."""

    def __init__(self, seed):  # CuPy's BitGenerator: an int seed -> SeedSequence -> a uint32
        seed = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
        self._seed, self._size, self.generator = seed, 1, 0   # generator: CURAND_XOR_WOW
        self._state = ndarray(np.array([self._seed], np.uint64))


def init_curand(generator, state, seed, size):
    """cupy.random._generator_api.init_curand(generator, state_ptr, seed, size): re-seed the
    cuRAND states at ``state`` in place (a kernel on the current stream)."""
    arr = BY_PTR[int(state)]
    assert generator == 0 and size == arr.size, (generator, size, arr.size)
    arr._a[...] = int(seed) % 2 ** 64
    runtime.record(lambda: arr._a.__setitem__(Ellipsis, int(seed) % 2 ** 64))


class Generator:
    """cupy.random.Generator: CuPy's methods only; a draw is a function of the state array and
    advances it, as the cuRAND kernels do."""

    def __init__(self, seed=None):
        self.bit_generator = _BitGenerator(0 if seed is None else seed)

    def __getattr__(self, name):
        if name not in GENERATOR_METHODS:
            raise AttributeError(f"'cupy.random.Generator' object has no attribute '{name}'")

        def run(*a, **k):
            st = self.bit_generator._state._a
            g = np.random.default_rng([int(v) for v in st])
            st += np.uint64(1)
            return _call(getattr(g, name), f"Generator.{name}", a, k)

        def draw(*a, **k):  # one node: a replay reads and advances the state again
            with runtime.quiet():
                out = run(*a, **k)
            runtime.record(lambda: _refill(out, unwrap(run(*a, **k), "draw")))
            return out
        return draw


class _Module(types.ModuleType):
    """cupy (or one of its submodules) over numpy's namespace; a name once looked up stays the
    same object (code that swaps cupy.matmul and restores it must find the original again)."""

    def __init__(self, name, np_mod):
        super().__init__(name)
        self._np = np_mod

    def __getattr__(self, name):
        if name.startswith("__") or name in MISSING:
            raise AttributeError(f"module '{self.__name__}' has no attribute '{name}'")
        attr = getattr(self._np, name)
        USED.add((f"{self.__name__}.{name}", ()))
        if isinstance(attr, np.ufunc):
            attr = _Ufunc(attr)
        elif isinstance(attr, types.ModuleType):
            attr = _Module(f"{self.__name__}.{name}", attr)
        elif callable(attr) and not isinstance(attr, type):  # not dtypes, finfo, constants
            attr = (lambda f: lambda *a, **k: _call(f, f"{self.__name__}.{name}", a, k))(attr)
        setattr(self, name, attr)
        return attr


_HOST_OK = ("asarray", "array", "ascontiguousarray", "asanyarray")


def _make_module():
    m = _Module("cupy", np)
    m.ndarray = ndarray
    for n in _HOST_OK:  # host -> device copies accept numpy input (and always copy it)
        setattr(m, n, (lambda f: lambda a, *r, **k: _call(
            f, "asarray", (np.array(a) if isinstance(a, (np.ndarray, np.generic)) else a,) + r,
            k, True))(getattr(np, n)))
    def along_axis(name):  # CuPy's take/put_along_axis index with wrapped integer arrays
        f = getattr(np, name)

        pos = 1 if name == "put_along_axis" else 0   # axis' place among the rest

        def call(a, indices, *rest, **kw):
            ax = rest[pos] if len(rest) > pos else kw.get("axis")
            n = a.size if ax is None else a.shape[ax]
            idx = unwrap(indices, name) if isinstance(indices, ndarray) else np.asarray(indices)
            if idx.dtype.kind in "iu" and n:
                idx = ndarray(np.mod(idx, n))
            return _call(f, f"cupy.{name}", (a, idx) + rest, kw)
        return call
    for n in ("take", "take_along_axis", "put_along_axis"):
        setattr(m, n, along_axis(n))
    m.asnumpy = lambda a, stream=None, **k: a.get() if isinstance(a, ndarray) else np.asarray(a)
    m.get_array_module = lambda *arrays: m if any(isinstance(a, ndarray) for a in arrays) else np
    rnd = _Module("cupy.random", np.random)
    rnd.default_rng = rnd.Generator = Generator
    m.random = rnd
    m.cuda = runtime.cuda
    m.get_default_memory_pool = lambda: runtime.log.default_pool
    return m


cupy = _make_module()


def erf(x):
    import math
    return _wrap(np.vectorize(math.erf, otypes=[x.dtype])(unwrap(x, "erf")))
