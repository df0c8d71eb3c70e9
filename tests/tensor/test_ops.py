"""Every differentiable op, checked against central differences in float64.

The registry below is the list of ops; each entry gives a scalar-valued function of tensors
and the numpy inputs (random shapes, broadcasting and non-contiguous inputs included).
"""
import zlib

import numpy as np
import pytest

import tensor
import tensor.ops.nn as N
from tests.helpers import check_grad, requires_cupy

rng = np.random.default_rng(0)


def r(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape)


def pos(*shape):
    return rng.uniform(0.5, 2.0, size=shape)


def away(*shape):  # away from kinks at 0
    x = rng.uniform(0.2, 2.0, size=shape)
    return x * rng.choice([-1, 1], size=shape)


def nc(*shape):  # non-contiguous: a transposed view
    return np.ascontiguousarray(r(*shape[::-1])).T


W = lambda t: t * tensor.tensor(rng.normal(size=t.shape))  # noqa: E731  weight the output

REGISTRY = {
    # arithmetic with broadcasting and scalars on either side
    "add": (lambda a, b: W(a + b), [r(3, 4), r(4)]),
    "add_scalar_left": (lambda a: W(2.5 + a), [r(3)]),
    "sub": (lambda a, b: W(a - b), [r(2, 1, 3), r(4, 1)]),
    "rsub": (lambda a: W(1.0 - a), [r(3)]),
    "mul": (lambda a, b: W(a * b), [r(3, 4), r(3, 1)]),
    "mul_noncontig": (lambda a, b: W(a * b), [nc(3, 4), nc(3, 4)]),
    "div": (lambda a, b: W(a / b), [r(3, 4), pos(4)]),
    "rdiv": (lambda a: W(2.0 / a), [pos(3)]),
    "pow_scalar": (lambda a: W(a ** 3), [r(3, 2)]),
    "pow_frac": (lambda a: W(a ** 1.5), [pos(3)]),
    "pow_tensor": (lambda a, b: W(a ** b), [pos(3, 2), r(2)]),
    "rpow": (lambda a: W(2.0 ** a), [r(4)]),
    "neg": (lambda a: W(-a), [r(3)]),
    "matmul_2d": (lambda a, b: W(a @ b), [r(3, 4), r(4, 5)]),
    "matmul_batch_broadcast": (lambda a, b: W(a @ b), [r(2, 3, 4), r(4, 2)]),
    "matmul_vec_mat": (lambda a, b: W(a @ b), [r(4), r(2, 4, 3)]),
    "matmul_mat_vec": (lambda a, b: W(a @ b), [r(2, 3, 4), r(4)]),
    "matmul_dot": (lambda a, b: a @ b, [r(4), r(4)]),
    "matmul_noncontig": (lambda a, b: W(a @ b), [nc(3, 4), nc(4, 2)]),
    # elementwise math
    "exp": (lambda a: W(a.exp()), [r(3, 2)]),
    "log": (lambda a: W(a.log()), [pos(3)]),
    "log1p": (lambda a: W(a.log1p()), [pos(3)]),
    "sqrt": (lambda a: W(a.sqrt()), [pos(3)]),
    "rsqrt": (lambda a: W(a.rsqrt()), [pos(3)]),
    "abs": (lambda a: W(a.abs()), [away(5)]),
    "sign": (lambda a: W(a.sign() * a), [away(5)]),
    "clamp": (lambda a: W(a.clamp(-1.0, 1.0)), [away(6) * 1.3]),
    "clamp_min": (lambda a: W(a.clamp(min=0.5)), [np.array([0.1, 0.9, 1.5, -1.0])]),
    "tanh": (lambda a: W(a.tanh()), [r(4)]),
    "sigmoid": (lambda a: W(a.sigmoid()), [r(4) * 5]),
    "relu": (lambda a: W(a.relu()), [away(6)]),
    "gelu": (lambda a: W(tensor.gelu(a)), [r(6)]),
    "gelu_tanh": (lambda a: W(tensor.gelu(a, approximate="tanh")), [r(6)]),
    "silu": (lambda a: W(tensor.silu(a)), [r(6)]),
    "softplus": (lambda a: W(tensor.softplus(a)), [r(6)]),
    "erf": (lambda a: W(a.erf()), [r(5)]),
    "sin": (lambda a: W(a.sin()), [r(4)]),
    "cos": (lambda a: W(a.cos()), [r(4)]),
    "maximum": (lambda a, b: W(tensor.maximum(a, b)), [r(3, 4), r(4)]),
    "minimum": (lambda a, b: W(tensor.minimum(a, b)), [r(3, 4), r(3, 1)]),
    "where": (lambda a, b: W(tensor.where(a > 0, a, b)), [away(3, 4), r(4)]),
    "where_scalar": (lambda a: W(tensor.where(a > 0, a, 0.0)), [away(5)]),
    "reciprocal": (lambda a: W(a.reciprocal()), [pos(3)]),
    # reductions
    "sum_all": (lambda a: a.sum() * 1.5, [r(3, 4)]),
    "sum_dim": (lambda a: W(a.sum(1)), [r(3, 4, 2)]),
    "sum_dims_keepdim": (lambda a: W(a.sum((0, 2), keepdim=True)), [r(3, 4, 2)]),
    "mean": (lambda a: W(a.mean(-1)), [r(3, 4)]),
    "prod": (lambda a: W(a.prod(1)), [away(3, 4)]),
    "prod_with_zero": (lambda a: W(a.prod(1)), [np.array([[0.0, 2.0, 3.0], [1.0, 0.5, -2.0]])]),
    "max_all": (lambda a: a.max() * 2, [r(3, 4)]),
    "max_dim": (lambda a: W(a.max(1).values), [r(3, 4)]),
    "min_dim_keepdim": (lambda a: W(a.min(0, keepdim=True)[0]), [r(3, 4)]),
    "amax": (lambda a: W(a.amax((0, 1))), [r(3, 4, 2)]),
    "var": (lambda a: W(a.var(1)), [r(3, 5)]),
    "var_correction0": (lambda a: W(a.var(0, correction=0)), [r(3, 5)]),
    "std": (lambda a: W(a.std()), [r(3, 5)]),
    "logsumexp": (lambda a: W(a.logsumexp(1)), [r(3, 5) * 10]),
    "norm_fro": (lambda a: W(a.norm()), [r(3, 4)]),
    "norm1_dim": (lambda a: W(a.norm(1, dim=1)), [away(3, 4)]),
    "cumsum": (lambda a: W(a.cumsum(1)), [r(3, 4)]),
    "cumprod": (lambda a: W(a.cumprod(0)), [away(4, 2)]),
    # shape ops
    "reshape": (lambda a: W(a.reshape(4, 3)), [r(3, 4)]),
    "view": (lambda a: W(a.view(2, 6)), [r(3, 4)]),
    "permute": (lambda a: W(a.permute(2, 0, 1)), [r(2, 3, 4)]),
    "transpose": (lambda a: W(a.transpose(0, 2)), [r(2, 3, 4)]),
    "T": (lambda a: W(a.T), [r(3, 4)]),
    "squeeze": (lambda a: W(a.squeeze(1)), [r(3, 1, 4)]),
    "unsqueeze": (lambda a: W(a.unsqueeze(-1)), [r(3, 4)]),
    "flatten": (lambda a: W(a.flatten(1)), [r(2, 3, 4)]),
    "expand": (lambda a: W(a.expand(3, 4, 5)), [r(4, 1)]),
    "repeat": (lambda a: W(a.repeat(2, 1, 3)), [r(3, 2)]),
    "contiguous": (lambda a: W(a.T.contiguous()), [r(3, 4)]),
    "split": (lambda a: sum(W(p) for p in a.split(2, 1)), [r(3, 5)]),
    "chunk": (lambda a: sum(W(p) for p in a.chunk(3, 0)), [r(7, 2)]),
    "cat": (lambda a, b: W(tensor.cat([a, b, a], 1)), [r(2, 3), r(2, 1)]),
    "stack": (lambda a, b: W(tensor.stack([a, b], -1)), [r(2, 3), r(2, 3)]),
    "gather": (lambda a: W(a.gather(1, tensor.tensor([[0, 2, 2], [1, 1, 0]]))), [r(2, 3)]),
    "scatter_add": (lambda a, s: W(a.scatter_add(0, tensor.tensor([[0, 1, 0], [0, 0, 1]]), s)),
                    [r(2, 3), r(2, 3)]),
    "masked_fill": (lambda a: W(a.masked_fill(a > 0.5, 2.0)), [away(3, 4)]),
    "tril": (lambda a: W(a.tril()), [r(4, 4)]),
    "triu": (lambda a: W(a.triu(1)), [r(3, 4)]),
    "flip": (lambda a: W(a.flip(0)), [r(3, 2)]),
    "unbind": (lambda a: sum(W(p) for p in a.unbind(1)), [r(2, 3)]),
    # indexing (gradients of repeated integer indices accumulate)
    "index_int": (lambda a: W(a[1]), [r(3, 4)]),
    "index_slice_step": (lambda a: W(a[::2, 1:]), [r(5, 4)]),
    "index_none_ellipsis": (lambda a: W(a[None, ..., 0]), [r(2, 3, 4)]),
    "index_bool_mask": (lambda a: W(a[a > 0]), [away(3, 4)]),
    "index_int_array_repeats": (lambda a: W(a[tensor.tensor([0, 2, 0, 0])]), [r(3, 2)]),
    "index_mixed": (lambda a: W(a[tensor.tensor([1, 1]), :, tensor.tensor([0, 2])]),
                    [r(3, 2, 4)]),
    "setitem_value_grad": (lambda a, v: _setitem(a, v), [r(3, 4), r(4)]),
    # nn
    "linear": (lambda x, w, b: W(N.linear(x, w, b)), [r(2, 3, 4), r(5, 4), r(5)]),
    "softmax": (lambda a: W(N.softmax(a, 1)), [r(3, 4)]),
    "log_softmax": (lambda a: W(N.log_softmax(a, -1)), [r(3, 4) * 5]),
    "cross_entropy": (lambda a: N.cross_entropy(a, tensor.tensor([0, 3, 1])), [r(3, 4)]),
    "cross_entropy_smooth_ignore": (
        lambda a: N.cross_entropy(a, tensor.tensor([0, -100, 1]), label_smoothing=0.1),
        [r(3, 4)]),
    "cross_entropy_weight_sum": (  # weight is not differentiable, as in PyTorch
        lambda a: N.cross_entropy(a, tensor.tensor([2, 0, 1]), reduction="sum",
                                  weight=tensor.tensor([0.5, 2.0, 1.0, 3.0], dtype=a.dtype)),
        [r(3, 4)]),
    "cross_entropy_weight_smooth_mean": (
        lambda a: N.cross_entropy(a, tensor.tensor([2, 0, 3]), label_smoothing=0.2,
                                  weight=tensor.tensor([0.5, 2.0, 1.0, 3.0], dtype=a.dtype)),
        [r(3, 4)]),
    "cross_entropy_probs": (lambda a, p: N.cross_entropy(a, p.softmax(1)), [r(3, 4), r(3, 4)]),
    "cross_entropy_spatial": (
        lambda a: N.cross_entropy(a, tensor.tensor([[0, 1], [2, 2]])), [r(2, 3, 2)]),
    "nll_loss_none": (lambda a: W(N.nll_loss(a, tensor.tensor([1, 0]), reduction="none")),
                      [r(2, 3)]),
    "mse_loss": (lambda a, b: N.mse_loss(a, b), [r(3, 4), r(3, 4)]),
    "l1_loss": (lambda a, b: N.l1_loss(a, b), [r(3, 4), r(3, 4) + 5]),
    "bce_with_logits": (lambda a, t: N.binary_cross_entropy_with_logits(a, t.sigmoid()),
                        [r(3, 4), r(3, 4)]),
    "bce_with_logits_posw": (lambda a, t: N.binary_cross_entropy_with_logits(
        a, t.sigmoid(), pos_weight=tensor.tensor([1.0, 2.0, 0.5, 3.0], dtype=tensor.float64)),
        [r(3, 4), r(3, 4)]),
    "embedding": (lambda w: W(N.embedding(tensor.tensor([[0, 2], [2, 0]]), w)), [r(3, 4)]),
    "elu": (lambda a: W(tensor.nn.functional.elu(a, 0.8)), [away(6)]),
    "smooth_l1_loss": (lambda a, b: N.smooth_l1_loss(a, b, beta=0.7), [r(3, 4), r(3, 4)]),
    "huber_loss": (lambda a, b: N.huber_loss(a, b, delta=0.6), [r(3, 4), r(3, 4)]),
    # ordering (distinct values: no ties) and diag
    "topk": (lambda a: W(a.topk(2, dim=1).values), [np.arange(12.0).reshape(3, 4) % 7 / 3]),
    "sort": (lambda a: W(tensor.sort(a, 0, descending=True).values),
             [np.arange(12.0).reshape(4, 3)[::-1] * 0.3]),
    "diag": (lambda a: W(tensor.diag(a, 1)), [r(3, 4)]),
    "diag_embed_1d": (lambda a: W(tensor.diag(a, -1)), [r(3)]),
    # in-place on a view: the base's history is rewritten (CopySlices)
    "copy_slices": (lambda a, v: _inplace_view(a, v), [r(3, 4), r(3)]),
}


