"""``nn.Module``: the base class of layers and models (torch.nn.Module's names and semantics).

Note [Module registration]
~~~~~~~~~~~~~~~~~~~~~~~~~~
A Module keeps its parameters, buffers and sub-modules in three ordered dicts
(``_parameters``, ``_buffers``, ``_modules``). ``__setattr__`` routes a Parameter into the
first, a Module into the last, and a Tensor assigned to a name that is already a buffer into
the second; ``register_buffer`` is the only way to create a buffer. ``__getattr__`` (called
only when normal lookup fails) finds them again. Dict order is registration order, which is
the order of ``parameters()`` and of the state_dict keys; the keys are dotted paths
(``"0.weight"``, ``"encoder.layers.1.bias"``) exactly as PyTorch builds them, so a zgrad
state_dict and a PyTorch state_dict of the same module tree have the same keys.

Device and dtype moves (``to``, ``cuda``, ``float``) replace each parameter's ``.array`` in
place, keeping the Parameter objects, so an optimizer built before the move still holds them.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from ... import backend, dtypes
from ..._grad_mode import no_grad
from ..._tensor import Tensor
from ..parameter import Parameter

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _addindent(s: str, n: int) -> str:
    lines = s.split("\n")
    if len(lines) == 1:
        return s
    return lines[0] + "\n" + "\n".join(" " * n + line for line in lines[1:])


def _parse_to(args, kwargs):
    """(device, dtype) from Module.to's arguments: to(device), to(dtype), to(tensor), ..."""
    dev = kwargs.pop("device", None)
    dt = kwargs.pop("dtype", None)
    kwargs.pop("non_blocking", None)
    if kwargs:
        raise TypeError(f"Module.to(): unexpected arguments {sorted(kwargs)}")
    for a in args:
        if isinstance(a, Tensor):
            dev, dt = a.device, a.dtype
        elif isinstance(a, backend.device) or (isinstance(a, str) and
                                                a.split(":")[0] in ("cpu", "cuda")):
            dev = a
        elif isinstance(a, int) and not isinstance(a, bool):
            dev = backend.device("cuda", a)
        else:
            dt = a
    if dt is not None:
        dt = dtypes.as_dtype(dt)
        if dt.kind not in "fc":
            raise TypeError(f"Module.to() only accepts floating point dtypes, got {dt}")
    return (backend.device(dev) if dev is not None else None), dt


class _HookHandle:
    """Returned by register_forward_(pre_)hook; ``remove()`` takes the hook out again."""

    def __init__(self, hooks: OrderedDict, key: int):
        self._hooks, self._key = hooks, key

    def remove(self) -> None:
        self._hooks.pop(self._key, None)


