"""Matmul inside a CUDA graph capture: cuBLAS called through ctypes on a handle of our own.

Note [Capturable matmul]
~~~~~~~~~~~~~~~~~~~~~~~~
cuBLAS supports stream capture (since CUDA 12.2 it allocates its workspace stream-ordered),
but CuPy 14 refuses it: its ``cublas.setStream`` raises NotImplementedError ("calling cuBLAS
API during stream capture is currently unsupported") whenever the current stream is capturing,
and every CuPy matmul goes through it. A training step without matmuls is no training step, so
while a graph is being captured in a thread, tensor.cuda.graphs points ``cupy.ndarray.__matmul__``
(what ``a @ b`` calls; CuPy's ndarray is a Python class) and ``cupy.matmul`` here, for that
thread only: other threads, and everything outside a capture, keep CuPy's own path.

``matmul(a, b)`` follows numpy's matmul semantics (1-D promotion, broadcast batch dimensions)
for float16/32/64 and calls cublasGemmEx / cublasGemmStridedBatchedEx on the current stream.
cuBLAS is column-major, so C = A @ B (row-major) is computed as C^T = B^T A^T: a row-major
operand read column-major *is* its transpose (op N), a column-major one (a transposed view)
takes op T, and anything else (negative or non-uniform strides) is copied first. ``plan()``
does that bookkeeping without touching the GPU, so the CPU tests check it against numpy.
Accumulation is float32 for half and single precision (float64 for double), no TF32 unless
CUPY_TF32=1, as CuPy's eager matmul; the handle is created before the capture begins.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from .. import backend

# cudaDataType, cublasComputeType_t, host scalar type per dtype
_TYPES = {np.dtype(np.float32): (0, 68, ctypes.c_float), np.dtype(np.float64): (1, 70,
                                                                                  ctypes.c_double),
          np.dtype(np.float16): (2, 68, ctypes.c_float)}
_COMPUTE_32F_FAST_TF32 = 77
_OP_N, _OP_T, _ALGO_DEFAULT = 0, 1, -1


class Operand:
    """One GEMM operand as cuBLAS sees it: array (for the pointer), op, ld, batch stride."""

    __slots__ = ("array", "op", "ld", "stride")

    def __init__(self, array, op, ld, stride):
        self.array, self.op, self.ld, self.stride = array, op, ld, stride


def _layout(x):
    """(op, ld, batch stride) of x's last two dims and flattened batch dims, in elements, for
    a cuBLAS operand standing for x^T; None when the strides don't fit (copy x first)."""
    isz = x.itemsize
    if any(s % isz for s in x.strides):
        return None
    st = [s // isz for s in x.strides]
    r, c = x.shape[-2:]
    rs, cs = st[-2:]
    if (c == 1 or cs == 1) and (r == 1 or rs >= c):        # row-major: read column-major = x^T
        op, ld = _OP_N, max(rs if r > 1 else c, c, 1)
    elif (r == 1 or rs == 1) and (c == 1 or cs >= r):      # column-major: x itself, transposed
        op, ld = _OP_T, max(cs if c > 1 else r, r, 1)
    else:
        return None
    dims = [(n, s) for n, s in zip(x.shape[:-2], st[:-2]) if n != 1]
    for (n0, s0), (n1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * n1:          # batch dims that don't flatten to one stride
            return None
    return op, ld, (dims[-1][1] if dims else 0)


def _operand(xp, x):
    lay = _layout(x)
    if lay is None:
        x = xp.ascontiguousarray(x)
        lay = _layout(x)
    return Operand(x, *lay)


def plan(xp, a, b):
    """The GEMM computing a @ b: (out, first, second, m, n, k, batch) in cuBLAS's terms
    (first = b^T, second = a^T, out row-major), or None when cuBLAS can't or needn't do it
    (unsupported dtype, a 0-d operand, mismatched shapes: CuPy's path reports those)."""
    if a.ndim == 0 or b.ndim == 0:
        return None
    dt = np.result_type(a.dtype, b.dtype)
    if dt not in _TYPES:
        return None
    a, b = a.astype(dt, copy=False), b.astype(dt, copy=False)
    va, vb = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if va else a
    b2 = b[:, None] if vb else b
    m, k = a2.shape[-2:]
    k2, n = b2.shape[-2:]
    if k != k2:
        return None
    try:
        batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    except ValueError:
        return None
    out = xp.empty(batch + (m, n), dt)
    shape = batch + ((() if va else (m,)) + (() if vb else (n,)))
    if out.size == 0 or k == 0:
        out[...] = 0
        return out.reshape(shape), None
    first = _operand(xp, xp.broadcast_to(b2, batch + (k, n)))
    second = _operand(xp, xp.broadcast_to(a2, batch + (m, k)))
    return out.reshape(shape), (out, first, second, n, m, k, int(np.prod(batch, dtype=np.int64)))


# -- cuBLAS through ctypes ---------------------------------------------------------------------

_lib = []          # [CDLL or None]
_handles: dict = {}   # device id -> cublasHandle_t


def _load():
    try:   # CuPy loads libcublas from wherever its wheel or toolkit put it; find that copy
        import cupy_backends.cuda.libs.cublas  # noqa: F401
    except Exception:
        pass
    names = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if os.path.basename(path).startswith("libcublas.so"):
                    names.append(path)
                    break
    except OSError:
        pass
    for name in names + ["libcublas.so.13", "libcublas.so.12", "libcublas.so"]:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        vp, i, ll = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
        lib.cublasCreate_v2.argtypes = [ctypes.POINTER(vp)]
        lib.cublasSetStream_v2.argtypes = [vp, vp]
        lib.cublasGemmEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i,
                                     i, i]
        lib.cublasGemmStridedBatchedEx.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, ll, vp, i,
                                                   i, ll, vp, vp, i, i, ll, i, i, i]
        return lib
    return None


