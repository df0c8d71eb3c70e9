"""The backward engine: an iterative walk over the recorded graph.

Note [Backward order]
~~~~~~~~~~~~~~~~~~~~~
1. Count, for every Node and every leaf reachable from the roots, how many edges lead into it.
2. Seed the roots' gradient buffers. A node runs once all its incoming gradients have arrived;
   among ready nodes the most recently created runs first (a heap on the creation sequence),
   so gradients become ready in reverse forward order, as in PyTorch. That is the order DDP's
   gradient hooks rely on to launch all-reduces early.
3. Running a node: apply the tensor hooks on its outputs' gradients, check the saved tensors'
   versions, call the closure, release the closure (unless retain_graph) so that saved arrays
   are freed as the walk goes, and add each returned gradient into its target's buffer.
4. A leaf's buffer is complete when its count reaches zero: its hooks run, then the gradient is
   accumulated into ``.grad`` (or captured for ``autograd.grad``), then post-accumulate hooks run.
5. With ``inputs`` (``autograd.grad``, ``backward(inputs=...)``) the walk is pruned to the nodes
   from which an input is reachable (``_needed``): no other backward closure runs. A non-leaf
   input's own node runs only if it leads on to another input; checkpoint's recomputation
   (``stop_at_inputs``) never runs past its inputs, which belong to the outer graph.

5. Callbacks queued during the walk with ``queue_callback`` (PyTorch's
   ``Variable._execution_engine.queue_callback``) run in order once every node and leaf is
   done, before backward returns (DDP waits there for its gradient all-reduces). A callback
   may queue more. A backward that raises drops its callbacks.

Nothing recurses, so a chain of 100,000 ops backpropagates without RecursionError.

Note [Gradient ownership]
~~~~~~~~~~~~~~~~~~~~~~~~~
Backward closures often pass a gradient array through unchanged (add, contiguous), so one
array can sit in two places. Buffers are only ever summed out of place, but a leaf's first
``.grad`` is later accumulated *in place*, so a leaf keeps an array without copying only when
nothing else can hold it. Built-in ops return fresh arrays, views (copied: ``base`` is set) or
the gradient they received, which leaves their buffer as it enters the next one; so an array
is in two places only when it is (a) returned for two edges of one node, (b) handed to a hook
(which may keep it), (c) a gradient the caller passed in, or (d) returned by a custom
``Function`` (which may return a saved tensor). Those are recorded in ``shared`` (a small dict
holding strong references, so ids stay unique) and copied when they reach a leaf.
"""
from __future__ import annotations

import heapq
import threading

from .. import _grad_mode
from .._tensor import Node, Tensor, _new, current_node

_tls = threading.local()   # .callbacks: one list per running backward in this thread (nested)


def queue_callback(callback) -> None:
    """Run callback() when the backward pass running in this thread ends (see Note
    [Backward order], step 5). Call it from a hook during backward."""
    stack = getattr(_tls, "callbacks", None)
    if not stack:
        raise RuntimeError("queue_callback: no backward pass is running in this thread; call it "
                           "from a tensor or post-accumulate-grad hook during backward.")
    stack[-1].append(callback)


def _run_callbacks(callbacks: list):
    i = 0
    while i < len(callbacks):   # a callback may queue more
        callbacks[i]()
        i += 1


def _fmt_saved(t: Tensor) -> str:
    return f"[{t.array.dtype} {list(t.array.shape)}]"


def _check_saved(node: Node):
    for box, version, t in node.saved:
        if box[0] != version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an "
                f"inplace operation: {_fmt_saved(t)}, needed by {node.name_()}, is at version "
                f"{box[0]}; expected version {version} instead. Use an out-of-place op, or "
                ".clone() the tensor before changing it.")


def _graph(roots, stop=None):
    """Count incoming edges for every Node and leaf reachable from the root nodes (not
    looking past the nodes whose ids are in `stop`)."""
    deps: dict = {}
    seen = set()
    stack = [n for n in roots if n is not None]
    for n in stack:
        seen.add(n)
    while stack:
        node = stack.pop()
        if stop is not None and id(node) in stop:
            continue
        for e in node.edges:
            if e is None:
                continue
            tgt = e[0]
            k = id(tgt)
            deps[k] = deps.get(k, 0) + 1
            if type(tgt) is Node and tgt not in seen:
                seen.add(tgt)
                stack.append(tgt)
    return deps


def _needed(roots, targets):
    """ids of the Nodes and leaves from which a target (an input of autograd.grad) is reachable.

    Only these run: a node that leads to no input is pruned, so its backward never runs.
    """
    parents: dict = {}  # id(target) -> nodes with an edge into it
    seen = set(roots)
    stack = list(seen)
    while stack:
        node = stack.pop()
        for e in node.edges:
            if e is None:
                continue
            tgt = e[0]
            parents.setdefault(id(tgt), []).append(node)
            if type(tgt) is Node and tgt not in seen:
                seen.add(tgt)
                stack.append(tgt)
    needed = set(targets)
    stack = list(targets)
    while stack:
        for node in parents.get(stack.pop(), ()):
            k = id(node)
            if k not in needed:
                needed.add(k)
                stack.append(k)
    return needed


