"""RMSprop (Hinton's lecture 6e), with momentum and the centered variant (Graves, 2013)."""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer


class RMSprop(Optimizer):
    """PyTorch's RMSprop. Per parameter, with g the gradient (negated when maximize):

        g = g + weight_decay * p
        s = alpha * s + (1 - alpha) * g^2
        a = g_avg = alpha * g_avg + (1 - alpha) * g   (centered: denom uses s - a^2)
        d = sqrt(s [- a^2]) + eps
        b = momentum * b + g / d;  p = p - lr * b    (momentum > 0)
        p = p - lr * g / d                           (otherwise)

    See Note [Optimizer updates] for how the arrays are updated in place.
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False):
        self._check_non_negative(("learning rate", lr), ("epsilon value", eps),
                                 ("momentum value", momentum),
                                 ("weight_decay value", weight_decay), ("alpha value", alpha))
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize))

    def _update_group(self, group: dict) -> None:
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        mom, centered = group["momentum"], group["centered"]
        names = ("square_avg",) + (("momentum_buffer",) if mom > 0 else ()) + \
            (("grad_avg",) if centered else ())
        for p, x, g in self._params_with_grad(group, group["weight_decay"]):
            xp = get_array_module(x)
            st = self._count_step(p, x, names)
            s = st["square_avg"].array
            s *= alpha
            s += (1 - alpha) * (g * g)
            if centered:
                a = st["grad_avg"].array
                a *= alpha
                a += (1 - alpha) * g
                denom = s - a * a
                xp.sqrt(denom, out=denom)
            else:
                denom = xp.sqrt(s)
            denom += eps
            if mom > 0:
                buf = st["momentum_buffer"].array
                buf *= mom
                buf += g / denom
                x -= lr * buf
            else:
                xp.divide(g, denom, out=denom)
                denom *= lr
                x -= denom
