"""The Optimizer base class: param_groups, per-parameter state, zero_grad, state_dict.

Note [Optimizer updates]
~~~~~~~~~~~~~~~~~~~~~~~~
``step()`` is not recorded by autograd and does not go through Tensor ops: each optimizer
updates ``p.array`` (and its state arrays) in place with the array module's ufuncs
(``xp = get_array_module(p.array)``, so CuPy parameters update on the GPU), then bumps
``p._vbox[0]`` so that a graph that saved the old value refuses to backpropagate through it
(``Optimizer._params_with_grad`` does the gradient fetch, maximize, L2 weight decay and the bump
for every optimizer).
Updating in place keeps the Parameter objects and their arrays, which matters when a
parameter lives in shared memory (Hogwild-style workers see the update) or is viewed by
someone else (DDP's flat buffers).

State is a dict keyed by the Parameter object; each entry maps names to Tensors, with the
key names PyTorch uses ('momentum_buffer', 'exp_avg', 'exp_avg_sq', 'max_exp_avg_sq',
'square_avg', 'grad_avg', and 'step' as a 0-d float32 tensor), so state_dict() has
PyTorch's layout: ``{'state': {index: {...}}, 'param_groups': [{..., 'params': [index, ...]}]}``
with parameters numbered in param_groups order.

Note [Fused optimizer flags]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Adam, AdamW and SGD take PyTorch's ``foreach=None, fused=None`` (and Adam's
``capturable=False``). On CUDA, a group with fused=True or foreach=True, or with neither set
and every parameter a contiguous CUDA float32/float64 array (PyTorch's foreach default),
updates all its parameters in one multi-tensor launch per dtype (tensor/cuda/kernels/optim.py,
Note [Multi-tensor table]); other parameters (float16, non-contiguous, CPU) take the
per-parameter loop. On the CPU the flags are accepted, as PyTorch accepts fused on the CPU, and
the update is the per-parameter numpy loop: the same results.
``state['step']`` stays a 0-d float32 tensor; it lives on the parameter's device when fused or
capturable (as PyTorch's), so the kernel reads it there: with capturable=True nothing
host-side is baked into a captured CUDA graph except a float lr (pass a 0-d CUDA Tensor lr to
change it between replays). ZGRAD_FUSED_KERNELS=0 turns the multi-tensor path off.
"""
from __future__ import annotations

from collections import defaultdict
from itertools import chain

import numpy as np

from .. import backend
from .._grad_mode import enable_grad
from .._tensor import Tensor, _new


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


