"""Capture-time helpers of tensor.cuda.graphs: CuPy's sync detector, the driver's per-thread
capture mode, and the error that names the op behind a failed capture."""
from __future__ import annotations

import ctypes
import os
import traceback

_MODES = {"global": 0, "thread_local": 1, "relaxed": 2}   # cudaStreamCaptureMode values


def set_sync_allowed(allowed: bool):
    """Switch CuPy's per-thread sync detector (cupy._core.syncdetect); returns the old value.
    Private CuPy API: without it a host sync fails inside CUDA instead, still with our message."""
    try:
        from cupy._core import syncdetect  # type: ignore
        tl = syncdetect._thread_local
    except (ImportError, AttributeError):
        return None
    old = getattr(tl, "allowed", True)
    if allowed is not None:
        tl.allowed = allowed
    return old


_cuda_driver = []   # [ctypes CDLL or None], loaded once


def _driver():
    if not _cuda_driver:
        try:
            _cuda_driver.append(ctypes.CDLL("libcuda.so.1"))
        except OSError:
            _cuda_driver.append(None)
    return _cuda_driver[0]


class relaxed_capture_mode:
    """Put this thread in relaxed capture mode (cuThreadExchangeStreamCaptureMode) inside the
    block, so that a cudaMalloc is allowed while a global-mode capture is running."""

    def __enter__(self):
        lib = _driver()
        self._mode = None
        if lib is not None:
            mode = ctypes.c_int(_MODES["relaxed"])
            if lib.cuThreadExchangeStreamCaptureMode(ctypes.byref(mode)) == 0:
                self._mode = mode

    def __exit__(self, *exc):
        if self._mode is not None:
            _driver().cuThreadExchangeStreamCaptureMode(ctypes.byref(self._mode))
        return False


_OWN = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),)   # .../tensor


def explain_capture_error(exc):
    """A RuntimeError naming the op and the user's line, for a host sync or capture-illegal
    CUDA call inside a capture; None for other errors (they propagate unchanged)."""
    name = type(exc).__name__
    status = getattr(exc, "status", None)
    text = str(exc)
    if name == "DeviceSynchronized":
        what = "synchronized the host with the device"
    elif status in (900, 901, 904, 906) or "stream capture" in text or \
            "stream is capturing" in text:
        # 900 StreamCaptureUnsupported, 901 Invalidated, 904 Unjoined, 906 Implicit; CuPy's
        # own refusals (H2D/D2H copies, cuBLAS/cuSOLVER/cuSPARSE) say "stream capture"
        what = (f"made a call that can't be captured ({type(exc).__name__}: {text}; if it was "
                "a kernel's first launch, run the step once before capturing)")
    else:
        return None
    what += (". Captured work must stay on the device: no .item(), float()/bool() of a tensor, "
             "print(tensor), .cpu()/.numpy(), data-dependent shapes (boolean-mask indexing, "
             "nonzero), or tensors made from host data (tensor.tensor(list, device='cuda')) "
             "inside the captured region. Move it out of the region (read the outputs after "
             "g.replay(); create inputs before capture and update them with .copy_()).")
    where, line = _culprit(traceback.extract_tb(exc.__traceback__))
    return RuntimeError(f"CUDA graph capture: an operation{where}{line} {what}")


def _culprit(frames):
    """(" in <zgrad function> (file:line)", ", called from <user file:line>") for a traceback:
    the zgrad entry point the user's code called last, and that line of the user's code."""
    def own(f):
        return f.filename.startswith(_OWN)

    def user(f):
        return not own(f) and "cupy" not in f.filename and not f.filename.endswith("contextlib.py")
    calls = [i for i in range(1, len(frames)) if own(frames[i]) and user(frames[i - 1])]
    if not calls:
        users = [f for f in frames if user(f)]
        return "", (f", called from {_short(users[-1])}" if users else "")
    i = calls[-1]   # the last place where user code (a script, a module's forward) called zgrad
    return f" in {frames[i].name} ({_short(frames[i])})", f", called from {_short(frames[i - 1])}"


def _short(frame) -> str:
    return f"{os.path.basename(frame.filename)}:{frame.lineno}"