class Module:
    """Base class for all layers and models: subclass it, assign Parameters and sub-Modules
    in ``__init__``, and write ``forward``. Call the module (``m(x)``), not ``forward``."""

    training: bool
    _version = 1

    def __init__(self):
        sa = object.__setattr__
        sa(self, "training", True)
        sa(self, "_parameters", OrderedDict())
        sa(self, "_buffers", OrderedDict())
        sa(self, "_non_persistent_buffers_set", set())
        sa(self, "_modules", OrderedDict())
        sa(self, "_forward_hooks", OrderedDict())
        sa(self, "_forward_pre_hooks", OrderedDict())
        sa(self, "_backward_hooks", OrderedDict())
        sa(self, "_backward_pre_hooks", OrderedDict())
        sa(self, "_hook_flags", set())  # ("kwargs", id(hooks), key), ("always", key)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"Module [{type(self).__name__}] is missing the required "
                                  "\"forward\" function; define forward(self, ...) in it.")

    def __call__(self, *args, **kwargs):
        if not (self._forward_pre_hooks or self._forward_hooks or self._backward_hooks
                or self._backward_pre_hooks):
            return self.forward(*args, **kwargs)
        from .hooks import call_with_hooks
        return call_with_hooks(self, args, kwargs)

    def register_forward_pre_hook(self, hook, *, prepend: bool = False,
                                  with_kwargs: bool = False) -> _HookHandle:
        """hook(module, args) -> None or new args, run before forward; with_kwargs=True:
        hook(module, args, kwargs) -> None or (new args, new kwargs)."""
        return self._add_hook(self._forward_pre_hooks, hook, prepend, with_kwargs)

    def register_forward_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False,
                              always_call: bool = False) -> _HookHandle:
        """hook(module, args, output) -> None or a new output, run after forward;
        with_kwargs=True: hook(module, args, kwargs, output). always_call=True runs it even
        when forward raised (then the exception propagates)."""
        h = self._add_hook(self._forward_hooks, hook, prepend, with_kwargs)
        if always_call:
            self._hook_flags.add(("always", h._key))
        return h

    def register_full_backward_pre_hook(self, hook, prepend: bool = False) -> _HookHandle:
        """hook(module, grad_output) -> None or new grad_output, run when the gradients of
        the module's outputs are ready, before they flow into the module."""
        return self._add_hook(self._backward_pre_hooks, hook, prepend)

    def register_full_backward_hook(self, hook, prepend: bool = False) -> _HookHandle:
        """hook(module, grad_input, grad_output) -> None or new grad_input, run when the
        gradients of the module's Tensor inputs are computed (see tensor/nn/modules/hooks.py)."""
        return self._add_hook(self._backward_hooks, hook, prepend)

    def register_backward_hook(self, hook) -> _HookHandle:
        """PyTorch's deprecated form; zgrad gives it the full backward hook's semantics."""
        return self.register_full_backward_hook(hook)

    def _add_hook(self, hooks: OrderedDict, hook, prepend=False, with_kwargs=False):
        key = max(hooks, default=-1) + 1
        hooks[key] = hook
        if prepend:
            hooks.move_to_end(key, last=False)
        if with_kwargs:
            self._hook_flags.add(("kwargs", id(hooks), key))
        return _HookHandle(hooks, key)

    # -- registration (Note [Module registration]) -------------------------------------------
    def _check_name(self, kind: str, name):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {kind} before Module.__init__() call; call "
                                 "super().__init__() first in your __init__.")
        if not isinstance(name, str):
            raise TypeError(f"{kind} name should be a string, got {type(name).__name__}")
        if "." in name or name == "":
            raise KeyError(f"{kind} name can't contain \".\" or be empty, got {name!r}")

    def register_parameter(self, name: str, param) -> None:
        """Add a parameter (a Parameter, or None for an absent one such as bias=False)."""
        self._check_name("parameter", name)
        if hasattr(self, name) and name not in self._parameters:
            raise KeyError(f"attribute '{name}' already exists")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (nn.Parameter or None required)")
        if param is not None and param.grad_fn is not None:
            raise ValueError(f"cannot assign non-leaf Tensor to parameter '{name}'; model "
                             "parameters must be created explicitly (e.g. Parameter(t.detach())).")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Add a buffer: state that is not a parameter (running statistics, masks).

        Persistent buffers are part of the state_dict; non-persistent ones are not.
        """
        self._check_name("buffer", name)
        if hasattr(self, name) and name not in self._buffers:
            raise KeyError(f"attribute '{name}' already exists")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer "
                            f"'{name}' (Tensor or None required)")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module) -> None:
        """Add a child module, reachable as an attribute `name`."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        self._check_name("module", name)
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name, value):
        d = self.__dict__
        params = d.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            self._remove_from(name, d, self._buffers, self._modules)
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                                "(nn.Parameter or None expected)")
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            if params is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            self._remove_from(name, d, self._parameters, self._buffers)
            self._modules[name] = value
        elif d.get("_modules") is not None and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module "
                                f"'{name}' (Module or None expected)")
            self._modules[name] = value
        elif d.get("_buffers") is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                "(Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    @staticmethod
    def _remove_from(name, d, *dicts):
        d.pop(name, None)
        for dd in dicts:
            dd.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        for key in ("_parameters", "_buffers", "_modules"):
            sub = d.get(key)
            if sub is not None and name in sub:
                return sub[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for key in ("_parameters", "_buffers", "_modules"):
            sub = self.__dict__.get(key)
            if sub is not None and name in sub:
                del sub[name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    # -- traversal ---------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """(name, module) for this module and every descendant, depth first, each once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            yield from m.named_modules(memo, prefix + ("." if prefix else "") + name,
                                       remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, get, prefix, recurse, remove_duplicate=True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) \
            if recurse else [(prefix, self)]
        for mod_prefix, m in mods:
            for k, v in get(m):
                if v is None or (remove_duplicate and id(v) in seen):
                    continue
                seen.add(id(v))
                yield mod_prefix + ("." if mod_prefix else "") + k, v

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True):
        """(dotted name, Parameter) pairs; a shared (tied) parameter is listed once."""
        return self._named_members(lambda m: m._parameters.items(), prefix, recurse,
                                   remove_duplicate)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True, remove_duplicate=True):
        return self._named_members(lambda m: m._buffers.items(), prefix, recurse,
                                   remove_duplicate)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> "Module":
        m = self
        for part in target.split(".") if target else []:
            if part not in m._modules:
                raise AttributeError(f"{type(m).__name__} has no submodule `{part}` "
                                     f"(looking up {target!r})")
            m = m._modules[part]
        return m

    def get_parameter(self, target: str) -> Parameter:
        mod, _, name = target.rpartition(".")
        m = self.get_submodule(mod)
        if name not in m._parameters:
            raise AttributeError(f"{type(m).__name__} has no parameter `{name}`")
        return m._parameters[name]

    # -- state dict --------------------------------------------------------------------------
    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        """An OrderedDict of every parameter and persistent buffer by dotted name.

        Values are detached Tensors sharing memory with the module (as PyTorch's), unless
        keep_vars=True, which returns the Parameters themselves.
        """
        if destination is None:
            destination = OrderedDict()
        for name, p in self._parameters.items():
            if p is not None:
                destination[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = b if keep_vars else b.detach()
        for name, m in self._modules.items():
            if m is not None:
                m.state_dict(destination, prefix + name + ".", keep_vars)
        return destination

    def _load_from_state_dict(self, state_dict, prefix, strict, missing, unexpected, errors,
                              assign=False):
        local = [(k, v) for k, v in self._parameters.items() if v is not None]
        local += [(k, v) for k, v in self._buffers.items()
                  if v is not None and k not in self._non_persistent_buffers_set]
        for name, t in local:
            key = prefix + name
            if key not in state_dict:
                missing.append(key)
                continue
            src = state_dict[key]
            arr = src.array if isinstance(src, Tensor) else src
            if not backend.is_array(arr):
                if isinstance(arr, (int, float, bool, list)):
                    arr = np.asarray(arr)
                else:
                    errors.append(f'While copying the parameter named "{key}", expected a '
                                  f"Tensor or array in the state_dict, got "
                                  f"{type(src).__name__}.")
                    continue
            if tuple(arr.shape) != tuple(t.array.shape):
                errors.append(f"size mismatch for {key}: copying a param with shape "
                              f"{list(arr.shape)} from checkpoint, the shape in current model "
                              f"is {list(t.array.shape)}.")
                continue
            if assign:  # take the state_dict's tensor itself (its dtype and device)
                self._assign(name, t, src if isinstance(src, Tensor) else Tensor(arr))
                continue
            with no_grad():
                arr = backend.to_device(arr, t.device)
                t.array[...] = arr  # casts to the parameter's dtype, as copy_ does
                t._vbox[0] += 1
        if strict:
            own = {k for k, _ in local} | set(self._modules)
            for key in state_dict:
                if key.startswith(prefix):
                    head = key[len(prefix):].split(".", 1)[0]
                    if head not in own:
                        unexpected.append(key)

    def _assign(self, name, old, src: Tensor) -> None:
        """load_state_dict(assign=True): the module keeps src (a parameter stays a Parameter
        with the old one's requires_grad, as in PyTorch)."""
        if name in self._parameters:
            new = src if isinstance(src, Parameter) and src.requires_grad == old.requires_grad \
                else Parameter(src, requires_grad=old.requires_grad)
            self._parameters[name] = new
        else:
            self._buffers[name] = src

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Copy parameters and buffers from state_dict into this module, in place.

        Returns (missing_keys, unexpected_keys). With strict=True (the default) either list
        being non-empty is an error; a shape mismatch is an error in both modes. The error
        lists every problem at once, as PyTorch's does. assign=True makes the module hold the
        state_dict's tensors instead of copying into its own (their dtype and device win;
        requires_grad stays the module's), as PyTorch's assign=True; an optimizer built
        before then still holds the old parameters.
        """
        if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        missing, unexpected, errors = [], [], []
        for prefix, m in self.named_modules(remove_duplicate=False):
            m._load_from_state_dict(state_dict, prefix + ("." if prefix else ""), True,
                                    missing, unexpected, errors, assign)
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in unexpected) + ". ")
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in missing) + ". ")
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                               + "\n\t".join(errors))
        return _IncompatibleKeys(missing, unexpected)

    # -- modes, grads, moves ----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode here and in every child (through their own train(), so an
        override in a subclass is honoured, as in PyTorch)."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        object.__setattr__(self, "training", mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (to None by default, as PyTorch 2)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad = p.grad.detach() if p.grad.grad_fn is not None else p.grad
                p.grad.array[...] = 0
                p.grad._vbox[0] += 1

    def apply(self, fn) -> "Module":
        """Call fn(module) on every sub-module (children first) and then on self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def _apply_arrays(self, fn) -> "Module":
        """Replace every parameter's, gradient's and buffer's array by fn(array), in place."""
        for m in self.modules():
            for t in list(m._parameters.values()) + list(m._buffers.values()):
                if t is None:
                    continue
                new = fn(t.array)
                if new is not t.array:
                    t.array = new
                    t._vbox[0] += 1
                if t.grad is not None:
                    g = fn(t.grad.array)
                    if g is not t.grad.array:
                        t.grad.array = g
        return self

    def to(self, *args, **kwargs) -> "Module":
        """Move and/or cast parameters and buffers in place: to(device), to(dtype), to(t).

        A dtype applies to floating point parameters and buffers only (integer buffers keep
        their dtype), as in PyTorch.
        """
        dev, dt = _parse_to(args, dict(kwargs))

        def convert(a):
            if dev is not None:
                a = backend.to_device(a, dev)
            if dt is not None and a.dtype.kind in "fc" and a.dtype != dt:
                a = a.astype(dt)
            return a
        return self._apply_arrays(convert)

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self, device=None) -> "Module":
        return self.to(backend.device("cuda", device))

    def type(self, dst_type) -> "Module":
        return self.to(dst_type)

    def float(self) -> "Module":
        return self.to(dtypes.float32)

    def double(self) -> "Module":
        return self.to(dtypes.float64)

    def half(self) -> "Module":
        return self.to(dtypes.float16)

    def share_memory(self) -> "Module":
        """Move parameters, buffers and their grads into shared memory (Tensor.share_memory_)."""
        for t in list(self.parameters()) + list(self.buffers()):
            t.share_memory_()
        return self

    # -- repr --------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in repr (sizes, options)."""
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self):
        # the layout of torch.nn.Module.__repr__, line for line
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({k}): " + _addindent(repr(m), 2) for k, m in self._modules.items()]
        lines = extra_lines + child_lines
        s = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                s += extra_lines[0]
            else:
                s += "\n  " + "\n  ".join(lines) + "\n"
        return s + ")"
