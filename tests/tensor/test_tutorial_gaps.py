"""Names and behaviours the PyTorch tutorials ported in tests/tutorials reached for and zgrad
lacked, each checked against PyTorch: ``out=`` on the module-level functions, ..."""
import numpy as np
import pytest

import tensor
from tests.helpers import check_grad

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)


# -- out= ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, args", [
    ("matmul", ((3, 4), (4, 5))), ("mul", ((3, 4), (3, 4))), ("add", ((3, 4), (4,))),
    ("exp", ((2, 3),)), ("cat", None), ("sum", ((3, 4),))])
def test_out_writes_into_the_given_tensor(name, args):
    if name == "cat":
        xs = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2)]
        za, ta = ([tensor.tensor(x) for x in xs],), ([torch.tensor(x) for x in xs],)
    else:
        xs = [rng.normal(size=s).astype(np.float32) for s in args]
        za, ta = tuple(tensor.tensor(x) for x in xs), tuple(torch.tensor(x) for x in xs)
    want = getattr(torch, name)(*ta)
    out = tensor.zeros(*want.shape)
    keep = out.array
    got = getattr(tensor, name)(*za, out=out)
    assert got is out and out.array is keep          # same storage, written in place
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-6)


def test_out_of_another_shape_is_resized_and_keeps_its_dtype():
    a = rng.normal(size=(3, 4))
    out = tensor.empty(0, dtype=tensor.float64)
    tensor.matmul(tensor.tensor(a), tensor.tensor(a.T), out=out)
    assert out.shape == (3, 3) and out.dtype == tensor.float64
    np.testing.assert_allclose(out.numpy(), a @ a.T)


def test_out_refuses_autograd_as_pytorch_does():
    a = tensor.ones(2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="don't support automatic differentiation"):
        tensor.mul(a, a, out=tensor.empty(2, 2))
    with pytest.raises(RuntimeError):     # PyTorch refuses the same call
        torch.mul(torch.ones(2, 2, requires_grad=True), 1.0, out=torch.empty(2, 2))
    with tensor.no_grad():                # allowed under no_grad, as in PyTorch
        tensor.mul(a, a, out=tensor.empty(2, 2))


# -- PixelShuffle / PixelUnshuffle, init.orthogonal_ (pytorch/examples super_resolution) --------
@pytest.mark.parametrize("shape, r", [((2, 18, 3, 4), 3), ((8, 2, 5), 2), ((1, 2, 4, 3, 2), 1)])
def test_pixel_shuffle_matches_pytorch_and_inverts(shape, r):
    from tensor import nn
    x = rng.normal(size=shape).astype(np.float32)
    got = nn.PixelShuffle(r)(tensor.tensor(x))
    want = torch.nn.PixelShuffle(r)(torch.tensor(x))
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    back = nn.PixelUnshuffle(r)(got)
    np.testing.assert_array_equal(back.numpy(), x)
    np.testing.assert_array_equal(
        back.numpy(), torch.nn.PixelUnshuffle(r)(want).numpy())


def test_pixel_shuffle_grad():
    import tensor.nn.functional as F
    x = rng.normal(size=(2, 8, 3, 2))
    check_grad(lambda t: (F.pixel_shuffle(t, 2) * tensor.tensor(
        np.arange(2 * 2 * 6 * 4).reshape(2, 2, 6, 4))).sum(), x)
    check_grad(lambda t: F.pixel_unshuffle(t, 2).pow(2).sum(), rng.normal(size=(1, 2, 4, 6)))


def test_pixel_shuffle_bad_channels():
    import tensor.nn.functional as F
    with pytest.raises(RuntimeError, match="divisible"):
        F.pixel_shuffle(tensor.zeros(1, 5, 2, 2), 2)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (8, 3, 3, 3), (3, 8, 2)])
