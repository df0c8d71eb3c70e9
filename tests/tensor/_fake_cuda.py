"""A CPU stand-in for CuPy and the fused kernels, to test tensor/cuda/kernels without a GPU.

``DevArray`` is a numpy array that poses as a CuPy one (``.device.id``, ``.data.ptr``);
``FakeCupy`` is the slice of the cupy module the fused paths call. ``FakeKernel`` replaces a
compiled RawKernel: it checks every launch argument against the kernel's C signature, parsed
from the real source in tensor/cuda/kernels/_sources.py (a pointer gets an array of the
pointee's dtype, ``int`` an np.int32, ``long long`` an np.int64, ``double`` an np.float64,
``T`` a scalar of the instance's dtype), then runs a numpy transcription of the kernel body.
So the Python launch code (argument order, types, shapes, the optimizer's pointer table) runs
for real on the CPU; the CUDA C itself is checked by the NVRTC compile and on hardware.
"""
from __future__ import annotations

import ctypes
import math
import re
from types import SimpleNamespace

import numpy as np

from tensor.cuda.kernels._sources import MODULES
from tensor.cuda.kernels._sources_optim import OPTIM

_REGISTRY = {}  # data pointer -> the DevArray that owns it (for the optimizer's pointer table)


class DevArray(np.ndarray):
    """A numpy array posing as a CuPy array on device 0."""

    device = SimpleNamespace(id=0)

    @property
    def data(self):
        ptr = self.__array_interface__["data"][0]
        _REGISTRY[ptr] = self
        arr = self

        def copy_from_host_async(src_ptr, nbytes, stream=None):
            ctypes.memmove(arr.__array_interface__["data"][0], src_ptr, nbytes)
        return SimpleNamespace(ptr=ptr, copy_from_host_async=copy_from_host_async)


def dev(a) -> DevArray:
    return np.asarray(a, order="C").view(DevArray)


class _Stream:
    capturing = False  # tests set it to play a graph capture

    def is_capturing(self):
        return _Stream.capturing


def _alloc_pinned(nbytes):
    if _Stream.capturing:  # as tensor.cuda.graphs' guard (and CUDA) refuse it
        raise RuntimeError("pinned allocation during a capture")
    return bytearray(nbytes)


class _Event:
    def __init__(self, disable_timing=False):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        assert self.recorded