class Optimizer:
    """Base class: holds param_groups (dicts of 'params' and hyper-parameters) and state.

    Args:
        params: an iterable of Tensors, or of dicts (param groups) each with a 'params' key
            and optional per-group options that override ``defaults``.
        defaults: the default hyper-parameters of every group.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = defaults
        self.state = defaultdict(dict)
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            f"Tensors or dicts, but got {type(params).__name__}")
        if isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own options (e.g. a different lr)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters need to be organized in ordered collections, "
                            "but the ordering of tensors in sets will change between runs. "
                            "Please use a list instead.")
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor; optimize the leaf it was "
                                 "computed from, or .detach().requires_grad_() it.")
        group = dict(param_group, params=params)
        for k, v in self.defaults.items():
            if v is required and k not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {k}")
            group.setdefault(k, v)
        if len({id(p) for p in params}) != len(params):
            import warnings
            warnings.warn("optimizer contains a parameter group with duplicate parameters; in "
                          "future, this will cause an error", stacklevel=3)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient: to None (default) or to zeros in place."""
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad = p.grad.detach()
                    p.grad.array[...] = 0
                    p.grad._vbox[0] += 1

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns closure() if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _update_group(self, group: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _update_group")

    # -- foreach / fused / capturable (Note [Fused optimizer flags]) -------------------------
    @staticmethod
    def _check_impl_flags(lr, foreach, fused, capturable=False) -> None:
        """PyTorch's constructor checks of the implementation flags and a Tensor lr."""
        if fused and foreach:
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        if isinstance(lr, Tensor):
            if foreach and not capturable:
                raise ValueError("lr as a Tensor is not supported for capturable=False and "
                                 "foreach=True")
            if lr.numel() != 1:
                raise ValueError("Tensor lr must be 1-element")

    @staticmethod
    def _check_fused_params(group: dict, params) -> None:
        """fused=True needs floating-point parameters (PyTorch raises the same, at step)."""
        if group.get("fused"):
            for p in params:
                if p.array.dtype.kind != "f":
                    raise RuntimeError("`fused=True` requires all the params to be floating "
                                       "point Tensors of supported devices: ['cpu', 'cuda'] "
                                       f"but {p.array.dtype} and {p.device}; pass fused=False.")

    @staticmethod
    def _check_capturable(group: dict, params) -> None:
        if group.get("capturable"):
            for p in params:
                if p.device.type != "cuda":
                    # AssertionError, as PyTorch's, so ported code that catches it still does
                    raise AssertionError("If capturable=True, params and state_steps must be "
                                         f"on supported devices: ['cuda'], got a parameter "
                                         f"on {p.device}; pass capturable=False on the CPU.")

    def _update_group_multi_tensor(self, group: dict) -> None:
        """An _update_group for optimizers with a multi-tensor kernel (Adam, AdamW, SGD): one
        launch per dtype where the kernels apply (CUDA), _update_loop for the rest."""
        params = [p for p in group["params"] if p.grad is not None]
        self._check_fused_params(group, params)
        self._check_capturable(group, params)
        parts, rest = self._multi_tensor_partitions(group, params)
        for dtype, ps in parts.items():
            self._update_multi_tensor(group, dtype, ps)
        if rest:
            self._update_loop(group, rest)

    def _multi_tensor_partitions(self, group: dict, params):
        """(multi-tensor partitions {dtype: [p]}, the rest) of params (those with a grad)."""
        fused, foreach = group.get("fused"), group.get("foreach")
        if fused is False and foreach is False or not params:
            return {}, params
        from ..cuda import kernels  # lazily: CPU-only runs never import it
        if not kernels.enabled():
            return {}, params
        parts, rest = {}, []
        for p in params:
            x, g = p.array, p.grad.array
            if (kernels.fusable(x) and g.dtype == x.dtype and g.shape == x.shape
                    and g.flags.c_contiguous and g.__class__ is x.__class__):
                parts.setdefault(x.dtype, []).append(p)
            else:
                rest.append(p)
        if fused is None and foreach is None and rest:  # the default: all or nothing
            return {}, params
        return parts, rest

    def _tables(self):
        t = self.__dict__.get("_mt_tables")
        if t is None:
            from ..cuda.kernels.optim import TableCache
            t = self._mt_tables = TableCache()
        return t

    @staticmethod
    def _lr_float(lr):
        """A float lr for the per-parameter loop (a Tensor lr is read once: a sync on CUDA)."""
        return float(lr.item()) if isinstance(lr, Tensor) else lr

    # -- helpers for subclasses (Note [Optimizer updates]) -----------------------------------
    @staticmethod
    def _check_non_negative(*named_values) -> None:
        """Raise ValueError for the first (name, value) pair whose value is negative."""
        for name, v in named_values:
            if v < 0.0:
                raise ValueError(f"Invalid {name}: {v}; expected a value >= 0.")

    def _params_with_grad(self, group: dict, weight_decay: float = 0.0, params=None):
        """Yield (p, x, g) for each parameter of group that has a gradient.

        x is p.array, to update in place; g is the gradient array, negated when
        group['maximize'], plus weight_decay * x (an L2 penalty) when weight_decay != 0.
        When the caller's loop body is done with p, p's version is bumped, so a graph that
        saved the old value refuses to backpropagate through it.
        """
        maximize = group["maximize"]
        for p in group["params"] if params is None else params:
            if p.grad is None:
                continue
            x, g = p.array, p.grad.array
            if g.shape != x.shape:
                raise RuntimeError(f"optimizer: a parameter of shape {list(x.shape)} has a "
                                   f"gradient of shape {list(g.shape)}; they must match.")
            if maximize:
                g = -g
            if weight_decay != 0:
                g = g + weight_decay * x
            yield p, x, g
            p._vbox[0] += 1

    def _count_step(self, p, x, names=(), device_step=False, count=True) -> dict:
        """p's state after counting one more step in its 'step'. On p's first step the state is
        made (lazily, as PyTorch): 'step' (on x's device when device_step), then a zero array
        like x for each of `names`."""
        st = self.state[p]
        if not st:
            st["step"] = self._step_tensor(x if device_step else None)
            for name in names:
                st[name] = self._zeros_like(x)
        else:
            for name in names:  # e.g. amsgrad switched on after a load_state_dict
                if name not in st:
                    st[name] = self._zeros_like(x)
            if device_step and backend.get_array_module(st["step"].array) is not \
                    backend.get_array_module(x):
                st["step"] = _new(backend.to_device(st["step"].array, p.device))
        if count:
            st["step"].array += 1
        return st

    @staticmethod
    def _zeros_like(a) -> Tensor:
        return _new(backend.get_array_module(a).zeros_like(a))

    @staticmethod
    def _step_tensor(like=None) -> Tensor:
        """A 0-d float32 step counter: on the CPU, or on like's device."""
        xp = np if like is None else backend.get_array_module(like)
        return _new(xp.zeros((), np.float32))

    # -- state dict --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{'state': {index: {name: Tensor}}, 'param_groups': [{..., 'params': [index]}]}.

        The layout of PyTorch's Optimizer.state_dict; the tensors are the live state (not
        copies), so save or clone the result before stepping again if you need a snapshot.
        """
        index = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            for p in g["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in g["params"]]
            groups.append(packed)
        state = {index[id(p)]: v for p, v in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore state and hyper-parameters saved by state_dict() (copies the arrays)."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict \
                or "state" not in state_dict:
            got = (f"a dict with keys {sorted(map(str, state_dict))}"
                   if isinstance(state_dict, dict) else type(state_dict).__name__)
            raise ValueError("optimizer.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups' (from optimizer.state_dict()), got {got}.")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(saved_groups)} parameter groups, the "
                             f"optimizer has {len(self.param_groups)}; they must match.")
        for i, (g, s) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: group {i} has "
                                 f"{len(s['params'])} parameters in the state dict and "
                                 f"{len(g['params'])} in the optimizer.")
        id_map = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            key = int(k)  # JSON-like round trips may turn int keys into strings
            if key not in id_map:
                continue
            p = id_map[key]
            state[p] = {name: self._cast_state(p, name, val) for name, val in v.items()}
        self.state = state
        self.param_groups = [dict(s, params=g["params"])
                             for g, s in zip(self.param_groups, saved_groups)]
        for g in self.param_groups:  # fused / capturable keep 'step' on the device, as PyTorch
            if g.get("fused") or g.get("capturable"):
                for p in g["params"]:
                    st = state.get(p)
                    if st and isinstance(st.get("step"), Tensor) and p.device.type == "cuda":
                        st["step"] = _new(backend.to_device(st["step"].array, p.device))

    @staticmethod
    def _cast_state(p, name: str, val):
        """A private copy of a saved state value on p's device (floats in p's dtype)."""
        if isinstance(val, Tensor) or backend.is_array(val):
            a = val.array if isinstance(val, Tensor) else val
            if name == "step":  # a counter: stays a float32 scalar on the CPU, as PyTorch's
                return _new(np.array(backend.to_numpy(a), np.float32).reshape(()))
            a = backend.to_device(a, p.device)
            if a.dtype.kind == "f" and a.dtype != p.array.dtype:
                a = a.astype(p.array.dtype)
            return _new(a.copy())
        if isinstance(val, (int, float)) and name == "step":
            return _new(np.array(val, np.float32))
        return val

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"