def test_orthogonal_init_is_orthogonal_and_scaled(shape):
    from tensor.nn import init
    tensor.manual_seed(0)
    w = init.orthogonal_(tensor.empty(*shape), gain=init.calculate_gain("relu"))
    m = w.numpy().reshape(shape[0], -1)
    small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    np.testing.assert_allclose(small, 2.0 * np.eye(len(small)), atol=1e-5)   # gain^2 = 2
    ref = torch.nn.init.orthogonal_(torch.empty(*shape), gain=torch.nn.init.calculate_gain("relu"))
    r = ref.numpy().reshape(shape[0], -1)
    np.testing.assert_allclose(np.linalg.svd(m, compute_uv=False),
                               np.linalg.svd(r, compute_uv=False), rtol=1e-5)
    with pytest.raises(ValueError, match="2 or more dimensions"):
        init.orthogonal_(tensor.empty(3))


# -- torch.autocast (recipes_source/recipes/amp_recipe.py) -------------------------------------
def test_top_level_autocast_is_amp_autocast():
    from tensor import nn
    assert tensor.autocast is tensor.amp.autocast
    lin = nn.Linear(4, 3)
    with tensor.autocast(device_type="cpu", dtype=tensor.bfloat16):
        y = lin(tensor.randn(2, 4))
    # bfloat16 is emulated (Note [Autocast]): float32 storage holding bf16-rounded values
    assert (y.detach().numpy().view(np.uint32) & 0xFFFF == 0).all()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.nn.Linear(4, 3)(torch.randn(2, 4)).dtype == torch.bfloat16


# -- in-place view ops and the legacy Tensor constructor (char_rnn_generation) -----------------
@pytest.mark.parametrize("name, args", [("unsqueeze_", (-1,)), ("squeeze_", ()),
                                        ("squeeze_", (0,)), ("t_", ()), ("transpose_", (0, 1))])
def test_inplace_view_ops_match_pytorch(name, args):
    x = rng.normal(size=(1, 3)).astype(np.float32)
    z, t = tensor.tensor(x), torch.tensor(x)
    keep = z.array
    assert getattr(z, name)(*args) is z
    getattr(t, name)(*args)
    assert tuple(z.shape) == tuple(t.shape) and z._version == t._version == 1
    np.testing.assert_array_equal(z.numpy(), t.numpy())
    assert np.shares_memory(z.array, keep)            # same storage, new shape


def test_inplace_view_op_on_a_non_leaf_keeps_the_graph():
    x = tensor.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    y.unsqueeze_(0)
    assert y.shape == (1, 3)
    (y * tensor.tensor([[1.0, 10.0, 100.0]])).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 40.0, 600.0])


def test_inplace_view_op_on_a_leaf_that_requires_grad_is_refused():
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        tensor.ones(3, requires_grad=True).unsqueeze_(0)
    with tensor.no_grad():
        assert tensor.ones(3, requires_grad=True).unsqueeze_(0).shape == (1, 3)


def test_legacy_tensor_constructor_is_float_as_pytorch():
    for args in (([0],), ([[1, 2], [3, 4]],), (2, 3), (4,), ()):
        z, t = tensor.Tensor(*args), torch.Tensor(*args)
        assert str(z.dtype).split(".")[-1] == str(t.dtype).split(".")[-1] == "float32"
        assert tuple(z.shape) == tuple(t.shape)
    np.testing.assert_array_equal(tensor.Tensor([[1, 2]]).numpy(), [[1.0, 2.0]])
    loss = tensor.Tensor([0])          # `loss = torch.Tensor([0]); loss += l` accumulates
    w = tensor.tensor([2.0], requires_grad=True)
    loss += w * 3
    loss.backward()
    assert w.grad.item() == 3.0
    with pytest.raises(TypeError, match="expected ints"):
        tensor.Tensor(2, 3.5)


