"""The fake's kernels: numpy transcriptions of the CUDA kernels zgrad compiles.

``RawModule(code=..., name_expressions=...)`` stands for the NVRTC-compiled module of
tensor/cuda/kernels: ``get_function("gelu_fwd<float>")`` gives a ``RawKernel`` that checks
every launch against the kernel's C signature, parsed from the very source it was given (a
pointer gets a device array of the pointee's dtype, C-contiguous; ``int`` an np.int32, ``long
long`` an np.int64, ``double`` an np.float64, ``T`` a scalar of the instance's dtype), and then
runs a numpy transcription of the kernel body. So the Python launch code (argument order,
types, shapes, the optimizer's pointer table) runs for real on the CPU; the CUDA C itself is
checked by the NVRTC compile and on hardware. ``ElementwiseKernel`` does the same for the
device-assert kernels of tensor/_device_checks.py (by kernel name). Launches are recorded in
runtime.log: ``calls`` (RawKernel names), ``checks`` (ElementwiseKernel name, host arguments).
"""
from __future__ import annotations

import math
import re

import numpy as np

from . import arrays, runtime

_CTYPES = {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}


# -- RawModule / RawKernel --------------------------------------------------------------------
def _signatures(code):
    sigs = {}
    for m in re.finditer(r"__global__ void (\w+)\(([^)]*)\)", code):
        params = [" ".join(p.split()) for p in m.group(2).split(",")]
        sigs[m.group(1)] = [re.sub(r"\s*__restrict__\s*", " ", p).strip() for p in params]
    return sigs


class RawModule:
    def __init__(self, code, options=(), name_expressions=None, **kw):
        self._sigs, self._names = _signatures(code), list(name_expressions or [])

    def get_function(self, expr):
        m = re.fullmatch(r"(\w+)(?:<(\w+)>)?", expr)
        assert m and m.group(1) in self._sigs, f"no kernel {expr!r} in the module's source"
        assert m.group(2) is None or expr in self._names, f"{expr} is not in name_expressions"
        return RawKernel(m.group(1), self._sigs[m.group(1)], _CTYPES.get(m.group(2)))


def _check_args(name, sig, dtype, args):
    assert len(args) == len(sig), f"{name}: {len(args)} arguments for {len(sig)}: {sig}"
    for a, decl in zip(args, sig):
        ctype = decl.rsplit(" ", 1)[0].replace("const ", "").strip()
        if ctype.endswith("*"):
            assert isinstance(a, arrays.ndarray), f"{name}: {decl} got {type(a).__name__}"
            pointee = ctype[:-1].strip()
            want = {"T": dtype, "long long": np.dtype(np.int64), "float": np.dtype(np.float32),
                    "double": np.dtype(np.float64), "void": a.dtype,
                    "bool": np.dtype(np.bool_)}[pointee]
            assert a.dtype == want, f"{name}: {decl} got a {a.dtype} array"
            assert a.flags.c_contiguous, f"{name}: {decl} is not contiguous"
        else:
            want = {"T": dtype.type if dtype is not None else None, "int": np.int32,
                    "long long": np.int64, "double": np.float64}[ctype]
            assert type(a) is want, f"{name}: {decl} got {type(a).__name__}"


class RawKernel:
    def __init__(self, name, sig, dtype):
        self.name, self.sig, self.dtype = name, sig, dtype

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        assert all(g >= 1 for g in grid) and 1 <= math.prod(block) <= 1024, (grid, block)
        _check_args(self.name, self.sig, self.dtype, args)
        runtime.log.calls.append(self.name)
        body, host = _BODIES[self.name], arrays.unwrap(tuple(args), self.name)
        body(grid, *host)
        runtime.record(lambda: body(grid, *host))


# -- ElementwiseKernel: the device-assert kernels ---------------------------------------------
def _flag(flags, slot, bad):
    if np.any(bad):
        flags[int(slot)] = 1


def _unscale(x, inv, g, found):
    g[...] = (x.astype(np.float64) * inv).astype(g.dtype)
    _flag(found, 0, ~np.isfinite(g))


ELEMENTWISE = {
    "zgrad_device_assert": lambda bad, slot, flags: _flag(flags, slot, bad),
    "zgrad_assert_range": lambda x, lo, hi, slot, flags: _flag(flags, slot,
                                                               (x < lo) | (x >= hi)),
    "zgrad_unscale_check": _unscale,
}


class ElementwiseKernel:
    def __init__(self, in_params, out_params, operation, name="kernel", **kw):
        if name not in ELEMENTWISE:
            raise NotImplementedError(f"fake cupy: no numpy transcription of ElementwiseKernel "
                                      f"{name!r}; add one to tests/fakecuda/kernels.ELEMENTWISE")
        self.name = name
        self.params = [p.split() for p in (in_params + "," + out_params).split(",")]
        self.n_in = len(in_params.split(","))

    def __call__(self, *args, **kw):
        assert len(args) == len(self.params), \
            f"{self.name}: {len(args)} arguments for {[' '.join(p) for p in self.params]}"
        for k, (a, p) in enumerate(zip(args, self.params)):
            assert not (p[0] == "raw" or k >= self.n_in) or isinstance(a, arrays.ndarray), \
                f"{self.name}: {' '.join(p)} needs a device array, got {type(a).__name__}"
        host = arrays.unwrap(args, self.name, allow_numpy=True)
        runtime.log.checks.append((self.name, [np.array(a, copy=True) for a in host]))
        body = ELEMENTWISE[self.name]
        body(*host)
        runtime.record(lambda: body(*host))


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
    return arrays.BY_PTR[int(ptr)]._a


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
