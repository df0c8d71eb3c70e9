"""``tensor.cuda.make_graphed_callables``: a module's (or function's) forward and backward each
captured into a CUDA graph and replayed inside an ordinary eager training step, as
torch.cuda.make_graphed_callables. See Note [CUDA graphs] in graphs.py for the rules.

How a graphed callable runs: its forward copies the new inputs into the static inputs (the
sample_args tensors) and replays the forward graph; its backward copies the incoming gradients
into static gradient buffers and replays the backward graph, which computed the gradients of
the inputs and of the module's parameters; autograd then accumulates the parameters'
gradients into .grad as for any op. Outputs alias the static outputs: the next call overwrites
them, so clone one you need to keep across calls.
"""
from __future__ import annotations

from .. import backend
from .._tensor import Tensor
from ._util import require


def make_graphed_callables(callables, sample_args, num_warmup_iters: int = 3,
                           allow_unused_input: bool = False, pool=None):
    """Graphed versions of `callables` (a Module or function, or a tuple of them, with
    `sample_args` a tuple of tensors, or a tuple of such tuples).

    A Module comes back with its forward graphed while its training mode is the one it had at
    capture (the other mode runs eagerly); a function comes back as a new callable. Several
    callables share one memory pool: call their forwards in the order given and their backwards
    in the reverse order (as a model's layers run), which is the order they are captured in.
    """
    from ..autograd import grad
    from ..nn import Module
    from . import current_stream, graph, graphs, stream, Stream
    require("make_graphed_callables")
    just_one = not isinstance(callables, tuple)
    if just_one:
        callables, sample_args = (callables,), (sample_args,)
    if len(callables) != len(sample_args):
        raise ValueError(f"make_graphed_callables: got {len(callables)} callables and "
                         f"{len(sample_args)} sample_args; pass one tuple of args per callable.")
    surfaces = []
    for i, (fn, args) in enumerate(zip(callables, sample_args)):
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        for a in args:
            if not isinstance(a, Tensor) or a.device.type != "cuda":
                raise TypeError(f"make_graphed_callables: sample_args of callable {i} must be "
                                "CUDA tensors (the graph's static inputs).")
            if a.requires_grad and a._node is not None:
                raise RuntimeError(f"make_graphed_callables: sample_args of callable {i} must be "
                                   "leaves; pass .detach().requires_grad_() copies.")
        params = tuple(fn.parameters()) if isinstance(fn, Module) else ()
        surfaces.append((args, params))

    def diff_inputs(args, params):
        return [t for t in args + params if t.requires_grad]

    def input_grads(outs, gouts, inputs):
        return grad([o for o in outs if o.requires_grad], inputs,
                    [g for o, g in zip(outs, gouts) if o.requires_grad],
                    allow_unused=allow_unused_input)

    side = Stream()
    side.wait_stream(current_stream())
    with stream(side):   # warm-up: lazy inits and kernel compiles outside any capture
        for fn, (args, params) in zip(callables, surfaces):
            for _ in range(num_warmup_iters):
                outs = _as_tuple(fn(*args))
                inputs = diff_inputs(args, params)
                if inputs and any(o.requires_grad for o in outs):
                    input_grads(outs, [o.detach() * 0 + 1 for o in outs], inputs)
    current_stream().wait_stream(side)

    pool = graphs.graph_pool_handle() if pool is None else pool
    fwd_graphs = [graphs.CUDAGraph() for _ in callables]
    bwd_graphs = [graphs.CUDAGraph() for _ in callables]
    static_outs = []
    for fn, (args, params), g in zip(callables, surfaces, fwd_graphs):
        with graph(g, pool=pool):
            static_outs.append(_as_tuple(fn(*args)))
    static_gouts, static_gins = [None] * len(callables), [None] * len(callables)
    for k in reversed(range(len(callables))):
        args, params = surfaces[k]
        outs = static_outs[k]
        gouts = tuple(_empty_like(o) if o.requires_grad else None for o in outs)
        inputs = diff_inputs(args, params)
        with graph(bwd_graphs[k], pool=pool):
            gins = input_grads(outs, gouts, inputs) if inputs else ()
        it = iter(gins)
        static_gouts[k] = gouts
        static_gins[k] = tuple(next(it) if t.requires_grad else None for t in args + params)
        static_outs[k] = tuple(o.detach() for o in outs)   # the forward graph is no longer needed

    made = []
    for k, fn in enumerate(callables):
        apply = _graphed_function(fwd_graphs[k], bwd_graphs[k], surfaces[k][0] + surfaces[k][1],
                                  static_outs[k], static_gouts[k], static_gins[k])
        made.append(_wrap(fn, apply, len(surfaces[k][0]), surfaces[k][1]) if isinstance(fn, Module)
                    else _function(apply))
    return made[0] if just_one else tuple(made)


def _as_tuple(out):
    if isinstance(out, Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(o, Tensor) for o in out):
        return tuple(out)
    raise TypeError("make_graphed_callables: a callable must return a Tensor or a tuple of "
                    f"Tensors, got {type(out).__name__}.")


def _empty_like(t):
    from .._tensor import _new
    xp = backend.get_array_module(t.array)
    return _new(xp.empty_like(t.array))


def _graphed_function(fwd, bwd, static_in, static_out, static_gout, static_gin):
    from ..autograd import Function

    class Graphed(Function):
        @staticmethod
        def forward(ctx, *inputs):
            for s, t in zip(static_in, inputs):
                if backend._data_ptr(s.array) != backend._data_ptr(t.array):
                    s.array[...] = t.array
            fwd.replay()
            return tuple(_alias(o) for o in static_out)

        @staticmethod
        def backward(ctx, *gys):
            for s, g in zip(static_gout, gys):
                if s is not None and g is not None and \
                        backend._data_ptr(s.array) != backend._data_ptr(g.array):
                    s.array[...] = g.array
            bwd.replay()
            # the engine copies a custom Function's gradients before a leaf keeps them
            # (Note [Gradient ownership]), so the next replay can't change a stored .grad
            return tuple(None if g is None else _alias(g) for g in static_gin)

    return Graphed.apply


def _alias(t):
    from .._tensor import _new
    return _new(t.array)


def _function(apply):
    def graphed(*args):
        out = apply(*args)
        return out[0] if len(out) == 1 else out
    return graphed


def _wrap(module, apply, n_args, params):
    training = module.training
    eager = module.forward

    def forward(*args):
        if module.training != training:
            return eager(*args)
        if len(args) != n_args:
            raise TypeError(f"graphed {type(module).__name__}: expected {n_args} inputs (as "
                            f"the sample_args), got {len(args)}.")
        out = apply(*args, *params)
        return out[0] if len(out) == 1 else out
    module.forward = forward
    return module