class _Device:
    id = 0

    def __init__(self, index=0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeCupy:
    """The cupy functions the fused paths call, on DevArrays."""
    ndarray = DevArray
    cuda = SimpleNamespace(Device=_Device,
                           get_current_stream=lambda: _Stream(), Event=_Event,
                           alloc_pinned_memory=_alloc_pinned)

    @staticmethod
    def get_array_module(*arrays):
        return FAKE if any(isinstance(a, DevArray) for a in arrays) else np

    def __getattr__(self, name):  # the rest of cupy's namespace: numpy's, arrays on the "device"
        f = getattr(np, name)
        if not callable(f) or isinstance(f, type):
            return f

        def on_device(*args, **kwargs):
            out = f(*args, **kwargs)
            return out.view(DevArray) if type(out) is np.ndarray else out
        return on_device

    empty_like = staticmethod(lambda a: dev(np.empty_like(a)))
    zeros_like = staticmethod(lambda a: dev(np.zeros_like(a)))
    empty = staticmethod(lambda shape, dtype=np.float64: dev(np.empty(shape, dtype)))
    zeros = staticmethod(lambda shape, dtype=np.float64: dev(np.zeros(shape, dtype)))
    ascontiguousarray = staticmethod(lambda a, dtype=None: dev(np.asarray(a, dtype, order="C")))
    asnumpy = staticmethod(lambda a: np.asarray(a).view(np.ndarray).copy())
    asarray = staticmethod(lambda a, dtype=None: dev(np.asarray(a, dtype)))


FAKE = FakeCupy()  # what tests put in tensor.backend.cupy


# -- signatures -----------------------------------------------------------------------------
def _signatures():
    sigs = {}
    for src, _ in MODULES.values():
        for m in re.finditer(r"__global__ void (\w+)\(([^)]*)\)", src):
            params = [" ".join(p.split()) for p in m.group(2).split(",")]
            sigs[m.group(1)] = [re.sub(r"\s*__restrict__\s*", " ", p).strip() for p in params]
    return sigs


_SIGS = _signatures()


def _check_args(name, dtype, args):
    sig = _SIGS[name]
    assert len(args) == len(sig), f"{name}: {len(args)} arguments for {len(sig)}: {sig}"
    tdt = None if dtype is None else np.dtype(dtype)
    for a, decl in zip(args, sig):
        ctype = decl.rsplit(" ", 1)[0].replace("const ", "").strip()
        if ctype.endswith("*"):
            assert isinstance(a, DevArray), f"{name}: {decl} got {type(a).__name__}"
            pointee = ctype[:-1].strip()
            want = {"T": tdt, "long long": np.dtype(np.int64), "float": np.dtype(np.float32),
                    "double": np.dtype(np.float64), "void": a.dtype,
                    "bool": np.dtype(np.bool_)}[pointee]
            assert a.dtype == want, f"{name}: {decl} got a {a.dtype} array"
            assert a.flags.c_contiguous, f"{name}: {decl} is not contiguous"
        else:
            want = {"T": tdt.type if tdt is not None else None, "int": np.int32,
                    "long long": np.int64, "double": np.float64}[ctype]
            assert type(a) is want, f"{name}: {decl} got {type(a).__name__}"


class FakeKernel:
    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def __call__(self, grid, block, args):
        assert all(g >= 1 for g in grid) and 1 <= math.prod(block) <= 1024, (grid, block)
        _check_args(self.name, self.dtype, args)
        _BODIES[self.name](grid, *args)


def fake_kernel(module, name, dtype=None):
    assert name in MODULES[module][1] or name in re.findall(r"void (\w+)\(", OPTIM)
    return FakeKernel(name, dtype)


# -- kernel bodies (numpy transcriptions of _sources.py) -------------------------------------
def _erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x)


def _gelu_fwd(grid, x, y, n, approx):
    k, c = x.dtype.type(0.7978845608028654), x.dtype.type(0.044715)
    y[...] = (0.5 * x * (1 + np.tanh(k * (x + c * x ** 3))) if approx
              else 0.5 * x * (1 + _erf(x * x.dtype.type(0.7071067811865476))))


