"""Adam and AdamW (Kingma & Ba, 2015; Loshchilov & Hutter, 2019), with AMSGrad."""
from __future__ import annotations

import math

from ..backend import get_array_module
from .optimizer import Optimizer


class Adam(Optimizer):
    """PyTorch's Adam. Per parameter at step t, with g the gradient (negated when maximize):

        g = g + weight_decay * p          (Adam: L2 penalty in the gradient)
        p = p * (1 - lr * weight_decay)   (AdamW: decoupled weight decay, instead)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        v_max = max(v_max, v)             (amsgrad; v_max replaces v below)
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    See Note [Optimizer updates] for how the arrays are updated in place.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        self._check_non_negative(("learning rate", lr), ("epsilon value", eps),
                                 ("weight_decay value", weight_decay))
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}; expected "
                                 f"0 <= beta < 1.")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _update_group(self, group: dict) -> None:
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        wd, amsgrad = group["weight_decay"], group["amsgrad"]
        decoupled = group["decoupled_weight_decay"]
        names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        for p, x, g in self._params_with_grad(group, 0.0 if decoupled else wd):
            xp = get_array_module(x)
            st = self._count_step(p, x, names)
            t = float(st["step"].array)
            if decoupled and wd != 0:
                x *= 1 - lr * wd
            m, v = st["exp_avg"].array, st["exp_avg_sq"].array
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            if amsgrad:
                vmax = st["max_exp_avg_sq"].array
                xp.maximum(vmax, v, out=vmax)
                v = vmax
            denom = xp.sqrt(v)
            denom /= math.sqrt(1 - b2 ** t)
            denom += eps
            xp.divide(m, denom, out=denom)
            denom *= lr / (1 - b1 ** t)
            x -= denom


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay each step); PyTorch's
    default weight_decay for AdamW is 1e-2."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)
