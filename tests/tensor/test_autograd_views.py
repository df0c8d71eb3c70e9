"""In-place ops on views rewrite the base's history (PyTorch's CopySlices), and every array a
backward reads is version-checked (changing an index, mask or condition after the forward
gives PyTorch's "modified by an inplace operation" error, not a silently wrong gradient)."""
import numpy as np
import pytest

import tensor
from tests.helpers import check_grad, requires_cupy

torch = pytest.importorskip("torch")


def _x0():
    return np.arange(12.0).reshape(3, 4) / 7 - 0.5


def _v0():
    return np.array([0.3, -1.2, 2.0])


# each case: fn(lib, x, v) -> scalar, written once for both libraries
def _setitem_column(lib, x, v):
    y = x * 2
    y[:, 0] = v * 3
    return (y * y).sum()


def _zero_row(lib, x, v):
    y = x.sin()
    y[1].zero_()
    return (y * y).sum()


def _narrow_copy_into_buffer(lib, x, v):
    buf = lib.zeros(3, 4, dtype=lib.float64)
    buf.narrow(1, 2, 1).copy_(v.reshape(3, 1))
    return (buf * x).sum()


def _view_mul_by_tensor(lib, x, v):
    y = x * 1.5
    w = y.narrow(1, 1, 3)
    w.mul_(v.reshape(3, 1))
    return (y * y).sum() + (w * w).sum()


def _two_views_overlap(lib, x, v):
    y = x * 1
    row, col = y[0], y[:, 1]  # col was made before the write to row and overlaps it
    row.mul_(2)
    return (col * col).sum() + y.sum()


def _transposed_view(lib, x, v):
    y = (x * 1).t()
    y[1].add_(v.sum())
    return (y.reshape(-1) * lib.arange(12.0, dtype=lib.float64)).sum()


def _view_of_view(lib, x, v):
    y = x.cos()
    z = y[1:][:, ::2]
    z.sub_(v[:2].reshape(2, 1))
    return (y * lib.arange(12.0, dtype=lib.float64).reshape(3, 4)).sum()


def _element_assign(lib, x, v):
    y = x * 1
    y[0, 0] = v[1] * v[2]
    y[2][3].mul_(v[0])
    return (y * y).sum()


CASES = [_setitem_column, _zero_row, _narrow_copy_into_buffer, _view_mul_by_tensor,
         _two_views_overlap, _transposed_view, _view_of_view, _element_assign]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_inplace_on_view_matches_torch(case):
    grads = []
    for lib in (torch, tensor):
        x = lib.tensor(_x0(), requires_grad=True)
        v = lib.tensor(_v0(), requires_grad=True)
        out = case(lib, x, v)
        out.backward()
        grads.append((out.item(), x.grad.numpy(), v.grad.numpy() if v.grad is not None else None))
    (ot, gxt, gvt), (oz, gxz, gvz) = grads
    np.testing.assert_allclose(oz, ot, rtol=1e-12)
    np.testing.assert_allclose(gxz, gxt, rtol=1e-10, atol=1e-12)
    if gvt is None:
        assert gvz is None or not gvz.any()
    else:
        np.testing.assert_allclose(gvz, gvt, rtol=1e-10, atol=1e-12)


