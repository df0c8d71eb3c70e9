"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""
from __future__ import annotations

from .._tensor import _new
from .optimizer import Optimizer


class SGD(Optimizer):
    """PyTorch's SGD. Per parameter, with g the gradient (negated when maximize):

        g = g + weight_decay * p
        b = g (first step) or momentum * b + (1 - dampening) * g      (when momentum != 0)
        g = g + momentum * b (nesterov) or b
        p = p - lr * g

    See Note [Optimizer updates] for how the arrays are updated in place.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        self._check_non_negative(("learning rate", lr), ("momentum value", momentum),
                                 ("weight_decay value", weight_decay))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Nesterov momentum requires a momentum and zero dampening, got "
                             f"momentum={momentum}, dampening={dampening}; set momentum > 0 "
                             f"and dampening=0, or nesterov=False.")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _update_group(self, group: dict) -> None:
        lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
        nesterov = group["nesterov"]
        for p, x, g in self._params_with_grad(group, group["weight_decay"]):
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
