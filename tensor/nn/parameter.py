"""``nn.Parameter``: a leaf Tensor that a Module registers as one of its parameters."""
from __future__ import annotations

from .._tensor import Tensor


def _rebuild_parameter(data, requires_grad):
    """Unpickle a Parameter (its array travels by handle when it lives in shared memory)."""
    return Parameter(data, requires_grad)


class Parameter(Tensor):
    """A Tensor that is a module parameter: assigning one to a Module attribute registers it.

    ``Parameter(t)`` shares ``t``'s array (no copy), as torch.nn.Parameter does.
    requires_grad defaults to True.
    """

    _is_param = True

    def __init__(self, data=None, requires_grad: bool = True):
        if isinstance(data, Tensor):
            vbox = data._vbox
            data = data.array
        else:
            vbox = None
        super().__init__(data)
        if vbox is not None:
            self._vbox = vbox  # a Parameter around t is t's storage: one version counter
        if requires_grad and self.array.dtype.kind not in "fc":
            raise RuntimeError(f"Parameter: only floating point tensors can require gradients, "
                               f"got {self.array.dtype}; pass requires_grad=False.")
        self.requires_grad = bool(requires_grad)

    @classmethod
    def empty(cls, shape, dtype=None, device=None, requires_grad: bool = True) -> "Parameter":
        """An uninitialised Parameter of `shape` (fill it with nn.init or reset_parameters)."""
        if isinstance(shape, int):
            shape = (shape,)
        from ..creation import empty
        return cls(empty(*shape, dtype=dtype, device=device).array, requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    __str__ = __repr__

    def __reduce_ex__(self, protocol):
        return (_rebuild_parameter, (self.array, self.requires_grad))