# -- torch.distributions: Categorical, Normal (pytorch/examples reinforcement_learning) --------
def test_categorical_log_prob_entropy_match_pytorch():
    from tensor.distributions import Categorical
    p = rng.uniform(0.1, 1, size=(3, 4)).astype(np.float32)
    lg = rng.normal(size=(3, 4)).astype(np.float32)
    v = np.array([[0, 3, 1], [2, 2, 0]])
    for kw in (dict(probs=p), dict(logits=lg)):
        z = Categorical(**{k: tensor.tensor(a) for k, a in kw.items()})
        t = torch.distributions.Categorical(**{k: torch.tensor(a) for k, a in kw.items()})
        assert tuple(z.batch_shape) == tuple(t.batch_shape) == (3,)
        np.testing.assert_allclose(z.log_prob(tensor.tensor(v)).numpy(),
                                   t.log_prob(torch.tensor(v)).numpy(), rtol=1e-5)
        np.testing.assert_allclose(z.entropy().numpy(), t.entropy().numpy(), rtol=1e-5)
        np.testing.assert_allclose(z.probs.numpy(), t.probs.numpy(), rtol=1e-5)
        np.testing.assert_allclose(z.logits.numpy(), t.logits.numpy(), rtol=1e-5, atol=1e-6)


def test_categorical_sample_shape_and_frequencies():
    from tensor.distributions import Categorical
    tensor.manual_seed(0)
    c = Categorical(tensor.tensor([[0.1, 0.2, 0.7], [0.5, 0.5, 0.0]]))
    s = c.sample((20000,))
    assert s.shape == (20000, 2) and s.dtype == tensor.int64
    freq = [(s[:, 0] == k).float().mean().item() for k in range(3)]
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.015)
    assert (s[:, 1] == 2).sum().item() == 0             # zero probability is never drawn
    assert Categorical(tensor.tensor([0.3, 0.7])).sample().shape == ()
    with pytest.raises(ValueError, match="either probs or logits"):
        Categorical()


def test_categorical_log_prob_and_entropy_grads():
    from tensor.distributions import Categorical
    v = tensor.tensor([2, 0, 1])
    check_grad(lambda lg: Categorical(logits=lg).log_prob(v).sum(), rng.normal(size=(3, 4)))
    check_grad(lambda p: Categorical(probs=p).log_prob(v).sum(), rng.uniform(0.2, 1, (3, 4)))
    check_grad(lambda lg: Categorical(logits=lg).entropy().sum(), rng.normal(size=(2, 5)))


def test_normal_matches_pytorch_and_rsample_is_differentiable():
    from tensor.distributions import Normal
    loc, scale = rng.normal(size=(3,)), rng.uniform(0.5, 2, size=(3,))
    x = rng.normal(size=(2, 3))
    z = Normal(tensor.tensor(loc), tensor.tensor(scale))
    t = torch.distributions.Normal(torch.tensor(loc), torch.tensor(scale))
    np.testing.assert_allclose(z.log_prob(tensor.tensor(x)).numpy(),
                               t.log_prob(torch.tensor(x)).numpy(), rtol=1e-10)
    np.testing.assert_allclose(z.entropy().numpy(), t.entropy().numpy(), rtol=1e-10)
    np.testing.assert_allclose(z.cdf(tensor.tensor(x)).numpy(), t.cdf(torch.tensor(x)).numpy(),
                               rtol=1e-7)
    assert z.sample((5,)).shape == (5, 3) and not z.sample().requires_grad
    check_grad(lambda m, s: Normal(m, s).log_prob(tensor.tensor(x)).sum(), loc, scale)
    m = tensor.tensor(loc, requires_grad=True)
    Normal(m, tensor.tensor(scale)).rsample((4,)).sum().backward()
    np.testing.assert_allclose(m.grad.numpy(), np.full(3, 4.0))     # d(loc + eps*s)/dloc = 1
    tensor.manual_seed(0)
    big = Normal(tensor.tensor(1.0), tensor.tensor(2.0)).sample((40000,)).numpy()
    assert abs(big.mean() - 1.0) < 0.05 and abs(big.std() - 2.0) < 0.05


