"""parameters_to_vector / vector_to_parameters (torch.nn.utils), e.g. for flat optimizers."""
from __future__ import annotations

from ..._grad_mode import no_grad
from ..._tensor import Tensor


def parameters_to_vector(parameters) -> Tensor:
    """All parameters flattened and concatenated into one 1-D tensor (differentiable)."""
    from ...ops.shape import cat
    params = list(parameters)
    if not params:
        raise ValueError("parameters_to_vector: got no parameters")
    dev = params[0].device
    for p in params:
        if p.device != dev:
            raise RuntimeError(f"parameters_to_vector: found parameters on {dev} and "
                               f"{p.device}; move the module to one device first.")
    return cat([p.reshape(-1) for p in params])


def vector_to_parameters(vec: Tensor, parameters) -> None:
    """Copy consecutive slices of the 1-D `vec` into the parameters, in place."""
    if not isinstance(vec, Tensor) or vec.dim() != 1:
        got = f"shape {list(vec.shape)}" if isinstance(vec, Tensor) else type(vec).__name__
        raise TypeError(f"vector_to_parameters: expected a 1-D Tensor, got {got}")
    params = list(parameters)
    total = sum(p.numel() for p in params)
    if vec.numel() != total:
        raise ValueError(f"vector_to_parameters: vec has {vec.numel()} elements but the "
                         f"parameters have {total} in all; they must match.")
    offset = 0
    with no_grad():
        for p in params:
            n = p.numel()
            p.array[...] = vec.array[offset:offset + n].reshape(p.array.shape)
            p._vbox[0] += 1
            offset += n
