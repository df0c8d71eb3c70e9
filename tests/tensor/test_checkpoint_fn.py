"""tensor.autograd.checkpoint / checkpoint_sequential (torch.utils.checkpoint): the same
gradients as without checkpointing, dropout masks reproduced, and fewer bytes held by the graph."""
import numpy as np
import pytest

import tensor
from tensor import nn
from tensor._tensor import Node
from tensor.autograd import checkpoint, checkpoint_sequential
from tests.helpers import check_grad


def _root(a):
    return a if a.base is None else a.base


def graph_bytes(t, exclude=()) -> int:
    """Bytes of the arrays the graph behind t keeps alive (closure cells, saved outputs),
    leaves and the `exclude` tensors (parameters, inputs) left out: what checkpointing is
    meant to save."""
    seen_arrays, seen_nodes, total = {id(_root(e.array)) for e in exclude}, set(), 0
    stack = [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        cells = []
        for c in (node.fn.__closure__ or ()) if node.fn is not None else ():
            try:
                cells.append(c.cell_contents)
            except ValueError:
                pass
        cells.append(node.y)
        for v in cells:
            a = v.array if isinstance(v, tensor.Tensor) else v
            if isinstance(v, tensor.Tensor) and v.is_leaf:
                continue  # parameters and inputs exist anyway
            if isinstance(a, np.ndarray):
                root = _root(a)
                if id(root) not in seen_arrays:
                    seen_arrays.add(id(root))
                    total += root.nbytes
        stack.extend(e[0] for e in node.edges if e is not None and type(e[0]) is Node)
    return total


def _mlp(depth=8, width=64, p=0.0):
    tensor.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
        if p:
            layers.append(nn.Dropout(p))
    return nn.Sequential(*layers)


def _grads(model):
    return [p.grad.numpy().copy() for p in model.parameters()]


def test_checkpoint_sequential_same_gradients_and_less_graph_memory():
    model = _mlp()
    x = tensor.randn(32, 64, requires_grad=True)
    plain = model(x)
    keep = list(model.parameters()) + [x]
    plain_bytes = graph_bytes(plain, keep)
    (plain * plain).sum().backward()
    g_plain, gx_plain = _grads(model), x.grad.numpy().copy()
    model.zero_grad()
    x.grad = None
    ck = checkpoint_sequential(model, 4, x, use_reentrant=False)
    ck_bytes = graph_bytes(ck, keep)
    np.testing.assert_allclose(ck.detach().numpy(), plain.detach().numpy(), rtol=1e-6)
    (ck * ck).sum().backward()
    for a, b in zip(_grads(model), g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(x.grad.numpy(), gx_plain, rtol=1e-5, atol=1e-7)
    print(f"graph bytes: plain {plain_bytes}, checkpointed (4 segments) {ck_bytes}")
    assert ck_bytes < plain_bytes / 2


def test_checkpoint_reproduces_dropout_masks():
    model = _mlp(depth=3, p=0.5)
    x = tensor.randn(16, 64)
    tensor.manual_seed(123)
    out = checkpoint(model, x, use_reentrant=False)
    out.sum().backward()
    g_ck = _grads(model)
    model.zero_grad()
    tensor.manual_seed(123)
    model(x).sum().backward()
    for a, b in zip(_grads(model), g_ck):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_checkpoint_gradcheck_with_closure_tensor_and_two_outputs():
    def f(a, b):
        h = a.sin() * 3  # an outside non-leaf the checkpointed function reads from its closure

        def inner(u):
            return (u * h).tanh(), u.exp() + b
        p, q = checkpoint(inner, a * b, use_reentrant=False)
        return (p * q).sum() + p.sum()
    rng = np.random.default_rng(0)
    check_grad(f, rng.normal(size=(3, 2)), rng.normal(size=(2,)))


def test_checkpoint_refuses_changed_inputs_and_runs_without_grad():
    x = tensor.randn(4, requires_grad=True)
    y = x * 1
    out = checkpoint(lambda t: t.sin(), y, use_reentrant=False)
    with tensor.no_grad():
        y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    with tensor.no_grad():
        assert checkpoint(lambda t: t * 2, x).grad_fn is None


def test_grad_prunes_nodes_that_do_not_lead_to_the_inputs():
    calls = {"x": 0, "y": 0}

    class Count(tensor.autograd.Function):
        @staticmethod
        def forward(ctx, t, key):
            ctx.key = key
            return t * 2

        @staticmethod
        def backward(ctx, g):
            calls[ctx.key] += 1
            return g * 2, None

    x = tensor.randn(3, requires_grad=True)
    y = tensor.randn(3, requires_grad=True)
    out = (Count.apply(x, "x") * Count.apply(y, "y")).sum()
    (gx,) = tensor.autograd.grad(out, [x])
    assert calls == {"x": 1, "y": 0}
    np.testing.assert_allclose(gx.numpy(), 4 * y.detach().numpy())
    # a non-leaf input: its own backward does not run either
    h = Count.apply(x, "x")
    out = (h * y).sum()
    (gh,) = tensor.autograd.grad(out, [h])
    assert calls == {"x": 1, "y": 0}
    np.testing.assert_allclose(gh.numpy(), y.detach().numpy())
