"""Activation checkpointing: ``checkpoint`` and ``checkpoint_sequential`` (torch.utils.checkpoint).

Note [Checkpoint]
~~~~~~~~~~~~~~~~~
``checkpoint(fn, *args)`` runs fn once with grad on, only to learn where its graph meets the
outside: the *boundary edges* from nodes created inside fn to anything older (the args' nodes,
parameters and other leaves, tensors fn's closure reads). It keeps fn's outputs' values, drops
the inner graph (so the activations fn's backward closures saved are freed), and gives the
outputs one node whose edges are the boundary edges. Its backward restores the RNG state of
the first run (so dropout draws the same masks), reruns fn with grad on, and backpropagates the
incoming gradients through that fresh inner graph down to the boundary edges and no further
(``run_backward(..., stop_at_inputs=True)``), returning one gradient per boundary edge; the
outer engine carries them on. The graph between forward and backward holds only fn's inputs.

The args and every boundary leaf are version-checked: the recomputation reads them, so an
in-place change in between gets the usual "modified by an inplace operation" error.
"""
from __future__ import annotations

import itertools

from .. import _grad_mode
from .. import random as _random
from .._tensor import Node, Tensor, _new, _seq
from .engine import run_backward


def _boundary(outs, first_seq):
    """The edges from nodes made inside the segment (seq >= first_seq) to older targets."""
    edges, seen_edge, seen, stack = [], set(), set(), [o._node for o in outs]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for e in node.edges:
            if e is None:
                continue
            tgt = e[0]
            if type(tgt) is Node and tgt.seq >= first_seq:
                stack.append(tgt)
            elif (id(tgt), e[1]) not in seen_edge:
                seen_edge.add((id(tgt), e[1]))
                edges.append(e)
    return edges


def _flat_outputs(out):
    if isinstance(out, Tensor):
        return [out], True
    if isinstance(out, (tuple, list)):
        return list(out), False
    raise TypeError(f"checkpoint: the function must return a Tensor or a tuple of Tensors, got "
                    f"{type(out).__name__}")


def checkpoint(function, *args, use_reentrant=None, preserve_rng_state=True, **kwargs):
    """Run ``function(*args, **kwargs)`` without keeping its activations; recompute them in
    backward (as torch.utils.checkpoint.checkpoint, see Note [Checkpoint]).

    ``use_reentrant`` is accepted for PyTorch's signature; both settings behave as PyTorch's
    non-reentrant variant (gradients reach parameters and inputs whether or not the inputs
    require grad).
    """
    if not _grad_mode.state.enabled:
        return function(*args, **kwargs)
    rng = _random.default_generator.fork_state() if preserve_rng_state else None
    first_seq = next(_seq)
    out = function(*args, **kwargs)
    outs, single = _flat_outputs(out)
    diff = [i for i, o in enumerate(outs) if isinstance(o, Tensor) and o._node is not None
            and o._node.seq >= first_seq]
    if not diff:  # nothing inside needed grad: there is no graph to drop
        return out
    edges = _boundary([outs[i] for i in diff], first_seq)
    saved = [a for a in itertools.chain(args, kwargs.values()) if isinstance(a, Tensor)]
    saved += [e[0] for e in edges if isinstance(e[0], Tensor)]
    n_out = len(diff)
    meta = [(outs[i].array.shape, outs[i].array.dtype, _xp_of(outs[i])) for i in diff]

    def backward(*gys):
        if rng is not None:
            _random.default_generator.restore_state(rng)
        with _grad_mode.enable_grad():
            again, _ = _flat_outputs(function(*args, **kwargs))
        roots = [again[i] for i in diff]
        keep = [k for k, r in enumerate(roots) if r.requires_grad]
        grads = run_backward([roots[k] for k in keep], [gys[k] for k in keep],
                             retain_graph=False, create_graph=_grad_mode.state.enabled,
                             inputs=[e[0] if isinstance(e[0], Tensor) else (e[0], e[1])
                                     for e in edges],
                             allow_unused=True, accumulate=False, stop_at_inputs=True)
        return tuple(grads)

    node = Node(backward, tuple(edges), "checkpoint",
                tuple((t._vbox, t._vbox[0], t) for t in saved), n_out=n_out, out_meta=meta)
    node.opaque = True  # its gradients come from another walk and may alias each other
    new = list(outs)
    for k, i in enumerate(diff):
        t = _new(outs[i].array, True)
        t._node, t._out_idx = node, k
        new[i] = t
    if single:
        return new[0]
    return type(out)(*new) if hasattr(out, "_fields") else type(out)(new)  # namedtuples too


def _xp_of(t):
    from .. import backend
    return backend.get_array_module(t.array)


def checkpoint_sequential(functions, segments, input, use_reentrant=None, **kwargs):
    """Run a Sequential (or a list of modules) in `segments` checkpointed chunks, as
    torch.utils.checkpoint.checkpoint_sequential; the last chunk runs normally."""
    fns = list(functions.children()) if hasattr(functions, "children") else list(functions)
    if segments < 1:
        raise ValueError(f"checkpoint_sequential: segments must be >= 1, got {segments}")
    size = max(len(fns) // segments, 1)

    def run(start, end):
        def forward(x):
            for f in fns[start:end]:
                x = f(x)
            return x
        return forward
    end = -1
    for start in range(0, size * (segments - 1), size):
        end = start + size - 1
        input = checkpoint(run(start, end + 1), input, use_reentrant=use_reentrant, **kwargs)
    return run(end + 1, len(fns))(input)
