"""A __repr__ like PyTorch's: tensor([[0.1000, 2.0000]], dtype=tensor.float64, grad_fn=<...>)."""
from __future__ import annotations

import numpy as np

from . import backend, dtypes

_DEFAULT_INT = np.dtype("int64")


def _float_formatter(a: np.ndarray):
    finite = a[np.isfinite(a)] if a.size else a
    if finite.size and np.all(finite == np.round(finite)) and np.abs(finite).max() < 1e8:
        return lambda v: f"{v:.0f}." if np.isfinite(v) else str(v)
    amax = np.abs(finite).max() if finite.size else 0.0
    amin = np.abs(finite[finite != 0]).min() if finite.size and (finite != 0).any() else 1.0
    if amax >= 1e8 or amin < 1e-4:
        return lambda v: f"{v:.4e}"
    return lambda v: f"{v:.4f}"


def format_tensor(t) -> str:
    a = backend.to_numpy(t.array)
    prefix = "tensor("
    if a.dtype.kind == "f":
        fmt = {"float_kind": _float_formatter(a)}
    else:
        fmt = None
    if a.size == 0:
        body = "[]" if a.ndim == 1 else f"size={tuple(a.shape)}"
    else:
        body = np.array2string(a, separator=", ", prefix=prefix, formatter=fmt, threshold=1000,
                               edgeitems=3, max_line_width=80)
    extras = []
    if str(t.device) != "cpu":
        extras.append(f"device='{t.device}'")
    if a.dtype not in (dtypes.get_default_dtype(), _DEFAULT_INT, np.dtype(bool)) or \
            (a.size == 0 and a.dtype != dtypes.get_default_dtype()):
        extras.append(f"dtype=tensor.{a.dtype.name}")
    if t._node is not None:
        extras.append(f"grad_fn=<{t._node.name_()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return prefix + body + "".join(", " + e for e in extras) + ")"