def _as_grad(g, t: Tensor):
    """Normalise a user-given gradient for output t."""
    if g is None:
        if t.array.size != 1:
            raise RuntimeError(f"grad can be implicitly created only for scalar outputs; the "
                               f"output has shape {tuple(t.array.shape)}. Pass gradient= "
                               "(e.g. torch.ones_like(out)) or reduce the output first.")
        from .. import backend
        xp = backend.get_array_module(t.array)
        return _new(xp.ones(t.array.shape, t.array.dtype)), True
    if not isinstance(g, Tensor):
        from ..creation import tensor as _tensor
        g = _tensor(g, dtype=t.array.dtype, device=t.device)
    if tuple(g.array.shape) != tuple(t.array.shape):
        raise RuntimeError(f"backward: gradient has shape {tuple(g.array.shape)} but the output "
                           f"has shape {tuple(t.array.shape)}; they must match.")
    return g, False


def run_backward(outputs, grad_outputs, retain_graph=False, create_graph=False, inputs=None,
                 allow_unused=False, accumulate=True, stop_at_inputs=False):
    """Backpropagate from `outputs`. With `inputs` and accumulate=False, return their grads.

    `inputs` may also hold graph edges ``(node, output index)`` (checkpoint uses them), and
    with stop_at_inputs the walk ends at the inputs: their own backward never runs.
    """
    leaf_roots = []
    root_nodes = []
    root_grads = []
    for i, (t, g) in enumerate(zip(outputs, grad_outputs)):
        if not t.requires_grad:
            raise RuntimeError(f"element {i} of tensors does not require grad and does not have "
                               "a grad_fn. Did you compute it under no_grad, or forget "
                               "requires_grad=True on the inputs?")
        g, fresh = _as_grad(g, t)
        current_node(t)  # a view whose base was rewritten in place gets its new history first
        root_grads.append((t, g, fresh))
        if t._node is None:
            leaf_roots.append(t)
        else:
            root_nodes.append(t._node)

    capture = None  # id(target) -> list of (slot, out_idx)
    captured = None
    if inputs is not None:
        inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        capture = {}
        captured = [None] * len(inputs)
        for slot, t in enumerate(inputs):
            if type(t) is tuple:  # an edge (node, output index)
                capture.setdefault(id(t[0]), []).append((slot, t[1]))
                continue
            if not t.requires_grad:
                raise RuntimeError(f"grad: input {slot} does not require grad; nothing can "
                                   "flow to it.")
            current_node(t)
            tgt = t if t._node is None else t._node
            capture.setdefault(id(tgt), []).append((slot, t._out_idx))

    deps = _graph(root_nodes, capture if stop_at_inputs else None)
    needed = None if capture is None else _needed(root_nodes, capture)
    buffers: dict = {}
    leaves: dict = {}  # id(leaf) -> [leaf, grad]
    shared: dict = {}  # id -> array: arrays that must be copied before a leaf keeps them

    def place(tgt, idx, g):
        k = id(tgt)
        if type(tgt) is Node:
            buf = buffers.get(k)
            if buf is None:
                buf = buffers[k] = [None] * tgt.n_out
            cur = buf[idx]
            buf[idx] = g if cur is None else cur + g
        else:
            ent = leaves.get(k)
            if ent is None:
                leaves[k] = [tgt, g]
            else:
                ent[1] = ent[1] + g

    for t, g, fresh in root_grads:
        if not fresh:
            shared[id(g.array)] = g.array
        place(t if t._node is None else t._node, t._out_idx, g)

    heap = []
    for n in set(root_nodes):
        if deps.get(id(n), 0) == 0 and (needed is None or id(n) in needed):
            heapq.heappush(heap, (-n.seq, id(n), n))

    prev_mode = _grad_mode.state.enabled
    _grad_mode.state.enabled = create_graph
    stack = getattr(_tls, "callbacks", None)
    if stack is None:
        stack = _tls.callbacks = []
    callbacks: list = []
    stack.append(callbacks)
    try:
        ready_leaves = [t for t in leaf_roots if deps.get(id(t), 0) == 0]
        while heap or ready_leaves:
            for leaf in ready_leaves:
                _finish_leaf(leaf, leaves.pop(id(leaf))[1], shared, capture, captured,
                             create_graph, accumulate)
            ready_leaves = []
            if not heap:
                break
            _, key, node = heapq.heappop(heap)
            grads = buffers.pop(key)
            if node.hooks:
                for i, hooks in node.hooks.items():
                    for h in list(hooks):
                        if grads[i] is None:
                            continue
                        shared[id(grads[i].array)] = grads[i].array  # the hook may keep it
                        r = h(grads[i])
                        if r is not None:
                            grads[i] = r
            if capture is not None and key in capture:
                for slot, i in capture[key]:
                    captured[slot] = grads[i]
                if stop_at_inputs or not any(e is not None and id(e[0]) in needed
                                             for e in node.edges):
                    continue  # nothing beyond this input is wanted: don't run its backward
            fn = node.fn
            if fn is None:
                raise RuntimeError(
                    f"Trying to backward through the graph a second time (at {node.name_()}), "
                    "or to use a gradient after it was freed. Saved tensors are released after "
                    "backward; pass retain_graph=True to the first backward to keep them.")
            if node.saved:
                _check_saved(node)
            if node.n_out > 1:
                for i, g in enumerate(grads):
                    if g is None:
                        shape, dtype, xpmod = node.out_meta[i]
                        grads[i] = _new(xpmod.zeros(shape, dtype))
            if node.y is not None:
                if node.out_vbox[0] != 0:
                    raise RuntimeError(
                        "one of the variables needed for gradient computation has been modified "
                        f"by an inplace operation: the output of {node.name_()} is at version "
                        f"{node.out_vbox[0]}; expected version 0 instead. Use an out-of-place "
                        "op, or .clone() the output before changing it.")
                out = _new(node.y)
                out._vbox = node.out_vbox
                out._node = node
                out.requires_grad = True
                res = fn(grads[0], out)
            else:
                res = fn(*grads)
            if not retain_graph:
                node.fn = None
                node.saved = ()
                node.y = None
            if type(res) is not tuple:
                res = (res,) if not isinstance(res, list) else tuple(res)
            edges = node.edges
            if len(res) != len(edges):
                raise RuntimeError(f"{node.name_()} returned {len(res)} gradients for "
                                   f"{len(edges)} inputs; expected one per input (None for "
                                   "non-differentiable ones).")
            if node.opaque or len(res) > 1:
                _mark_shared(res, node.opaque, shared)
            for e, g in zip(edges, res):
                if e is None or g is None:
                    continue
                tgt, idx, dtype = e
                if needed is not None and id(tgt) not in needed:
                    continue  # pruned: leads to no input of autograd.grad
                if not isinstance(g, Tensor):
                    g = _new(g)
                if g.array.dtype != dtype:
                    g = g.to(dtype)
                place(tgt, idx, g)
                k = id(tgt)
                d = deps[k] - 1
                deps[k] = d
                if d == 0:
                    if type(tgt) is Node:
                        heapq.heappush(heap, (-tgt.seq, k, tgt))
                    else:
                        ready_leaves.append(tgt)
        if callbacks:
            _run_callbacks(callbacks)
    finally:
        stack.pop()
        _grad_mode.state.enabled = prev_mode

    if captured is not None and accumulate:
        # Tensor.backward(inputs=[...]): non-leaf inputs get .grad too, as in PyTorch
        for g, t in zip(captured, inputs):
            if g is not None and type(t) is not tuple and t._node is not None:
                gd = g if create_graph else g.detach()
                t.grad = gd if t.grad is None else t.grad + gd
        return None
    if captured is not None:
        for slot, (g, t) in enumerate(zip(captured, inputs)):
            if g is None and not allow_unused:
                raise RuntimeError(f"grad: input {slot} was not used in the graph of the "
                                   "outputs; pass allow_unused=True to get None for it.")
        return tuple(captured)
    return None