@requires_cupy
@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_inplace_on_view_on_gpu_matches_cpu(case):
    """The same cases on CuPy (view positions come from CuPy's data pointers)."""
    res = []
    for dev in ("cpu", "cuda"):
        x = tensor.tensor(_x0(), device=dev, requires_grad=True)
        v = tensor.tensor(_v0(), device=dev, requires_grad=True)

        class Lib:  # the case's lib.zeros / lib.arange land on the device
            float64 = tensor.float64

            @staticmethod
            def zeros(*s, dtype=None):
                return tensor.zeros(*s, dtype=dtype, device=dev)

            @staticmethod
            def arange(n, dtype=None):
                return tensor.arange(n, dtype=dtype, device=dev)
        out = case(Lib, x, v)
        out.backward()
        res.append((out.item(), x.grad.cpu().numpy(),
                    None if v.grad is None else v.grad.cpu().numpy()))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=1e-12)
    np.testing.assert_allclose(res[1][1], res[0][1], rtol=1e-10, atol=1e-12)
    if res[0][2] is not None:
        np.testing.assert_allclose(res[1][2], res[0][2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_inplace_on_view_gradcheck(case):
    check_grad(lambda x, v: case(tensor, x, v), _x0(), _v0())


def test_base_grad_fn_is_copy_slices_and_view_reads_from_it():
    x = tensor.tensor(_x0(), requires_grad=True)
    y = x * 2
    v = y[:, 0]
    v.mul_(3)
    assert y.grad_fn.name_() == "CopySlicesBackward0"
    assert v.grad_fn.next_functions[0][0] is not None
    v.sum().backward()
    expect = np.zeros((3, 4))
    expect[:, 0] = 6.0
    np.testing.assert_allclose(x.grad.numpy(), expect)


def test_leaf_is_refused_also_through_a_view():
    x = tensor.ones(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x[:, 0] = 2.0
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        x[1].zero_()
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        x.narrow(0, 0, 1).mul_(2)
    with tensor.no_grad():  # as optimizers do
        x[1].zero_()
    assert x.array[1].sum() == 0


def test_saved_base_is_refused_after_a_view_write():
    x = tensor.tensor(_x0(), requires_grad=True)
    y = x * 1
    z = y * y  # saves y
    y[0].zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_view_made_in_no_grad_is_refused_with_grad_on():
    x = tensor.tensor(_x0(), requires_grad=True)
    y = x * 1
    with tensor.no_grad():
        v = y[0]
    with pytest.raises(RuntimeError, match="no_grad"):
        v.mul_(2)


def test_unrelated_tensors_keep_their_gradients():
    x = tensor.tensor(_x0(), requires_grad=True)
    y = x * 3
    s = y.sum()  # uses y before the write; saves nothing, so it stays valid
    y[0] = 0.0
    (s + y.sum()).backward()
    expect = np.full((3, 4), 6.0)
    expect[0] = 3.0
    np.testing.assert_allclose(x.grad.numpy(), expect)


# ---------------------------------------------------------------------------------------------
# non-differentiable inputs changed in place after the forward


def _change(t):
    with tensor.no_grad():
        if t.dtype.kind == "b":
            t.copy_(~t)
        else:
            t.add_(1 if t.dtype.kind in "iu" else 0.5)
        # (the version bump is what matters; the values change too, so a missed check would
        # give a wrong gradient rather than the same one)


def _gather(a):
    idx = tensor.tensor([[0, 1, 1], [1, 0, 0]])
    return a.gather(1, idx), idx


def _masked_fill(a):
    m = tensor.tensor([[True, False, False], [False, True, False]])
    return a.masked_fill(m, 0.0), m


def _where(a):
    c = tensor.tensor([[True, False, True], [False, True, False]])
    return tensor.where(c, a, a * 2), c


def _where_scalar(a):
    c = tensor.tensor([[True, False, True], [False, True, False]])
    return tensor.where(c, a, 0.0), c


def _scatter(a):
    idx = tensor.tensor([[0, 1, 0]])
    return a.scatter(0, idx, tensor.ones(1, 3, dtype=tensor.float64)), idx


def _scatter_add(a):
    idx = tensor.tensor([[0, 1, 0]])
    return a.scatter_add(0, idx, a[:1] * 1), idx


def _index_tensor(a):
    idx = tensor.tensor([1, 0, 1])
    return a[:, idx], idx


def _index_bool(a):
    m = tensor.tensor([[True, False, True], [False, True, True]])
    return a[m], m


def _index_select(a):
    idx = tensor.tensor([2, 0])
    return a.index_select(1, idx), idx


def _embedding(a):
    idx = tensor.tensor([[0, 1], [1, 1]])
    return tensor.nn.functional.embedding(idx, a), idx


def _embedding_padding(a):
    idx = tensor.tensor([[0, 1], [1, 1]])
    return tensor.nn.functional.embedding(idx, a, padding_idx=0), idx


def _clamp_tensor_bounds(a):
    lo = tensor.tensor([[-0.1, 0.2, 0.0]], dtype=tensor.float64)
    return a.clamp(min=lo), lo


def _nll_target(a):
    t = tensor.tensor([2, 0])
    return tensor.nn.functional.nll_loss(a.log_softmax(1), t), t


def _setitem_tensor_index(a):
    idx = tensor.tensor([2, 0])
    y = a * 1
    y[:, idx] = 0.0
    return y, idx


NON_DIFF = [_gather, _masked_fill, _where, _where_scalar, _scatter, _scatter_add, _index_tensor,
            _index_bool, _index_select, _embedding, _embedding_padding, _clamp_tensor_bounds,
            _nll_target, _setitem_tensor_index]


@pytest.mark.parametrize("op", NON_DIFF, ids=[o.__name__.strip("_") for o in NON_DIFF])
def test_changing_a_non_differentiable_input_after_forward_is_refused(op):
    a = tensor.tensor(np.random.default_rng(0).uniform(0.5, 1.5, (2, 3)), requires_grad=True)
    out, side = op(a)
    _change(side)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_capturing_a_tensor_only_for_its_shape_is_not_checked():
    # where(c, a, b) reads only c in backward: changing a or b afterwards is fine (as PyTorch)
    a = tensor.ones(3, requires_grad=True)
    b = tensor.zeros(3, requires_grad=True)
    c = tensor.tensor([True, False, True])
    y = tensor.where(c, a * 1, b * 1)
    out = y.sum()
    _change(a.data)
    out.backward()
    np.testing.assert_allclose(a.grad.numpy(), [1, 0, 1])
    # linear's backward reads x and weight, not bias: changing bias afterwards is fine
    lin = tensor.nn.Linear(3, 2)
    loss = lin(tensor.ones(4, 3)).sum()
    with tensor.no_grad():
        lin.bias.add_(1.0)
    loss.backward()
    np.testing.assert_allclose(lin.bias.grad.numpy(), [4.0, 4.0])


def test_backward_closures_hold_no_unchecked_input_arrays():
    """Audit every op of the gradient registry: a raw array a backward closure holds that
    aliases an input's memory must belong to a Tensor whose version is recorded."""
    from tests.tensor.test_ops import REGISTRY
    for name, (fn, inputs) in sorted(REGISTRY.items()):
        ts = [tensor.tensor(np.asarray(x, np.float64), requires_grad=True) for x in inputs]
        out = fn(*ts)
        stack, seen = [out.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            checked = {id(box) for box, _, _ in node.saved}
            for cell in node.fn.__closure__ or ():
                try:
                    v = cell.cell_contents
                except ValueError:
                    continue
                if isinstance(v, np.ndarray):
                    for t in ts:
                        if np.shares_memory(v, t.array):
                            assert id(t._vbox) in checked, (name, node)
            stack.extend(e[0] for e in node.edges if e is not None and
                         isinstance(e[0], tensor._tensor.Node))