# -- torch.where(cond, 1, 0) with two Python numbers (pytorch/examples siamese_network) --------
@pytest.mark.parametrize("a, b", [(1, 0), (1.5, 0), (True, False), (2, 0.5)])
def test_where_with_two_scalars_matches_pytorch(a, b):
    x = rng.normal(size=(3, 4)).astype(np.float32)
    got = tensor.where(tensor.tensor(x) > 0, a, b)
    want = torch.where(torch.tensor(x) > 0, a, b)
    assert str(got.dtype).split(".")[-1] == str(want.dtype).split(".")[-1]
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    with pytest.raises(TypeError, match="Python numbers"):
        tensor.where(tensor.tensor(x) > 0, "a", 0)


# -- F.affine_grid / F.grid_sample (intermediate_source/spatial_transformer_tutorial.py) -------
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("mode, padding_mode", [("bilinear", "zeros"), ("bilinear", "border"),
                                                ("nearest", "zeros"), ("nearest", "border")])
def test_affine_grid_and_grid_sample_match_pytorch(align, mode, padding_mode):
    import tensor.nn.functional as F
    th = rng.normal(size=(2, 2, 3)) * 0.5 + np.array([[1.0, 0, 0], [0, 1, 0]])
    x = rng.normal(size=(2, 3, 5, 6))
    g = F.affine_grid(tensor.tensor(th), (2, 3, 4, 7), align_corners=align)
    tg = torch.nn.functional.affine_grid(torch.tensor(th), (2, 3, 4, 7), align_corners=align)
    np.testing.assert_allclose(g.numpy(), tg.numpy(), atol=1e-12)
    out = F.grid_sample(tensor.tensor(x), g, mode=mode, padding_mode=padding_mode,
                        align_corners=align)
    want = torch.nn.functional.grid_sample(torch.tensor(x), tg, mode=mode,
                                           padding_mode=padding_mode, align_corners=align)
    np.testing.assert_allclose(out.numpy(), want.numpy(), atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_grid_sample_grads_reach_input_grid_and_theta(padding_mode):
    import tensor.nn.functional as F
    x = rng.normal(size=(2, 2, 4, 5))
    th = rng.normal(size=(2, 2, 3)) * 0.3 + np.array([[1.1, 0, 0.05], [0, 0.9, -0.05]])
    check_grad(lambda i, t: F.grid_sample(i, F.affine_grid(t, (2, 2, 3, 4)),
                                          padding_mode=padding_mode).pow(2).sum(), x, th)
    grid = rng.uniform(-0.9, 0.9, size=(2, 3, 3, 2))
    check_grad(lambda i, gr: (F.grid_sample(i, gr, align_corners=True) ** 2).sum(), x, grid)


def test_grid_sample_gradient_matches_pytorch():
    import tensor.nn.functional as F
    x, grid = rng.normal(size=(1, 2, 4, 4)), rng.uniform(-1.2, 1.2, size=(1, 3, 5, 2))
    zi, zg = tensor.tensor(x, requires_grad=True), tensor.tensor(grid, requires_grad=True)
    ti, tg = torch.tensor(x, requires_grad=True), torch.tensor(grid, requires_grad=True)
    F.grid_sample(zi, zg).pow(2).sum().backward()
    torch.nn.functional.grid_sample(ti, tg, align_corners=False).pow(2).sum().backward()
    np.testing.assert_allclose(zi.grad.numpy(), ti.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(zg.grad.numpy(), tg.grad.numpy(), atol=1e-12)


def test_grid_sample_refuses_what_it_does_not_support():
    import tensor.nn.functional as F
    x, g = tensor.zeros(1, 1, 3, 3), tensor.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="reflection"):
        F.grid_sample(x, g, padding_mode="reflection")
    with pytest.raises(ValueError, match="theta of shape"):
        F.affine_grid(tensor.zeros(2, 2, 3), (1, 1, 3, 3))