def _mark_shared(res, opaque, shared):
    """Record arrays one node hands to several edges, and every array of a custom Function."""
    seen = set()
    for g in res:
        if isinstance(g, Tensor):
            a = g.array
            if opaque or id(a) in seen:
                shared[id(a)] = a
            seen.add(id(a))


def _finish_leaf(leaf, g, shared, capture, captured, create_graph, accumulate):
    if leaf._hooks:
        for h in list(leaf._hooks):
            shared[id(g.array)] = g.array  # the hook may keep it
            r = h(g)
            if r is not None:
                g = r
    if capture is not None:
        slots = capture.get(id(leaf), ())
        for slot, _ in slots:
            captured[slot] = g
        if not (accumulate and slots):  # backward(inputs=...) accumulates into those only
            return
    elif not accumulate:
        return
    if leaf.grad is None:
        if create_graph:
            leaf.grad = g
        else:
            a = g.array
            owned = a.base is None and shared.get(id(a)) is not a
            leaf.grad = _new(a if owned else a.copy())
    elif create_graph or leaf.grad.requires_grad:
        leaf.grad = leaf.grad + g
    else:
        gd = leaf.grad.array
        if gd.shape != g.array.shape:
            raise RuntimeError(f"backward: the existing .grad has shape {gd.shape} but the new "
                               f"gradient has shape {g.array.shape}; zero the grads first.")
        gd += g.array
        leaf.grad._vbox[0] += 1
    if leaf._post_hooks:
        for h in list(leaf._post_hooks):
            h(leaf)
