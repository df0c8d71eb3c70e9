"""In-place view ops: ``unsqueeze_``, ``squeeze_``, ``t_``, ``transpose_``, ``swapdims_``.

As in PyTorch they change the tensor's shape (its array becomes a view of the same storage)
and bump its version counter. With grad mode on, a leaf that requires grad is refused with
PyTorch's error, and a non-leaf takes the out-of-place op's history (its grad_fn becomes
UnsqueezeBackward and the like). Modifying, in place, the shape of a *view* that requires
grad is refused with a clear error (the base's history cannot follow a change of shape here).
"""
from __future__ import annotations

from ._grad_mode import is_grad_enabled, no_grad
from ._tensor import Tensor
from .ops import shape as S


def _inplace_view(name: str, fn):
    def method(self: Tensor, *args, **kw) -> Tensor:
        if is_grad_enabled() and self.requires_grad:
            if self.is_leaf:
                raise RuntimeError(f"{name}: a leaf Variable that requires grad is being used "
                                   "in an in-place operation.")
            if getattr(self, "_base", None) is not None:
                raise RuntimeError(f"{name}: changing the shape of a view that requires grad in"
                                   f" place is not supported; use the out-of-place "
                                   f"{name[:-1]}() and keep the result.")
            r = fn(self, *args, **kw)
            self.array, self._node, self._out_idx = r.array, r._node, r._out_idx
        else:
            with no_grad():
                self.array = fn(self, *args, **kw).array   # a view: the storage is shared
        self._vbox[0] += 1
        return self

    method.__name__ = name
    method.__doc__ = f"In place {name[:-1]}: same storage, new shape (bumps the version counter)."
    return method


for _name, _fn in dict(unsqueeze_=S.unsqueeze, squeeze_=S.squeeze, t_=lambda a: a.t(),
                       transpose_=S.transpose, swapdims_=S.transpose,
                       swapaxes_=S.transpose).items():
    setattr(Tensor, _name, _inplace_view(_name, _fn))
