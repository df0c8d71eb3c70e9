"""One CPU stand-in for CuPy, to test zgrad's GPU plumbing without a GPU.

Note [Fake CuPy]
~~~~~~~~~~~~~~~~
``install(monkeypatch)`` makes ``tensor.backend.cupy`` the fake for one test and returns it;
``install()`` without a monkeypatch does the same for the rest of a (forked) process and also
makes ``import cupy``, ``cupy.cuda`` and ``cupy.cuda.nccl`` resolve to it. The parts:
  - arrays.py: ``cupy`` itself, over numpy's namespace, and its ``ndarray``: a wrapper that
    refuses to mix with numpy arrays as CuPy does (so numpy-on-CuPy bugs fail on the CPU) and
    whose ``.data.ptr`` points into real memory (so pointer tables and copies work);
  - runtime.py: ``cupy.cuda``: devices, streams and events that record waits, stream capture
    that CUDA graphs replay (Note [Fake graph capture]), memory pools, allocators, pinned
    memory, runtime copies; ``runtime.log`` is what a test
    reads back (kernel launches, host waits, pinned allocations, devices made current);
  - kernels.py: RawModule/RawKernel and ElementwiseKernel running numpy transcriptions of the
    fused kernels and of the device-assert kernels, launch arguments checked against the C;
  - nccl.py: a communicator of one rank;
  - site/sitecustomize.py: a new Python process of a ``pytest --fake-gpu`` test installs it
    (Note [Fake GPU runs] in tests/conftest.py).
Every test gets the same strictness (no lenient mode: the code under test must pass what CuPy
would refuse); ``fused`` only chooses which paths run. It checks protocol, not CUDA, and the
results are numpy's: the GPU tests (requires_cupy) check the real thing, and
``arrays.missing_in(cupy)`` checks that the names the fake served exist in CuPy.
"""
from __future__ import annotations

import os
import sys
import types

from . import arrays, kernels, nccl, runtime
from .arrays import cupy

cupy.ElementwiseKernel = kernels.ElementwiseKernel
cupy.RawModule = kernels.RawModule
runtime.cuda.nccl = nccl.nccl
__all__ = ["install", "cupy", "arrays", "runtime", "kernels", "nccl"]


class _ForProcess:
    """monkeypatch's setters, without the undo: for a forked rank that exits after its test."""

    setattr = staticmethod(setattr)

    @staticmethod
    def setitem(d, k, v):
        d[k] = v

    @staticmethod
    def setenv(k, v):
        os.environ[k] = v

    @staticmethod
    def delenv(k, raising=True):
        os.environ.pop(k, None)


def install(monkeypatch=None, *, fused=False, device_count=1, import_cupy=False):
    """Make the fake tensor.backend's CuPy (for this test, or this process without a
    monkeypatch) and return it, with a fresh ``runtime.log`` (what the test reads back).

    fused: let tensor.cuda.kernels take its fused paths (RawModule runs the transcriptions);
      off, ZGRAD_FUSED_KERNELS=0 and the eager xp paths run, as the parity tests want.
    device_count: what cupy.cuda.runtime.getDeviceCount() says.
    import_cupy: with a monkeypatch, `import cupy` (and cupy.cuda, cupy.cuda.nccl) finds the
      fake too, as it always does without one (``pytest --fake-gpu``: the GPU tests import it).
    """
    mp = _ForProcess if monkeypatch is None else monkeypatch
    runtime.reset(device_count)
    for name, value in (("stack", []), ("allocator", None), ("null", None), ("device", 0)):
        mp.setattr(runtime.state, name, value)  # this thread's streams, fresh, undone after
    from tensor import _device_checks, backend
    from tensor.cuda import _blas, _util, graphs, kernels as fused_kernels
    mp.setattr(backend, "cupy", cupy)
    mp.setattr(backend, "_gpu_seen", [False])             # asked again: device_count may be 0
    if fused:
        mp.delenv(fused_kernels.ENV_SWITCH, raising=False)
    else:
        mp.setenv(fused_kernels.ENV_SWITCH, "0")
    for mod, names in ((_device_checks, ("_slots", "_flag_bufs", "_pending", "_kernels")),
                       (fused_kernels, ("_kernels", "_modules"))):
        for name in names:  # fresh per test: nothing compiled or flagged leaks between fakes
            mp.setattr(mod, name, {})
    mp.setattr(_device_checks, "_slot_info", [])
    mp.setattr(_util, "_available", [])                  # asked again: the fake has a GPU
    mp.setattr(_blas, "_lib", [None])   # never a real libcublas on the fake's host pointers
    mp.setattr(graphs.graph, "_capture_streams", {})      # streams of an earlier fake
    special = types.ModuleType("cupyx.scipy.special")
    special.erf = arrays.erf
    scipy = types.ModuleType("cupyx.scipy")
    scipy.special = special
    cupyx = types.ModuleType("cupyx")
    cupyx.scipy = scipy
    cupyx.allow_synchronize = runtime.allow_synchronize
    cupyx.DeviceSynchronized = runtime.DeviceSynchronized
    gen_api = types.ModuleType("cupy.random._generator_api")
    gen_api.init_curand = arrays.init_curand
    # always: with a real CuPy importable, tensor.random's in-place reseed would otherwise
    # hand the fake's pointer to the real init_curand
    mods = {"cupyx": cupyx, "cupyx.scipy": scipy, "cupyx.scipy.special": special,
            "cupy.random._generator_api": gen_api}
    if monkeypatch is None or import_cupy:  # a whole process: `import cupy` finds the fake
        mods.update({"cupy": cupy, "cupy.cuda": runtime.cuda, "cupy.cuda.nccl": nccl.nccl})
    for name, mod in mods.items():
        mp.setitem(sys.modules, name, mod)
    return cupy


def __getattr__(name):  # fakecuda.log: the current runtime.log (install makes a fresh one)
    if name == "log":
        return runtime.log
    raise AttributeError(f"module 'tests.fakecuda' has no attribute '{name}'")