def _inplace_view(a, v):
    b = a * 1.0
    b[:, 1].mul_(v)
    b.narrow(0, 2, 1).copy_(v[:1].reshape(1, 1) * 2)
    return W(b)


def _setitem(a, v):
    b = a * 1.0
    b[1] = v * 2
    b[0, 1:3] = 0.5
    return W(b)


def _to_scalar(fn):
    def f(*ts):
        out = fn(*ts)
        return out.sum() if out.numel() != 1 else out.reshape(())
    return f


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_gradient_float64(name):
    fn, inputs = REGISTRY[name]
    global rng
    # W's weights, fixed per op across processes (hash() of a str is salted per process)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    seed = rng.integers(1 << 30)

    def seeded(*ts):
        global rng
        rng = np.random.default_rng(seed)
        return _to_scalar(fn)(*ts)
    check_grad(seeded, *inputs, rtol=1e-5, atol=1e-7)


def _covered(op: str) -> bool:
    """An op is covered by a registry entry named exactly op, or op_<variant>."""
    return any(k == op or k.startswith(op + "_") for k in REGISTRY)


def test_coverage_check_is_exact():
    assert _covered("maximum") and not _covered("maxi") and not _covered("ma")
    assert not _covered("log1") and _covered("log1p")


def test_registry_covers_the_issue_ops():
    for op in ["add", "sub", "mul", "div", "pow", "matmul", "exp", "log", "log1p", "sqrt",
               "rsqrt", "abs", "sign", "clamp", "tanh", "sigmoid", "relu", "gelu", "silu", "sin",
               "cos", "maximum", "minimum", "where", "sum", "mean", "prod", "max", "min", "var",
               "std", "logsumexp", "norm", "reshape", "view", "permute", "transpose", "squeeze",
               "unsqueeze", "flatten", "expand", "repeat", "contiguous", "split", "chunk", "cat",
               "stack", "gather", "scatter_add", "masked_fill", "tril", "triu", "index",
               "setitem", "elu", "smooth_l1_loss", "huber_loss", "l1_loss", "topk", "sort",
               "diag", "copy_slices", "linear", "softmax", "log_softmax", "cross_entropy",
               "nll_loss", "mse_loss", "embedding", "cumsum", "cumprod", "amax", "flip",
               "unbind", "reciprocal", "erf", "softplus", "sin", "cos"]:
        assert _covered(op), f"no gradient check for {op!r} in REGISTRY"


