"""Adagrad (Duchi et al., 2011) and Adadelta (Zeiler, 2012), as PyTorch's."""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer


class Adagrad(Optimizer):
    """PyTorch's Adagrad. Per parameter at step t (g negated when maximize):

        g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        sum = sum + g^2                       (sum starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(sum) + eps)
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False):
        self._check_non_negative(("learning rate", lr), ("lr_decay value", lr_decay),
                                 ("weight_decay value", weight_decay),
                                 ("initial_accumulator_value", initial_accumulator_value),
                                 ("epsilon value", eps))
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))
        for group in self.param_groups:  # PyTorch creates the state eagerly
            for p in group["params"]:
                st = self.state[p]
                st["step"] = self._step_tensor()
                st["sum"] = self._zeros_like(p.array)
                st["sum"].array += group["initial_accumulator_value"]

    def _update_group(self, group: dict) -> None:
        lr, lr_decay, eps = group["lr"], group["lr_decay"], group["eps"]
        for p, x, g in self._params_with_grad(group, group["weight_decay"]):
            xp = get_array_module(x)
            st = self._count_step(p, x)  # made in __init__
            t = float(st["step"].array)
            clr = lr / (1 + (t - 1) * lr_decay)
            acc = st["sum"].array
            acc += g * g
            std = xp.sqrt(acc)
            std += eps
            x -= clr * (g / std)


class Adadelta(Optimizer):
    """PyTorch's Adadelta. Per parameter (g negated when maximize):

        g = g + weight_decay * p
        square_avg = rho * square_avg + (1 - rho) * g^2
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta^2
        p = p - lr * delta
    """

    def __init__(self, params, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *, maximize: bool = False):
        self._check_non_negative(("learning rate", lr), ("epsilon value", eps),
                                 ("weight_decay value", weight_decay))
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}; expected 0 <= rho <= 1.")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))

    def _update_group(self, group: dict) -> None:
        lr, rho, eps = group["lr"], group["rho"], group["eps"]
        for p, x, g in self._params_with_grad(group, group["weight_decay"]):
            xp = get_array_module(x)
            st = self._count_step(p, x, ("square_avg", "acc_delta"))
            sq, acc = st["square_avg"].array, st["acc_delta"].array
            sq *= rho
            sq += (1 - rho) * (g * g)
            delta = xp.sqrt(acc + eps) / xp.sqrt(sq + eps) * g
            acc *= rho
            acc += (1 - rho) * (delta * delta)
            x -= lr * delta
