"""Autograd behaviour: accumulation, higher order, in-place checks, hooks, Function, grad modes."""
import gc
import sys
import weakref

import numpy as np
import pytest

import tensor
from tensor.autograd import Function, grad, gradcheck, gradgradcheck


def t64(a, rg=True):
    return tensor.tensor(np.asarray(a, np.float64), requires_grad=rg)


def test_grads_accumulate_across_backward_calls():
    x = t64([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3 + 2, 3 + 4])


def test_shared_gradient_array_is_not_aliased_between_leaves():
    # add's backward hands the same gradient to both inputs; in-place changes must not leak
    a, b = t64([1.0, 2.0]), t64([3.0, 4.0])
    (a + b).sum().backward()
    a.grad.mul_(10)
    np.testing.assert_allclose(b.grad.numpy(), [1.0, 1.0])
    (a + b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [11.0, 11.0])
    np.testing.assert_allclose(b.grad.numpy(), [2.0, 2.0])


def test_user_gradient_is_not_aliased():
    x = t64([1.0, 2.0])
    g = t64([1.0, 1.0], rg=False)
    x.backward(g)
    x.grad.add_(1)
    np.testing.assert_allclose(g.numpy(), [1.0, 1.0])


def test_non_scalar_backward_needs_gradient():
    x = t64([1.0, 2.0])
    with pytest.raises(RuntimeError, match="implicitly created only for scalar"):
        (x * 2).backward()


def test_second_backward_without_retain_graph_raises():
    x = t64([1.0, 2.0])
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = t64([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])


def test_grad_function_and_allow_unused():
    x, z = t64([1.0, 2.0]), t64([5.0])
    y = (x ** 2).sum()
    (gx,) = grad(y, x, retain_graph=True)
    np.testing.assert_allclose(gx.numpy(), [2.0, 4.0])
    assert x.grad is None  # grad() does not accumulate
    with pytest.raises(RuntimeError, match="not used"):
        grad(y, [x, z], retain_graph=True)
    gx, gz = grad(y, [x, z], allow_unused=True)
    assert gz is None


def test_grad_of_non_leaf_input():
    x = t64([1.0, 2.0])
    h = x * 3
    y = (h * h).sum()
    (gh,) = grad(y, h)
    np.testing.assert_allclose(gh.numpy(), 2 * h.detach().numpy())


def test_second_order_gradient():
    x = t64([0.5, -1.0, 2.0])
    y = (x ** 3).sum()
    (g,) = grad(y, x, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), 3 * x.detach().numpy() ** 2)
    (gg,) = grad(g.sum(), x)
    np.testing.assert_allclose(gg.numpy(), 6 * x.detach().numpy())


def test_third_order_through_tanh():
    x = t64([0.3])
    y = x.tanh()
    (g1,) = grad(y, x, create_graph=True)
    (g2,) = grad(g1, x, create_graph=True)
    (g3,) = grad(g2, x)
    t = np.tanh(0.3)
    np.testing.assert_allclose(g3.numpy(), [-2 * (1 - t * t) * (1 - 3 * t * t)], rtol=1e-10)


def test_gradient_penalty_double_backward():
    # the WGAN-GP pattern: || d out / d x ||^2 backpropagated into the weights
    rng = np.random.default_rng(0)
    w = t64(rng.normal(size=(3, 4)))
    x = t64(rng.normal(size=(2, 3)))

    def penalty(w, x):
        out = (x @ w).tanh().sum()
        (gx,) = grad(out, x, create_graph=True)
        return (gx * gx).sum()
    assert gradcheck(penalty, (w, x))


@pytest.mark.parametrize("fn", [
    lambda a, b: (a * b).exp().sum(),
    lambda a, b: (a @ b.T).softmax(1).sum(0).log().sum(),
    lambda a, b: (a / b).sigmoid().sum() + (a - b).abs().sum(),
    lambda a, b: tensor.gelu(a * b).sum() + a.max(1).values.sum(),
])
def test_gradgradcheck(fn):
    rng = np.random.default_rng(1)
    a = t64(rng.uniform(0.5, 1.5, size=(2, 3)))
    b = t64(rng.uniform(0.5, 1.5, size=(2, 3)))
    assert gradgradcheck(fn, (a, b))


def test_inplace_on_saved_tensor_raises_at_backward():
    x = t64([1.0, 2.0])
    h = x * 2
    y = h.exp()          # exp saves its output
    z = (h * h).sum()    # mul saves h
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    h.mul_(3)
    with pytest.raises(RuntimeError, match="modified by an inplace operation.*version 1"):
        z.backward()


def test_inplace_through_view_is_detected():
    x = t64([[1.0, 2.0], [3.0, 4.0]])
    h = x * 1
    y = (h * h).sum()  # mul saves h
    v = h.detach()[0]  # a view sharing h's version counter through detach
    v.zero_()
    with pytest.raises(RuntimeError, match="inplace"):
        y.backward()


def test_inplace_on_leaf_requiring_grad_raises():
    x = t64([1.0])
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x.add_(1)
    with tensor.no_grad():
        x.add_(1)
    np.testing.assert_allclose(x.detach().numpy(), [2.0])


def test_inplace_ops_are_differentiated():
    x = t64([1.0, 2.0, 3.0])
    h = x * 2
    h.mul_(h)          # h = (2x)^2
    h.add_(x)          # h = 4x^2 + x
    h[1] = 0.0         # cuts the gradient at index 1
    h.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [8 * 1 + 1, 0.0, 8 * 3 + 1])


