"""``tensor.backends`` (torch.backends): the availability probes and flags scripts set.

zgrad computes through numpy (CPU) and CuPy (CUDA); there is no MPS backend, no cuDNN
autotuner and no TF32 switch of its own. The flags exist so that scripts setting them run,
and they are plain settable attributes, but they change nothing: zgrad's CPU and GPU
results are deterministic for a fixed seed either way (CuPy's reductions and matmuls are
what they are), which the ``deterministic`` docstring records.
"""
from __future__ import annotations

from . import backend as _backend


class _Namespace:
    def __repr__(self):
        return f"<tensor.backends.{type(self).__name__.strip('_')}>"


class _MPS(_Namespace):
    @staticmethod
    def is_available() -> bool:
        return False  # Apple's Metal is not a zgrad backend

    @staticmethod
    def is_built() -> bool:
        return False


class _Matmul(_Namespace):
    allow_tf32 = False
    allow_fp16_reduced_precision_reduction = True
    allow_bf16_reduced_precision_reduction = True


class _CUDA(_Namespace):
    matmul = _Matmul()

    @staticmethod
    def is_built() -> bool:
        """True when CuPy (zgrad's CUDA backend) is installed."""
        return _backend.cupy is not None


class _CuDNN(_Namespace):
    enabled = True
    benchmark = False
    deterministic = False  # accepted; zgrad's ops do not pick nondeterministic algorithms
    allow_tf32 = True

    @staticmethod
    def is_available() -> bool:
        return _backend.cuda_is_available()

    @staticmethod
    def version():
        return None


class _OpenMP(_Namespace):
    @staticmethod
    def is_available() -> bool:
        return False


mps = _MPS()
cuda = _CUDA()
cudnn = _CuDNN()
openmp = _OpenMP()
