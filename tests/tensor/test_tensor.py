"""Tensor basics: creation, dtypes and PyTorch's promotion, views, conversion, repr, devices."""
import numpy as np
import pytest

import tensor
from tensor import backend
from tests.helpers import requires_cupy


def test_creation_dtypes_follow_pytorch():
    assert tensor.tensor([1.0, 2.0]).dtype == tensor.float32
    assert tensor.tensor([1, 2]).dtype == tensor.int64
    assert tensor.tensor([True]).dtype == tensor.bool
    assert tensor.tensor(np.zeros(2, np.float64)).dtype == tensor.float64
    assert tensor.zeros(2, 3).shape == (2, 3)
    assert tensor.ones((2, 3), dtype=tensor.int32).dtype == tensor.int32
    assert tensor.arange(5).dtype == tensor.int64
    assert tensor.arange(0, 1, 0.25).dtype == tensor.float32
    np.testing.assert_allclose(tensor.arange(0, 1, 0.25).numpy(), [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(tensor.linspace(0, 1, 5).numpy(), np.linspace(0, 1, 5))
    assert tensor.full((2,), 7).dtype == tensor.int64
    assert tensor.full((2,), 7.0).dtype == tensor.float32
    np.testing.assert_array_equal(tensor.eye(3).numpy(), np.eye(3))
    assert tensor.empty(0).numel() == 0
    assert tensor.zeros_like(tensor.ones(2, dtype=tensor.float64)).dtype == tensor.float64
    with pytest.raises(RuntimeError, match="negative dimension"):
        tensor.zeros(-1)
    with pytest.raises(TypeError, match="could not infer a dtype"):
        tensor.tensor(["a"])


@pytest.mark.parametrize("a, b, expected", [
    (tensor.int64, 2.5, tensor.float32),        # int tensor * Python float -> default float
    (tensor.int32, 2, tensor.int32),            # Python int keeps the tensor's int dtype
    (tensor.bool, 2, tensor.int64),
    (tensor.float16, 2.5, tensor.float16),      # Python scalars are weak
    (tensor.uint8, True, tensor.uint8),
])
def test_scalar_promotion(a, b, expected):
    assert (tensor.ones(3, dtype=a) * b).dtype == expected


@pytest.mark.parametrize("a, b, expected", [
    ((tensor.int64, 1), (tensor.float16, 1), tensor.float16),   # category wins, not size
    ((tensor.int32, 1), (tensor.int64, 1), tensor.int64),
    ((tensor.uint8, 1), (tensor.int8, 1), tensor.int16),
    ((tensor.float32, 1), (tensor.float64, 0), tensor.float32),  # 0-dim doesn't widen
    ((tensor.int32, 1), (tensor.float64, 0), tensor.float64),    # ... unless higher category
    ((tensor.bool, 1), (tensor.int32, 1), tensor.int32),
])
def test_tensor_promotion(a, b, expected):
    x = tensor.ones(*((3,) if a[1] else ()), dtype=a[0])
    y = tensor.ones(*((3,) if b[1] else ()), dtype=b[0])
    assert (x + y).dtype == expected
    assert (y * x).dtype == expected


def test_int_true_division_is_float():
    t = tensor.tensor([1, 2, 3]) / 2
    assert t.dtype == tensor.float32
    np.testing.assert_allclose(t.numpy(), [0.5, 1.0, 1.5])
    assert (tensor.tensor([7, -7]) // 2).tolist() == [3, -4]


def test_from_numpy_shares_memory_and_tensor_copies():
    a = np.zeros(3, np.float32)
    t = tensor.from_numpy(a)
    t[0] = 5
    assert a[0] == 5
    c = tensor.tensor(a)
    c[1] = 7
    assert a[1] == 0


def test_views_share_memory_and_version():
    t = tensor.zeros(2, 3)
    v = t[0]
    v.fill_(1)
    np.testing.assert_array_equal(t.numpy()[0], 1)
    assert t._version == v._version == 1
    r = t.view(3, 2)
    r[0, 0] = 9
    assert t[0, 0].item() == 9


def test_indexing_semantics_match_numpy():
    a = np.arange(24).reshape(2, 3, 4)
    t = tensor.tensor(a)
    for idx in [1, (1, 2), (slice(None), 0), (Ellipsis, 1), (None, 0), (0, [0, 2]),
                (slice(None), [1, 1], 1), a > 10, (0, slice(1, None, 2))]:
        np.testing.assert_array_equal(t[idx].numpy(), a[idx])
    np.testing.assert_array_equal(t[tensor.tensor([1, 0])].numpy(), a[[1, 0]])
    with pytest.raises(IndexError, match="out of bounds"):
        t[5]


def test_setitem_with_mask_and_broadcast():
    t = tensor.zeros(2, 3)
    t[t == 0] = 2.0
    t[:, 1] = tensor.tensor([5.0, 6.0])
    np.testing.assert_array_equal(t.numpy(), [[2, 5, 2], [2, 6, 2]])


def test_item_tolist_numpy_and_errors():
    assert tensor.tensor([[3.5]]).item() == 3.5
    assert tensor.tensor([[1, 2]]).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="exactly one element"):
        tensor.ones(2).item()
    with pytest.raises(RuntimeError, match="requires grad"):
        tensor.ones(2, requires_grad=True).numpy()
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(tensor.ones(2))


def test_reductions_with_dim_keepdim_and_indices():
    a = np.random.default_rng(0).normal(size=(3, 4))
    t = tensor.tensor(a)
    np.testing.assert_allclose(t.sum(1, keepdim=True).numpy(), a.sum(1, keepdims=True))
    v, i = t.max(0)
    np.testing.assert_allclose(v.numpy(), a.max(0))
    np.testing.assert_array_equal(i.numpy(), a.argmax(0))
    np.testing.assert_allclose(t.std(1).numpy(), a.std(1, ddof=1))
    np.testing.assert_allclose(t.var(correction=0).item(), a.var())
    np.testing.assert_allclose(t.logsumexp(1).numpy(), np.log(np.exp(a).sum(1)))
    assert t.argmax().item() == a.argmax()
    assert tensor.tensor([1, 2]).sum().dtype == tensor.int64
    with pytest.raises(RuntimeError, match="floating point"):
        tensor.tensor([1, 2]).mean()
    with pytest.raises(IndexError, match="out of range"):
        t.sum(2)


def test_shape_op_errors_are_clear():
    t = tensor.zeros(2, 3)
    with pytest.raises(RuntimeError, match="invalid for input of size 6"):
        t.reshape(4, 2)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        t.T.view(6)
    with pytest.raises(RuntimeError, match="a is \\(2, 3\\), b is \\(2, 3\\)"):
        t @ t
    with pytest.raises(RuntimeError, match="sizes of tensors must match"):
        tensor.cat([t, tensor.zeros(3, 3)], 1)


def test_split_chunk_stack_cat_roundtrip():
    t = tensor.arange(10).reshape(5, 2)
    parts = t.split([2, 3])
    assert [p.shape for p in parts] == [(2, 2), (3, 2)]
    np.testing.assert_array_equal(tensor.cat(parts).numpy(), t.numpy())
    assert len(t.chunk(2)) == 2
    assert tensor.stack([t, t], 1).shape == (5, 2, 2)


def test_repr_like_pytorch():
    assert repr(tensor.tensor([1.0, 2.0])) == "tensor([1., 2.])"
    assert repr(tensor.tensor([0.1, 2.0])) == "tensor([0.1000, 2.0000])"
    assert repr(tensor.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(tensor.tensor(3.0)) == "tensor(3.)"
    assert repr(tensor.tensor([1.0], dtype=tensor.float64)) == "tensor([1.], dtype=tensor.float64)"
    assert repr(tensor.ones(1, requires_grad=True)) == "tensor([1.], requires_grad=True)"
    assert "grad_fn=<MulBackward0>" in repr(tensor.ones(1, requires_grad=True) * 2)


def test_manual_seed_reproducible_and_generator_state():
    tensor.manual_seed(3)
    a = tensor.randn(4)
    tensor.manual_seed(3)
    b = tensor.randn(4)
    assert tensor.equal(a, b)
    g = tensor.Generator().manual_seed(7)
    s = g.get_state()
    x = tensor.rand(3, generator=g)
    g.set_state(s)
    assert tensor.equal(x, tensor.rand(3, generator=g))
    p = tensor.randperm(10, generator=g)
    assert sorted(p.tolist()) == list(range(10))
    r = tensor.randint(0, 5, (100,))
    assert r.dtype == tensor.int64 and 0 <= r.min().item() and r.max().item() < 5


def test_to_dtype_and_device_cpu():
    t = tensor.tensor([1.5, 2.5], requires_grad=True)
    d = t.to(tensor.float64)
    assert d.dtype == tensor.float64 and d.requires_grad
    d.sum().backward()
    assert t.grad.dtype == tensor.float32
    assert t.to("cpu") is t
    assert t.long().dtype == tensor.int64
    assert str(t.device) == "cpu"


class _OtherDeviceArray(np.ndarray):
    """A numpy array that backend.device_of (patched below) reports as living on cuda:0: a
    second array type, as a CuPy array is, so the mixed-device checks run without a GPU."""


@pytest.mark.parametrize("op", ["add", "radd", "mul", "matmul", "linear", "where", "setitem"])
def test_mixed_devices_give_the_clear_error(op, monkeypatch):
    real = backend.device_of
    monkeypatch.setattr(backend, "device_of", lambda x: backend.device("cuda", 0)
                        if isinstance(x, _OtherDeviceArray) else real(x))
    cpu = tensor.ones(2, 2)
    gpu = tensor.Tensor(np.ones((2, 2), np.float32).view(_OtherDeviceArray))
    assert gpu.device.type == "cuda"
    from tensor.ops.nn import linear
    run = {"add": lambda: cpu + gpu, "radd": lambda: gpu + cpu, "mul": lambda: cpu * gpu,
           "matmul": lambda: cpu @ gpu, "linear": lambda: linear(cpu, gpu),
           "where": lambda: tensor.where(cpu > 0, cpu, gpu),
           "setitem": lambda: cpu.__setitem__(0, gpu[0])}[op]
    with pytest.raises(RuntimeError, match="cuda") as e:
        run()
    assert "cpu" in str(e.value) and ("same device" in str(e.value) or "move it" in str(e.value))


def test_cuda_without_cupy():
    if backend.cupy is None:
        with pytest.raises(RuntimeError, match="CuPy is not installed"):
            tensor.zeros(2, device="cuda")
    assert backend.device("cuda:1").index == 1
    with pytest.raises(ValueError, match="expected 'cpu' or 'cuda"):
        backend.device("tpu")


@requires_cupy
def test_gpu_ops_and_backward_match_cpu():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    res = []
    for dev in ("cpu", "cuda"):
        x = tensor.tensor(a, device=dev, requires_grad=True)
        wt = tensor.tensor(w, device=dev, requires_grad=True)
        from tensor.ops.nn import cross_entropy, linear
        loss = cross_entropy(linear(x, wt).relu() * 2, tensor.tensor([0, 1, 2, 1], device=dev))
        loss.backward()
        res.append((loss.item(), x.grad.cpu().numpy(), wt.grad.cpu().numpy()))
    np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-5)
    np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res[0][2], res[1][2], rtol=1e-4, atol=1e-6)
    with pytest.raises(RuntimeError, match="same device"):
        tensor.ones(2) + tensor.ones(2, device="cuda")