def test_setitem_gradient_to_value():
    x = t64(np.zeros((2, 3)), rg=False)
    v = t64([1.0, 2.0, 3.0])
    x[1] = v * 2
    (x * x).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), 8 * v.detach().numpy())


def test_version_counter_counts_inplace_ops():
    t = tensor.zeros(3)
    assert t._version == 0
    t.add_(1)
    t[0] = 5
    assert t._version == 2


def test_long_chain_backward_no_recursion_error():
    x = t64([1.0])
    y = x
    for _ in range(100_000):
        y = y * 1.0
    limit = sys.getrecursionlimit()
    y.sum().backward()
    assert sys.getrecursionlimit() == limit
    np.testing.assert_allclose(x.grad.numpy(), [1.0])


def test_backward_releases_saved_buffers():
    x = t64(np.ones(1000))
    h = x * 2
    ref = weakref.ref(h)
    y = (h * h).sum()
    del h
    gc.collect()
    assert ref() is not None  # the graph keeps h for mul's backward ...
    y.backward()
    gc.collect()
    assert ref() is None  # ... and drops it once backward ran (retain_graph=False)


def test_tensor_hooks_and_retain_grad():
    x = t64([1.0, 2.0])
    h = x * 3
    h.retain_grad()
    seen = []
    h.register_hook(lambda g: seen.append(g.numpy().copy()))
    handle = x.register_hook(lambda g: g * 10)
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.detach().numpy())
    np.testing.assert_allclose(seen[0], 2 * h.detach().numpy())
    np.testing.assert_allclose(x.grad.numpy(), 10 * 3 * 2 * h.detach().numpy())
    handle.remove()
    x.grad = None
    (x * 1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])


def test_post_accumulate_grad_hooks_fire_in_reverse_forward_order():
    w1, w2, w3 = t64([1.0]), t64([2.0]), t64([3.0])
    order = []
    for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
        w.register_post_accumulate_grad_hook(lambda p, n=name: order.append(n))
    y = ((t64([1.0], rg=False) * w1).tanh() * w2).tanh() * w3
    y.sum().backward()
    assert order == ["w3", "w2", "w1"]


def test_detach_and_requires_grad_():
    x = t64([1.0])
    d = (x * 2).detach()
    assert not d.requires_grad and d.grad_fn is None
    i = tensor.tensor([1, 2])
    with pytest.raises(RuntimeError, match="floating point"):
        i.requires_grad_()


def test_no_grad_enable_grad_set_grad_enabled():
    x = t64([1.0])
    with tensor.no_grad():
        assert not (x * 2).requires_grad
        with tensor.enable_grad():
            assert (x * 2).requires_grad
    with tensor.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad

    @tensor.no_grad()
    def f(a):
        return a * 2
    assert not f(x).requires_grad
    assert tensor.is_grad_enabled()


class Cube(Function):
    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return x * x * x * k

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        return gy * 3 * x * x * ctx.k, None


class SplitTwo(Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2, x * 3

    @staticmethod
    def backward(ctx, ga, gb):
        return ga * 2 + gb * 3


def test_custom_function():
    x = t64([1.0, 2.0])
    assert Cube.apply(x, 2.0).grad_fn is not None
    assert gradcheck(lambda a: Cube.apply(a, 2.0), (x,))
    a, b = SplitTwo.apply(x)
    a.sum().backward()  # b's gradient is materialised as zeros
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_custom_function_needs_input_grad_and_saved_check():
    seen = {}

    class F(Function):
        @staticmethod
        def forward(ctx, a, b):
            seen["needs"] = ctx.needs_input_grad
            ctx.save_for_backward(a)
            return a * b

        @staticmethod
        def backward(ctx, gy):
            (a,) = ctx.saved_tensors
            return gy, None

    a = t64([1.0])
    b = t64([2.0], rg=False)
    h = a * 1
    y = F.apply(h, b)
    assert seen["needs"] == (True, False)
    h.add_(1)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()


def test_gradcheck_reports_a_wrong_backward():
    class Wrong(Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, gy):
            return gy  # should be 2x gy

    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        gradcheck(lambda a: Wrong.apply(a), (t64([1.5, 2.0]),))


def test_backward_with_inputs_accumulates_only_into_them():
    a, b = t64([1.0, 2.0]), t64([3.0])
    h = a * b
    (h * h).sum().backward(inputs=[a, h])
    np.testing.assert_allclose(a.grad.numpy(), 2 * (a * b).detach().numpy() * 3.0)
    np.testing.assert_allclose(h.grad.numpy(), 2 * h.detach().numpy())
    assert b.grad is None


def test_gradient_seen_by_a_hook_is_not_changed_by_later_accumulation():
    x = t64([1.0, 2.0])
    kept = []
    x.register_hook(lambda g: kept.append(g))
    (x * 1).sum().backward()
    (x * 1).sum().backward()  # accumulates into x.grad in place
    np.testing.assert_allclose(kept[0].numpy(), [1.0, 1.0])
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_custom_function_returning_a_saved_tensor_does_not_alias_grad():
    class PassSaved(Function):
        @staticmethod
        def forward(ctx, a, w):
            ctx.save_for_backward(w)
            return a * 1

        @staticmethod
        def backward(ctx, gy):
            (w,) = ctx.saved_tensors
            return w, None  # the gradient *is* the saved tensor w

    a = t64([0.0, 0.0])
    w = t64([3.0, 4.0], rg=False)
    PassSaved.apply(a, w).sum().backward()
    PassSaved.apply(a, w).sum().backward()
    np.testing.assert_allclose(w.numpy(), [3.0, 4.0])
    np.testing.assert_allclose(a.grad.numpy(), [6.0, 8.0])
