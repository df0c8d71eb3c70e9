"""``tensor.cuda.kernels``: fused CUDA kernels for ops where eager CuPy launches many small ones.

Note [Fused kernels]
~~~~~~~~~~~~~~~~~~~~
GELU, LayerNorm, softmax / log_softmax (over the last axis) and softmax + cross-entropy
each run as one or two RawModule kernels per
direction (sources in _sources.py, full CUDA C, compiled once per process by NVRTC), and the
Adam / AdamW / SGD updates of a whole parameter group as one multi-tensor launch (optim.py).

The ops in tensor/ops keep their eager code; a few lines at their top ask ``applies_*`` here
and hand the call over when it says yes: the input is a C-contiguous float32 / float64 CuPy
array (float32 computes and accumulates in float, float64 in double), and the case is one the
kernel covers (see each ``applies_*``). Everything else (CPU, float16 / bfloat16 under
autocast, non-contiguous inputs, probability targets, ...) stays on the eager path. Autocast
casts in the op's decorator, before the dispatch, so the fused path sees the cast input.

The fused ops build their autograd node with ``from_op`` like any op. Their backward is a
kernel too, on the first-order path; under create_graph=True (grad mode on in the backward) it
redoes the op eagerly and differentiates that graph (_graph_backward), so higher-order
gradients work the same as on the eager path.

``ZGRAD_FUSED_KERNELS=0`` turns every fused path off (read at each call, for A/B checks).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from ... import backend

ENV_SWITCH = "ZGRAD_FUSED_KERNELS"
_local = threading.local()     # .bypass > 0 while _graph_backward reruns an op eagerly
_kernels = {}                  # (device id, module, expression) -> cupy.RawKernel
_modules = {}                  # (device id, module) -> cupy.RawModule


def enabled() -> bool:
    """False when ZGRAD_FUSED_KERNELS=0 (or CuPy is missing) or while an op reruns eagerly."""
    return (backend.cupy is not None and os.environ.get(ENV_SWITCH, "1") != "0"
            and not getattr(_local, "bypass", 0))


def fusable(a) -> bool:
    """A C-contiguous, non-empty float32/float64 CuPy array, fused kernels on."""
    cp = backend.cupy
    return (cp is not None and isinstance(a, cp.ndarray) and a.dtype in _FLOATS and a.size > 0
            and a.flags.c_contiguous and enabled())


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def kernel(module: str, name: str, dtype=None):
    """The compiled kernel `name` of `module` (its float or double instance for `dtype`)."""
    cp = backend.cupy
    dev = cp.cuda.runtime.getDevice()
    expr = name if dtype is None else f"{name}<{_CTYPES[np.dtype(dtype)]}>"
    k = _kernels.get((dev, module, expr))
    if k is None:
        from ._sources import MODULES, name_expressions
        mod = _modules.get((dev, module))
        if mod is None:
            mod = _modules[(dev, module)] = cp.RawModule(
                code=MODULES[module][0],
                name_expressions=name_expressions(module))
        k = _kernels[(dev, module, expr)] = mod.get_function(expr)
    return k


def grid_1d(n: int, block: int = 256, cap: int = 4096) -> tuple:
    """Blocks for a grid-stride loop over n elements."""
    return (max(1, min((n + block - 1) // block, cap)),)


def row_block(n: int) -> int:
    """Threads of a one-block-per-row kernel: about 4 elements each, a multiple of 32."""
    want = max(1, (n + 3) // 4)
    return min(1024, max(32, 1 << (want - 1).bit_length()))


def _graph_backward(eager, inputs, gy):
    """Gradients of `eager()` (the op rerun on its eager path, recording a graph) with respect
    to `inputs`, as differentiable ops: the create_graph=True backward of a fused op."""
    from ..._grad_mode import enable_grad
    from ...autograd import grad
    need = [t for t in inputs if t is not None and t.requires_grad]
    _local.bypass = getattr(_local, "bypass", 0) + 1
    try:
        with enable_grad():
            y = eager()
    finally:
        _local.bypass -= 1
    got = iter(grad([y], need, [gy], create_graph=True, allow_unused=True))
    return tuple(next(got) if t is not None and t.requires_grad else None for t in inputs)


from .ops import (applies_cross_entropy, applies_gelu, applies_layer_norm,  # noqa: E402
                  applies_softmax, cross_entropy, gelu, layer_norm, softmax,
                  softmax_rows_safe)

__all__ = ["enabled", "fusable", "kernel", "applies_gelu", "gelu", "applies_layer_norm",
           "layer_norm", "applies_softmax", "softmax", "softmax_rows_safe", "applies_cross_entropy",
           "cross_entropy"]