def test_embedding_padding_idx_gets_no_gradient():
    w = tensor.randn(4, 3, requires_grad=True)
    out = N.embedding(tensor.tensor([[0, 1], [1, 3]]), w, padding_idx=1)
    (out * 2).sum().backward()
    g = w.grad.numpy()
    assert np.all(g[1] == 0) and np.all(g[2] == 0)
    np.testing.assert_allclose(g[0], 2.0)
    np.testing.assert_allclose(g[3], 2.0)


@requires_cupy
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_on_gpu_matches_cpu(name):
    """The same registry on CuPy: forward value and gradients equal the CPU ones (float64)."""
    fn, inputs = REGISTRY[name]
    results = []
    for dev in ("cpu", "cuda"):
        global rng
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        ts = [tensor.tensor(np.asarray(x, np.float64), device=dev, requires_grad=True)
              for x in inputs]
        orig = tensor.tensor

        def on_dev(data, *a, **k):  # constants the registry builds land on the same device
            k.setdefault("device", dev)
            return orig(data, *a, **k)
        tensor.tensor = on_dev
        try:
            out = _to_scalar(fn)(*ts)
        finally:
            tensor.tensor = orig
        gs = tensor.autograd.grad(out, ts, allow_unused=True)
        results.append((out.item(), [None if g is None else g.cpu().numpy() for g in gs]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-9, atol=1e-12)
    for gc, gg in zip(results[0][1], results[1][1]):
        if gc is None:
            assert gg is None
        else:
            np.testing.assert_allclose(gc, gg, rtol=1e-9, atol=1e-12)