def _cublas():
    if not _lib:
        _lib.append(_load())
    return _lib[0]


def prepare() -> bool:
    """Create this device's handle now (outside any capture); False when cuBLAS can't be
    loaded through ctypes (matmuls in a capture then fail with CuPy's error)."""
    lib = _cublas()
    if lib is None:
        return False
    dev = backend.cupy.cuda.runtime.getDevice()
    if dev not in _handles:
        h = ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(h)), "cublasCreate")
        _handles[dev] = h
        cp = backend.cupy
        for dt in _TYPES:   # the copy and fill kernels plan() may launch inside a capture:
            cp.ascontiguousarray(cp.zeros((2, 3), dt).T)   # compiled and loaded now, not there
            cp.empty((2,), dt)[...] = 0
    return True


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"{what} failed with cuBLAS status {status} (tensor.cuda's capturable "
                           "matmul, see Note [Capturable matmul] in tensor/cuda/_blas.py).")


def matmul(a, b):
    """a @ b for CuPy arrays through our cuBLAS handle, on the current stream; None when this
    path does not apply (then CuPy's own matmul runs)."""
    cp = backend.cupy
    if not (isinstance(a, cp.ndarray) and isinstance(b, cp.ndarray)) or not prepare():
        return None
    p = plan(cp, a, b)
    if p is None:
        return None
    result, call = p
    if call is not None:
        _gemm(*call)
    return result


def _gemm(out, first, second, m, n, k, batch):
    lib = _cublas()
    cp = backend.cupy
    h = _handles[cp.cuda.runtime.getDevice()]
    _check(lib.cublasSetStream_v2(h, cp.cuda.get_current_stream().ptr), "cublasSetStream")
    dtype, compute, scalar = _TYPES[out.dtype]
    if out.dtype == np.float32 and os.environ.get("CUPY_TF32") == "1":
        compute = _COMPUTE_32F_FAST_TF32
    one, zero = scalar(1), scalar(0)
    args_a = (first.op, second.op, m, n, k, ctypes.byref(one))
    if batch == 1:
        _check(lib.cublasGemmEx(h, *args_a, first.array.data.ptr, dtype, first.ld,
                                second.array.data.ptr, dtype, second.ld, ctypes.byref(zero),
                                out.data.ptr, dtype, m, compute, _ALGO_DEFAULT), "cublasGemmEx")
    else:
        _check(lib.cublasGemmStridedBatchedEx(
            h, *args_a, first.array.data.ptr, dtype, first.ld, first.stride,
            second.array.data.ptr, dtype, second.ld, second.stride, ctypes.byref(zero),
            out.data.ptr, dtype, m, m * n, batch, compute, _ALGO_DEFAULT),
            "cublasGemmStridedBatchedEx")


# -- routing a @ b here during a capture ------------------------------------------------------

_saved: dict = {}     # the CuPy functions replaced while any capture runs
_installs = [0]


def install(in_capture) -> None:
    """Route cupy.ndarray.__matmul__ and cupy.matmul here for threads where in_capture() is
    true (Note [Capturable matmul]); nested/concurrent installs are counted."""
    cp = backend.cupy
    _installs[0] += 1
    if _installs[0] > 1:
        return
    orig_op, orig_fn = cp.ndarray.__matmul__, cp.matmul
    # CuPy's ndarray inherits __matmul__ from its Cython base; deleting ours afterwards gives
    # the fast C slot back (assigning the old one would leave a Python-level lookup on every @)
    _saved.update(op=orig_op, fn=orig_fn, own="__matmul__" in vars(cp.ndarray))

    def op(a, b):
        if in_capture():
            r = matmul(a, b)
            if r is not None:
                return r
        return orig_op(a, b)

    def fn(a, b, *args, **kwargs):
        if in_capture() and not args and not kwargs:
            r = matmul(a, b)
            if r is not None:
                return r
        return orig_fn(a, b, *args, **kwargs)
    cp.ndarray.__matmul__ = op
    cp.matmul = fn


def uninstall() -> None:
    cp = backend.cupy
    _installs[0] -= 1
    if _installs[0] == 0 and _saved:
        op = _saved.pop("op")
        if _saved.pop("own"):
            cp.ndarray.__matmul__ = op
        else:
            del cp.ndarray.__matmul__
        cp.matmul = _saved.pop("fn")
