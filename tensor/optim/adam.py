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

    See Note [Optimizer updates] for how the arrays are updated in place, and Note [Fused
    optimizer flags] for foreach / fused / capturable (the one-launch CUDA update).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, foreach=None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused=None, decoupled_weight_decay: bool = False):
        self._check_impl_flags(lr, foreach, fused, capturable)
        if fused and differentiable:
            raise RuntimeError("`fused` does not support `differentiable`")
        if differentiable:
            raise ValueError("Adam(differentiable=True) is not supported: the update runs "
                             "in place outside autograd; pass differentiable=False.")
        self._check_non_negative(("learning rate", self._lr_float(lr)), ("epsilon value", eps),
                                 ("weight_decay value", weight_decay))
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}; expected "
                                 f"0 <= beta < 1.")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable, fused=fused,
                                      decoupled_weight_decay=decoupled_weight_decay))

    _update_group = Optimizer._update_group_multi_tensor

    def _names(self, group):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _device_step(self, group) -> bool:
        # PyTorch keeps 'step' on the parameter's device for fused and capturable
        return bool(group.get("fused") or group.get("capturable"))

    def _update_multi_tensor(self, group: dict, dtype, params) -> None:
        """All of params (CUDA arrays of one dtype) in one launch (Note [Fused optimizer flags])."""
        from ..cuda.kernels.optim import adam_step
        b1, b2 = group["betas"]
        dev_step = self._device_step(group)
        names = self._names(group)
        if not dev_step:  # host steps: one launch per distinct step count
            by_step = {}
            for p in params:
                st = self._count_step(p, p.array, names)
                by_step.setdefault(float(st["step"].array), []).append(p)
            groups = list(by_step.items())
        else:
            for p in params:
                self._count_step(p, p.array, names, device_step=True, count=False)
            groups = [(None, params)]
        decoupled = group.get("decoupled_weight_decay", False)
        for t, ps in groups:
            sts = [self.state[p] for p in ps]
            adam_step(self._tables(), dtype, [p.array for p in ps], [p.grad.array for p in ps],
                      [s["exp_avg"].array for s in sts], [s["exp_avg_sq"].array for s in sts],
                      [s["max_exp_avg_sq"].array for s in sts] if group["amsgrad"] else None,
                      [s["step"].array for s in sts] if dev_step else None,
                      lr=group["lr"], beta1=b1, beta2=b2, eps=group["eps"],
                      weight_decay=group["weight_decay"], amsgrad=group["amsgrad"],
                      maximize=group["maximize"], decoupled=decoupled, host_step=t)
            for p in ps:
                p._vbox[0] += 1

    def _update_loop(self, group: dict, params) -> None:
        lr, (b1, b2), eps = self._lr_float(group["lr"]), group["betas"], group["eps"]
        wd, amsgrad = group["weight_decay"], group["amsgrad"]
        decoupled = group.get("decoupled_weight_decay", False)
        names = self._names(group)
        dev_step = self._device_step(group)
        for p, x, g in self._params_with_grad(group, 0.0 if decoupled else wd, params):
            xp = get_array_module(x)
            st = self._count_step(p, x, names, device_step=dev_step)
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
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach=None, capturable: bool = False, differentiable: bool = False,
                 fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)
