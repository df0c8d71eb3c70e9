"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""
from __future__ import annotations

from ..backend import get_array_module
from .._tensor import _new
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD. Per parameter, with g the gradient (negated when maximize):

        g = g + weight_decay * p
        b = g (first step) or momentum * b + (1 - dampening) * g      (when momentum != 0)
        g = g + momentum * b (nesterov) or b
        p = p - lr * g

    See Note [Optimizer updates] for how the arrays are updated in place, and Note [Fused
    optimizer flags] for foreach / fused (the one-launch CUDA update).
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach=None, differentiable: bool = False, fused=None):
        self._check_impl_flags(lr, foreach, fused, capturable=True)  # SGD has no capturable
        if fused and differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if differentiable:
            raise ValueError("SGD(differentiable=True) is not supported: the update runs "
                             "in place outside autograd; pass differentiable=False.")
        self._check_non_negative(("learning rate", self._lr_float(lr)),
                                 ("momentum value", momentum),
                                 ("weight_decay value", weight_decay))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening, got "
                             f"momentum={momentum}, dampening={dampening}; set momentum > 0 "
                             f"and dampening=0, or nesterov=False.")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

    _update_group = Optimizer._update_group_multi_tensor

    def _update_multi_tensor(self, group: dict, dtype, params) -> None:
        """All of params (CUDA arrays of one dtype) in one launch (Note [Fused optimizer flags])."""
        from ..cuda.kernels.optim import sgd_step
        mom = group["momentum"]
        bufs, first = [], []
        for p in params:
            if mom != 0:
                st = self.state[p]
                buf = st.get("momentum_buffer")
                first.append(buf is None)
                if buf is None:  # filled with the gradient by the kernel (first step)
                    buf = st["momentum_buffer"] = _new(get_array_module(p.array).empty_like(
                        p.array))
                else:
                    buf._vbox[0] += 1
                bufs.append(buf.array)
        sgd_step(self._tables(), dtype, [p.array for p in params], [p.grad.array for p in params],
                 bufs, first, lr=group["lr"], momentum=mom, dampening=group["dampening"],
                 weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                 maximize=group["maximize"])
        for p in params:
            p._vbox[0] += 1

    def _update_loop(self, group: dict, params) -> None:
        lr, mom, damp = self._lr_float(group["lr"]), group["momentum"], group["dampening"]
        nesterov = group["nesterov"]
        for p, x, g in self._params_with_grad(group, group["weight_decay"], params):
            if mom != 0:
                st = self.state[p]
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = _new(g.copy())
                else:
                    b = buf.array
                    b *= mom
                    b += (1 - damp) * g if damp else g
                    buf._vbox[0] += 1
                g = g + mom * buf.array if nesterov else buf.array
            x -= lr * g