def _gelu_bwd(grid, x, gy, gx, n, approx):
    k, c = 0.7978845608028654, 0.044715
    if approx:
        t = np.tanh(k * (x + c * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)
    else:
        d = 0.5 * (1 + _erf(x * 0.7071067811865476)) + x * np.exp(-0.5 * x * x) * 0.3989422804014327
    gx[...] = gy * d


def _rows(a, n):
    return a.reshape(-1, int(n))


def _ln_fwd(grid, x, w, b, y, mean, rstd, n, eps, has_w, has_b):
    x2 = _rows(x, n)
    mu = x2.mean(1)
    rs = 1 / np.sqrt(((x2 - mu[:, None]) ** 2).mean(1) + eps)
    v = (x2 - mu[:, None]) * rs[:, None]
    if has_w:
        v = v * w.reshape(-1)
    if has_b:
        v = v + b.reshape(-1)
    _rows(y, n)[...] = v
    mean[...], rstd[...] = mu, rs


def _ln_bwd_dx(grid, x, w, gy, mean, rstd, gx, n, has_w):
    x2, g2 = _rows(x, n), _rows(gy, n)
    gh = g2 * w.reshape(-1) if has_w else g2
    xhat = (x2 - mean[:, None]) * rstd[:, None]
    _rows(gx, n)[...] = rstd[:, None] * (gh - gh.mean(1, keepdims=True)
                                         - xhat * (gh * xhat).mean(1, keepdims=True))


def _ln_bwd_dwdb_partial(grid, x, gy, mean, rstd, pw, pb, rows, n):
    R = grid[1]
    x2, g2 = _rows(x, n), _rows(gy, n)
    slot = (np.arange(int(rows)) // 8) % R  # block y = (r // 8) % R sums row r
    for by in range(R):
        sel = slot == by
        xhat = (x2[sel] - mean[sel, None]) * rstd[sel, None]
        pw.reshape(-1)[by * n:(by + 1) * n] = (g2[sel] * xhat).sum(0)
        pb.reshape(-1)[by * n:(by + 1) * n] = g2[sel].sum(0)


def _ln_bwd_dwdb_final(grid, pw, pb, gw, gb, R, n):
    gw[...] = pw.reshape(int(R), int(n)).sum(0)
    gb[...] = pb.reshape(int(R), int(n)).sum(0)


def _softmax_parts(x, C):
    x2 = _rows(x, C)
    m = x2.max(1, keepdims=True)
    return x2, (m + np.log(np.exp(x2 - m).sum(1, keepdims=True)))[:, 0]


def _xent_fwd(grid, x, t, w, loss, wt, lse_out, bad, C, ignore_index, ls, has_w):
    x2, lse = _softmax_parts(x, C)
    wv = w.reshape(-1) if has_w else np.ones(int(C), x.dtype)
    for i, tg in enumerate(t):
        smooth = (wv * (lse[i] - x2[i])).sum() if ls else 0
        if tg == ignore_index:
            loss[i] = wt[i] = 0
        elif tg < 0 or tg >= C:
            loss[i] = wt[i] = np.nan
        else:
            wt[i] = wv[tg]
            loss[i] = (1 - ls) * wv[tg] * (lse[i] - x2[i, tg]) + ls / C * smooth
    lse_out[...] = lse
    bad[...] = (t != ignore_index) & ((t < 0) | (t >= C))


def _xent_reduce(grid, loss, wt, out, den, N, mode):
    a, b = loss.sum(), wt.sum()
    out[...] = a / b if mode == 2 else a
    den[...] = b if mode == 2 else 1


def _xent_bwd(grid, x, t, w, lse, gy, den, gx, C, ignore_index, ls, has_w, mode):
    x2, g2 = _rows(x, C), _rows(gx, C)
    wv = w.reshape(-1) if has_w else np.ones(int(C), x.dtype)
    W = wv.sum() if has_w and ls else C
    for i, tg in enumerate(t):
        if tg == ignore_index:
            g2[i] = 0
            continue
        g = gy.reshape(-1)[i] if mode == 0 else gy.reshape(-1)[0] / den[0]
        wtg = np.nan if (tg < 0 or tg >= C) else wv[tg]
        p = np.exp(x2[i] - lse[i])
        onehot = np.arange(int(C)) == tg
        g2[i] = g * ((1 - ls) * wtg * (p - onehot) + ls / C * (W * p - wv))


def _softmax_fwd(grid, x, y, C, mode):
    x2 = _rows(x, C)
    m = x2.max(1, keepdims=True)
    if mode == 2:
        m = np.where(np.isfinite(m), m, 0)
    s = np.exp(x2 - m).sum(1, keepdims=True)
    _rows(y, C)[...] = x2 - m - np.log(s) if mode == 1 else \
        np.exp(x2 - m) / (np.where(s == 0, 1, s) if mode == 2 else s)


def _softmax_bwd(grid, y, gy, gx, C, mode):
    y2, g2 = _rows(y, C), _rows(gy, C)
    if mode == 1:
        _rows(gx, C)[...] = g2 - np.exp(y2) * g2.sum(1, keepdims=True)
    else:
        _rows(gx, C)[...] = y2 * (g2 - (g2 * y2).sum(1, keepdims=True))


def _table(tab, ntens, ncol):
    offs = tab[:ntens + 1]
    rows = tab[ntens + 1:].reshape(int(ntens), ncol)
    return offs, rows


def _arr(ptr):
    return _REGISTRY[int(ptr)]


def _lr(lr_dev, lr_kind, lr_host):
    return float(lr_dev.reshape(-1)[0]) if lr_kind else float(lr_host)


def _zg_inc_steps(grid, tab, ntens, ncol, col):
    _, rows = _table(tab, ntens, int(ncol))
    for k in range(int(ntens)):
        _arr(rows[k, col])[...] += 1


def _adam_mt(grid, tab, ntens, total, lr_dev, lr_kind, lr_host, b1, b2, eps, wd, amsgrad,
             maximize, decoupled, dev_step, bc1, bc2s):
    offs, rows = _table(tab, ntens, 6)
    assert offs[-1] == total
    lr = _lr(lr_dev, lr_kind, lr_host)
    for k in range(int(ntens)):
        p, g, m, v = (_arr(rows[k, c]) for c in range(4))
        assert p.size == offs[k + 1] - offs[k]
        if dev_step:
            st = float(_arr(rows[k, 5]))
            bc1, bc2s = 1 - b1 ** st, math.sqrt(1 - b2 ** st)
        gv = -g if maximize else g
        if decoupled:
            p *= 1 - lr * wd
        elif wd:
            gv = gv + wd * p
        m[...] = b1 * m + (1 - b1) * gv
        v[...] = b2 * v + (1 - b2) * (gv * gv)
        vv = v
        if amsgrad:
            vm = _arr(rows[k, 4])
            np.maximum(vm, v, out=vm)
            vv = vm
        p -= (lr / bc1) * (m / (np.sqrt(vv) / bc2s + eps))


def _sgd_mt(grid, tab, ntens, total, lr_dev, lr_kind, lr_host, mom, damp, wd, nesterov,
            maximize):
    offs, rows = _table(tab, ntens, 4)
    assert offs[-1] == total
    lr = _lr(lr_dev, lr_kind, lr_host)
    for k in range(int(ntens)):
        p, g = _arr(rows[k, 0]), _arr(rows[k, 1])
        gv = -g if maximize else g.copy()
        if wd:
            gv = gv + wd * p
        if mom:
            b = _arr(rows[k, 2])
            b[...] = gv if rows[k, 3] else mom * b + (1 - damp) * gv
            gv = gv + mom * b if nesterov else b
        p -= lr * gv


_BODIES = {"gelu_fwd": _gelu_fwd, "gelu_bwd": _gelu_bwd, "ln_fwd": _ln_fwd,
           "ln_bwd_dx": _ln_bwd_dx, "ln_bwd_dwdb_partial": _ln_bwd_dwdb_partial,
           "ln_bwd_dwdb_final": _ln_bwd_dwdb_final, "xent_fwd": _xent_fwd,
           "xent_reduce": _xent_reduce, "xent_bwd": _xent_bwd, "softmax_fwd": _softmax_fwd,
           "softmax_bwd": _softmax_bwd, "zg_inc_steps": _zg_inc_steps,
           "adam_mt": _adam_mt, "sgd_mt": _sgd_mt}


def install(monkeypatch):
    """Put the fake in place for one test: backend.cupy -> FAKE, the fused modules' kernel()
    -> fake_kernel; launches are recorded by name in the returned module's ``calls``."""
    import sys

    from tensor import backend
    from tensor.cuda import kernels
    from tensor.cuda.kernels import ops as kops, optim as kopt
    monkeypatch.setattr(backend, "cupy", FAKE)
    monkeypatch.setattr(kops, "kernel", fake_kernel)
    monkeypatch.setattr(kopt, "kernel", fake_kernel)
    monkeypatch.delenv(kernels.ENV_SWITCH, raising=False)
    calls = []
    real = FakeKernel.__call__

    def recording_call(self, *args):
        calls.append(self.name)
        return real(self, *args)
    monkeypatch.setattr(FakeKernel, "__call__", recording_call)
    mod = sys.modules[__name__]
    monkeypatch.setattr(mod, "calls", calls, raising=False)
    monkeypatch.setattr(_Stream, "capturing", False)
    # tensor.backend's deferred device asserts launch CuPy kernels: record their masks instead
    asserts = []
    monkeypatch.setattr(backend, "device_assert", lambda xp, bad, message, *a, **k:
                        asserts.append((np.asarray(bad).copy(), message)), raising=False)
    monkeypatch.setattr(mod, "asserts", asserts, raising=False)
    return mod
