"""Augmented assignment (`+=`, `-=`, ...) and `.data` behave as PyTorch's: in place, same object.

Without __iadd__ & co. Python falls back to `p = p - lr * g`, which rebinds the name and leaves
the model's weights untouched: training becomes a silent no-op. These tests catch exactly that.
"""
import operator

import numpy as np
import pytest

import tensor
from tensor import nn

FLOAT_OPS = [("__iadd__", operator.iadd, np.add), ("__isub__", operator.isub, np.subtract),
             ("__imul__", operator.imul, np.multiply), ("__itruediv__", operator.itruediv,
                                                        np.true_divide),
             ("__ipow__", operator.ipow, np.power), ("__ifloordiv__", operator.ifloordiv,
                                                     np.floor_divide),
             ("__imod__", operator.imod, np.mod)]
INT_OPS = [("__iand__", operator.iand, np.bitwise_and), ("__ior__", operator.ior, np.bitwise_or),
           ("__ixor__", operator.ixor, np.bitwise_xor)]


@pytest.mark.parametrize("name,op,ref", FLOAT_OPS, ids=[o[0] for o in FLOAT_OPS])
def test_float_augmented_assignment_writes_in_place(name, op, ref):
    assert name in vars(tensor.Tensor), f"Tensor lacks {name}: Python would rebind the name"
    x0 = np.array([[1.5, 2.0], [3.0, 4.5]])
    x = tensor.tensor(x0)
    arr, alias, v0 = x.array, x, x._version
    x = op(x, tensor.tensor([2.0, 0.5]))
    assert x is alias and x.array is arr and x._version > v0
    np.testing.assert_allclose(arr, ref(x0, np.array([2.0, 0.5])))


@pytest.mark.parametrize("name,op,ref", INT_OPS, ids=[o[0] for o in INT_OPS])
def test_int_augmented_assignment_writes_in_place(name, op, ref):
    x0 = np.array([5, 6, 7])
    x = tensor.tensor(x0)
    alias = x
    x = op(x, tensor.tensor([3, 3, 3]))
    assert x is alias
    np.testing.assert_array_equal(x.numpy(), ref(x0, 3))


def test_imatmul_in_place():
    x = tensor.tensor([[1.0, 2.0], [3.0, 4.0]])
    alias = x
    x @= tensor.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert x is alias
    np.testing.assert_array_equal(x.numpy(), [[2.0, 1.0], [4.0, 3.0]])


def test_manual_sgd_loop_trains():
    """PyTorch's tutorial loop: `with no_grad(): p -= lr * p.grad` must change the weights."""
    tensor.manual_seed(0)
    model = nn.Linear(3, 1)
    x = tensor.randn(64, 3)
    y = x @ tensor.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    params = list(model.parameters())
    first = None
    for _ in range(200):
        loss = ((model(x) - y) ** 2).mean()
        first = float(loss) if first is None else first
        model.zero_grad()
        loss.backward()
        with tensor.no_grad():
            for p in params:
                p -= 0.1 * p.grad
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert float(loss) < 1e-3 * first
    np.testing.assert_allclose(model.weight.numpy(force=True), [[1.0, -2.0, 0.5]], atol=1e-2)


def test_iadd_on_leaf_requiring_grad_is_refused():
    w = tensor.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w += 1


def test_iadd_records_graph_on_non_leaf():
    x = tensor.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h += x * x          # h = 3x + x^2, d/dx = 3 + 2x
    h.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 7.0])


def test_data_is_a_detached_tensor_on_the_same_storage():
    p = nn.Parameter(tensor.ones(2, 2))
    d = p.data
    assert isinstance(d, tensor.Tensor) and not d.requires_grad and d.grad_fn is None
    assert d.array is p.array
    d.add_(tensor.full((2, 2), 2.0), alpha=-0.5)        # the word-LM update: p.data.add_(g, alpha=-lr)
    np.testing.assert_array_equal(p.numpy(force=True), np.zeros((2, 2)))
    p.data.copy_(tensor.full((2, 2), 7.0))
    np.testing.assert_array_equal(p.numpy(force=True), np.full((2, 2), 7.0))


def test_data_setter_replaces_storage():
    p = nn.Parameter(tensor.ones(2))
    p.data = tensor.zeros(3)
    assert p.shape == (3,) and p.requires_grad
    with pytest.raises(TypeError, match="expected a Tensor"):
        p.data = [1, 2, 3]
