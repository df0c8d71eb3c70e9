"""Convolution, pooling, padding, resampling and channel dropout: gradients against central
differences in float64 (odd shapes: strides and padding that don't divide, dilation, groups,
ceil_mode, output_padding), higher-order gradients, and forward values and gradients against
PyTorch through state_dicts."""
import numpy as np
import pytest

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from tensor.autograd import gradcheck, gradgradcheck
from tests.helpers import requires_cupy

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _t(a, grad=True):
    return tensor.tensor(a, requires_grad=grad)


# -- gradients against central differences (float64) -------------------------------------------

CONV2D_CASES = [  # (x shape, weight shape, stride, padding, dilation, groups)
    ((2, 4, 7, 6), (6, 2, 3, 2), (2, 3), (1, 2), (1, 2), 2),
    ((1, 3, 6, 7), (3, 1, 3, 3), 1, "same", (2, 1), 3),
    ((2, 2, 5, 5), (2, 2, 4, 2), 1, "same", 1, 1),        # even kernel: asymmetric 'same'
    ((2, 3, 7, 5), (4, 3, 3, 3), 2, 0, 1, 1),             # stride that doesn't divide
    ((1, 2, 6, 6), (2, 2, 2, 3), (3, 1), "valid", 1, 1),  # strided height, unit-stride width
    ((2, 4, 6, 7), (4, 2, 2, 3), 1, (1, 2), (1, 2), 2),   # unit stride, width dilation, padding
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", CONV2D_CASES)
def test_conv2d_gradcheck(xs, ws, stride, padding, dilation, groups):
    x, w, b = _t(_rand(*xs)), _t(_rand(*ws, seed=1)), _t(_rand(ws[0], seed=2))
    assert gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
                     (x, w, b))


def test_conv2d_double_backward():
    x, w, b = _t(_rand(2, 4, 5, 6)), _t(_rand(4, 2, 3, 2, seed=1)), _t(_rand(4, seed=2))
    assert gradgradcheck(lambda x, w, b: F.conv2d(x, w, b, 2, 1, (1, 2), 2), (x, w, b))
    w2 = _t(_rand(3, 4, 2, 3, seed=3))  # even kernel: asymmetric 'same' padding
    assert gradgradcheck(lambda x, w: F.conv2d(x, w, None, 1, "same"), (x, w2))


@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups", [
    ((2, 3), (1, 0), (1, 2), 1, 2), (2, 1, 1, 2, 1), (1, 0, 0, 1, 1), (3, 2, (2, 0), 1, 1)])
def test_conv_transpose2d_gradcheck(stride, padding, output_padding, dilation, groups):
    x, w, b = _t(_rand(2, 4, 3, 4)), _t(_rand(4, 3, 3, 2, seed=1)), _t(_rand(3 * groups, seed=2))
    assert gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding,
                                                        output_padding, groups, dilation),
                     (x, w, b))


def test_conv_transpose2d_double_backward():
    x, w = _t(_rand(1, 2, 3, 3)), _t(_rand(2, 2, 3, 3, seed=1))
    assert gradgradcheck(lambda x, w: F.conv_transpose2d(x, w, None, 2, 1, 1), (x, w))


def test_conv1d_and_transpose1d_gradcheck():
    x, w, b = _t(_rand(2, 4, 9)), _t(_rand(6, 2, 3, seed=1)), _t(_rand(6, seed=2))
    assert gradcheck(lambda x, w, b: F.conv1d(x, w, b, 2, 2, 2, 2), (x, w, b))
    wt = _t(_rand(4, 3, 3, seed=3))
    assert gradcheck(lambda x, w: F.conv_transpose1d(x, w, None, 2, 1, 1), (x, wt))


def test_unfold_fold_gradcheck():
    x = _t(_rand(2, 3, 5, 6))
    assert gradcheck(lambda x: F.unfold(x, (2, 3), (1, 2), 1, (2, 1)), (x,))
    cols = _t(_rand(2, 3 * 6, 9))
    assert gradcheck(lambda c: F.fold(c, (5, 6), (2, 3), 1, 1, 2), (cols,))


MAXPOOL_CASES = [  # kernel, stride, padding, dilation, ceil_mode
    (2, None, 0, 1, False), (3, 2, 1, 1, True), ((3, 2), (2, 3), (1, 1), (2, 1), True),
    (2, 2, 0, 1, True)]


@pytest.mark.parametrize("k,s,p,d,ceil", MAXPOOL_CASES)
def test_max_pool2d_gradcheck(k, s, p, d, ceil):
    x = _t(np.random.default_rng(0).permutation(2 * 3 * 7 * 8).reshape(2, 3, 7, 8) * 0.1)
    assert gradcheck(lambda x: F.max_pool2d(x, k, s, p, d, ceil), (x,))
    assert gradgradcheck(lambda x: F.max_pool2d(x, k, s, p, d, ceil), (x,))


def test_max_pool2d_exact_tiling_gradcheck():
    # stride == kernel and sizes that divide: the backward writes each input once
    x = _t(np.random.default_rng(1).permutation(2 * 3 * 6 * 8).reshape(2, 3, 6, 8) * 0.1)
    assert gradcheck(lambda x: F.max_pool2d(x, 2), (x,))
    assert gradcheck(lambda x: F.max_pool2d(x, (3, 4)), (x,))


@pytest.mark.parametrize("k,s,p,ceil,cip,div", [
    (2, None, 0, False, True, None), (3, 2, 1, True, True, None),
    ((3, 2), (2, 3), 1, True, False, None), (3, 2, 1, False, True, 5)])
def test_avg_pool2d_gradcheck(k, s, p, ceil, cip, div):
    x = _t(_rand(2, 3, 7, 8))
    assert gradcheck(lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, div), (x,))
    assert gradgradcheck(lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, div), (x,))


@pytest.mark.parametrize("size", [(3, 5), (1, 1), (5, None), 4])
def test_adaptive_avg_pool2d_gradcheck(size):
    x = _t(_rand(2, 3, 7, 8))
    assert gradcheck(lambda x: F.adaptive_avg_pool2d(x, size), (x,))


def test_pool1d_gradcheck():
    x = _t(np.random.default_rng(0).permutation(2 * 3 * 11).reshape(2, 3, 11) * 0.1)
    assert gradcheck(lambda x: F.max_pool1d(x, 3, 2, 1, 2, True), (x,))
    assert gradcheck(lambda x: F.avg_pool1d(x, 3, 2, 1, True, False), (x,))
    assert gradcheck(lambda x: F.adaptive_avg_pool1d(x, 4), (x,))


@pytest.mark.parametrize("pad,mode", [((1, 2), "constant"), ((1, -1, 2, 0), "constant"),
                                      ((2, 1, 1, 2), "reflect"), ((2, 1, 1, 3), "replicate"),
                                      ((2, 1, 3, 0), "circular")])
def test_pad_gradcheck(pad, mode):
    x = _t(_rand(2, 2, 4, 5))
    assert gradcheck(lambda x: F.pad(x, pad, mode), (x,))


@pytest.mark.parametrize("kw", [dict(scale_factor=2), dict(size=(5, 7), mode="bilinear",
                                                            align_corners=True),
                                dict(scale_factor=(1.7, 0.6), mode="bilinear"),
                                dict(size=(3, 5), mode="area")])
def test_interpolate_gradcheck(kw):
    x = _t(_rand(1, 2, 4, 6))
    assert gradcheck(lambda x: F.interpolate(x, **kw), (x,))


# -- PyTorch parity through state_dicts --------------------------------------------------------

def _to_torch_state(m):
    return {k: torch.tensor(v.numpy()) for k, v in m.state_dict().items()}


def _parity(zm, tm, x, tol=1e-10, out_index=None):
    """Same weights (zgrad -> torch state_dict): outputs, input and parameter gradients match."""
    tm.load_state_dict(_to_torch_state(zm))
    xz, xt = _t(x), torch.tensor(x, requires_grad=True)
    yz, yt = zm(xz), tm(xt)
    if out_index is not None:
        np.testing.assert_array_equal(yz[1].numpy(), yt[1].numpy())
        yz, yt = yz[out_index], yt[out_index]
    np.testing.assert_allclose(yz.detach().numpy(), yt.detach().numpy(), rtol=tol, atol=tol)
    gy = _rand(*yt.shape, seed=7)
    yz.backward(tensor.tensor(gy))
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(xz.grad.numpy(), xt.grad.numpy(), rtol=tol, atol=tol)
    tp = dict(tm.named_parameters())
    for name, p in zm.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), rtol=tol, atol=tol,
                                   err_msg=name)


@pytest.mark.parametrize("args,kw", [
    ((4, 6, 3), dict(stride=2, padding=1, groups=2)),
    ((4, 6, (3, 2)), dict(padding="same", dilation=(2, 1), bias=False)),
    ((4, 4, 3), dict(padding=(2, 1), padding_mode="reflect")),
    ((4, 4, 3), dict(padding="same", padding_mode="replicate")),
    ((4, 4, (2, 3)), dict(padding=1, padding_mode="circular", stride=(1, 2))),
])
def test_conv2d_matches_torch(args, kw):
    tensor.manual_seed(0)
    zm = nn.Conv2d(*args, **kw).double()
    tm = torch.nn.Conv2d(*args, **kw).double()
    assert list(zm.state_dict()) == list(tm.state_dict())
    assert repr(zm) == repr(tm)
    _parity(zm, tm, _rand(2, 4, 7, 9))


def test_conv1d_and_transposes_match_torch():
    tensor.manual_seed(0)
    _parity(nn.Conv1d(4, 6, 3, 2, 1, 2, 2).double(), torch.nn.Conv1d(4, 6, 3, 2, 1, 2, 2).double(),
            _rand(2, 4, 11))
    _parity(nn.Conv1d(3, 2, 4, padding="same").double(),
            torch.nn.Conv1d(3, 2, 4, padding="same").double(), _rand(2, 3, 8))
    zt = nn.ConvTranspose2d(4, 6, (3, 2), (2, 3), (1, 0), (1, 2), groups=2).double()
    tt = torch.nn.ConvTranspose2d(4, 6, (3, 2), (2, 3), (1, 0), (1, 2), groups=2).double()
    assert repr(zt) == repr(tt)
    _parity(zt, tt, _rand(2, 4, 5, 4))
    _parity(nn.ConvTranspose1d(4, 2, 3, 2, 1, 1, dilation=2).double(),
            torch.nn.ConvTranspose1d(4, 2, 3, 2, 1, 1, dilation=2).double(), _rand(2, 4, 6))


def test_conv_transpose2d_output_size_matches_torch():
    zm, tm = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double(), \
        torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()
    tm.load_state_dict(_to_torch_state(zm))
    x = _rand(1, 3, 4, 5)
    yz = zm(tensor.tensor(x), output_size=(8, 10))
    yt = tm(torch.tensor(x), output_size=(8, 10))
    assert tuple(yz.shape) == tuple(yt.shape) == (1, 2, 8, 10)
    np.testing.assert_allclose(yz.detach().numpy(), yt.detach().numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="valid sizes range from 7 to 8"):
        zm(tensor.tensor(x), output_size=(9, 10))


def test_conv_default_init_matches_torch_bounds():
    # kaiming_uniform_(a=sqrt(5)) -> U(+-1/sqrt(fan_in)); bias U(+-1/sqrt(fan_in))
    m = nn.Conv2d(8, 16, 3)
    bound = 1 / np.sqrt(8 * 9)
    assert np.abs(m.weight.numpy(force=True)).max() <= bound
    assert np.abs(m.bias.numpy(force=True)).max() <= bound
    assert m.weight.numpy(force=True).std() > bound / 3  # not all zeros
    mt = nn.ConvTranspose2d(8, 4, 3, groups=2)  # fan_in from weight.shape[1] * k*k, as torch
    assert tuple(mt.weight.shape) == (8, 2, 3, 3)
    assert np.abs(mt.bias.numpy(force=True)).max() <= 1 / np.sqrt(2 * 9)


@pytest.mark.parametrize("zm,tm,shape,idx", [
    (nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True),
     torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True, return_indices=True), (2, 3, 7, 8), 0),
    (nn.MaxPool2d((2, 3), (2, 1), (1, 1), (2, 1)),
     torch.nn.MaxPool2d((2, 3), (2, 1), (1, 1), (2, 1)), (2, 3, 7, 8), None),
    (nn.MaxPool1d(3, 2, 1, return_indices=True, ceil_mode=True),
     torch.nn.MaxPool1d(3, 2, 1, return_indices=True, ceil_mode=True), (2, 3, 10), 0),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
     torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 3, 7, 8), None),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True), torch.nn.AvgPool2d(3, 2, 1, ceil_mode=True),
     (2, 3, 8, 7), None),
    (nn.AvgPool1d(3, 2, 1), torch.nn.AvgPool1d(3, 2, 1), (2, 3, 10), None),
    (nn.AdaptiveAvgPool2d((3, 5)), torch.nn.AdaptiveAvgPool2d((3, 5)), (2, 3, 7, 8), None),
    (nn.AdaptiveAvgPool2d((None, 3)), torch.nn.AdaptiveAvgPool2d((None, 3)), (2, 3, 7, 8), None),
    (nn.AdaptiveAvgPool1d(4), torch.nn.AdaptiveAvgPool1d(4), (2, 3, 10), None),
    (nn.Upsample(scale_factor=2, mode="bilinear"), torch.nn.Upsample(scale_factor=2,
                                                                     mode="bilinear"),
     (2, 3, 4, 5), None),
    (nn.Upsample(size=(7, 3)), torch.nn.Upsample(size=(7, 3)), (2, 3, 4, 5), None),
    (nn.Unflatten(1, (3, 4)), torch.nn.Unflatten(1, (3, 4)), (2, 12, 5), None),
    (nn.Flatten(), torch.nn.Flatten(), (2, 3, 4, 5), None),
    (nn.Flatten(0, 2), torch.nn.Flatten(0, 2), (2, 3, 4, 5), None),
    (nn.ZeroPad2d((1, 0, 2, 1)), torch.nn.ZeroPad2d((1, 0, 2, 1)), (2, 3, 4, 5), None),
    (nn.ConstantPad1d(2, 3.5), torch.nn.ConstantPad1d(2, 3.5), (2, 3, 4), None),
    (nn.ReflectionPad2d((1, 2, 2, 1)), torch.nn.ReflectionPad2d((1, 2, 2, 1)), (2, 3, 4, 5),
     None),
    (nn.ReflectionPad1d(2), torch.nn.ReflectionPad1d(2), (2, 3, 4), None),
    (nn.ReplicationPad2d(2), torch.nn.ReplicationPad2d(2), (2, 3, 4, 5), None),
    (nn.CircularPad2d((1, 0, 1, 2)), torch.nn.CircularPad2d((1, 0, 1, 2)), (2, 3, 4, 5), None),
])
def test_layers_match_torch(zm, tm, shape, idx):
    assert repr(zm) == repr(tm)
    x = np.random.default_rng(0).permutation(int(np.prod(shape))).reshape(shape) * 0.01
    _parity(zm, tm, x, out_index=idx)


def test_max_pool_indices_and_nan_match_torch():
    x = _rand(2, 3, 6, 6)
    x[0, 0, 1, 1] = x[0, 1, 0, 0] = x[0, 1, 1, 0] = np.nan
    x[1, 2, 2, 2] = x[1, 2, 2, 3]  # a tie: the first maximum wins
    yz, iz = F.max_pool2d(tensor.tensor(x), 2, return_indices=True)
    yt, it = TF.max_pool2d(torch.tensor(x), 2, return_indices=True)
    np.testing.assert_array_equal(yz.numpy(), yt.numpy())
    np.testing.assert_array_equal(iz.numpy(), it.numpy())
    assert iz.dtype == np.int64


@pytest.mark.parametrize("pad,mode,value", [
    ((1, 2), "constant", 2.5), ((1, -1, 2, 0), "constant", None), ((1, 2, 0, 3, 1, 1), "constant",
                                                                   None),
    ((2, 1, 1, 2), "reflect", None), ((2, 1, 1, 3), "replicate", None),
    ((2, 1, 3, 0), "circular", None), ((1, 2, 2, 1, 1, 0), "replicate", None)])
def test_pad_matches_torch(pad, mode, value):
    shape = (2, 3, 4, 5, 3) if len(pad) == 6 and mode != "constant" else (2, 3, 4, 5)
    x = _rand(*shape)
    xz, xt = _t(x), torch.tensor(x, requires_grad=True)
    kw = {} if value is None else {"value": value}
    yz, yt = F.pad(xz, pad, mode, **kw), TF.pad(xt, pad, mode, **kw)
    np.testing.assert_array_equal(yz.detach().numpy(), yt.detach().numpy())
    gy = _rand(*yt.shape, seed=3)
    yz.backward(tensor.tensor(gy))
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(xz.grad.numpy(), xt.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape,kw", [
    ((2, 3, 4, 6), dict(scale_factor=2)), ((2, 3, 4, 6), dict(size=(5, 7))),
    ((2, 3, 4, 6), dict(scale_factor=(1.7, 0.6))),
    ((2, 3, 4, 6), dict(size=(3, 11), mode="nearest-exact")),
    ((2, 3, 4, 6), dict(scale_factor=2, mode="bilinear")),
    ((2, 3, 4, 6), dict(size=(5, 7), mode="bilinear", align_corners=True)),
    ((2, 3, 4, 6), dict(scale_factor=(1.7, 0.6), mode="bilinear")),
    ((2, 3, 4, 6), dict(size=(1, 1), mode="bilinear", align_corners=True)),
    ((2, 3, 9), dict(size=4, mode="linear")),
    ((1, 2, 4, 3, 5), dict(scale_factor=1.5, mode="trilinear")),
    ((2, 3, 4, 6), dict(size=(3, 5), mode="area"))])
def test_interpolate_matches_torch(shape, kw):
    x = _rand(*shape)
    xz, xt = _t(x), torch.tensor(x, requires_grad=True)
    yz, yt = F.interpolate(xz, **kw), TF.interpolate(xt, **kw)
    np.testing.assert_allclose(yz.detach().numpy(), yt.detach().numpy(), atol=1e-12)
    gy = _rand(*yt.shape, seed=3)
    yz.backward(tensor.tensor(gy))
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(xz.grad.numpy(), xt.grad.numpy(), atol=1e-12)


def test_float32_lenet_matches_torch():
    """The benchmark's network in float32: same loss and gradients as PyTorch."""
    def build(n):
        return n.Sequential(n.Conv2d(1, 6, 5), n.ReLU(), n.MaxPool2d(2), n.Conv2d(6, 16, 5),
                            n.ReLU(), n.MaxPool2d(2), n.Flatten(), n.Linear(256, 10))
    tensor.manual_seed(0)
    zm, tm = build(nn), build(torch.nn)
    tm.load_state_dict(_to_torch_state(zm))
    x = _rand(8, 1, 28, 28).astype(np.float32)
    y = np.arange(8) % 10
    lz = F.cross_entropy(zm(tensor.tensor(x)), tensor.tensor(y))
    lt = TF.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
    lz.backward()
    lt.backward()
    assert abs(lz.item() - lt.item()) < 1e-5
    tp = dict(tm.named_parameters())
    for name, p in zm.named_parameters():
        assert p.grad.dtype == np.float32
        np.testing.assert_allclose(p.grad.numpy(), tp[name].grad.numpy(), rtol=1e-4, atol=1e-5)


# -- channel dropout ---------------------------------------------------------------------------

def test_dropout2d_zeroes_whole_channels():
    tensor.manual_seed(0)
    m = nn.Dropout2d(0.5)
    x = _t(np.ones((8, 16, 3, 3)))
    y = m(x)
    v = y.detach().numpy()
    per_channel = v.reshape(8, 16, 9)
    assert np.all((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1))
    assert 0.2 < (per_channel[..., 0] == 0).mean() < 0.8
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), v)  # the gradient is the same mask * 2
    m.eval()
    assert m(x) is x


def test_dropout1d_and_unbatched_shapes():
    tensor.manual_seed(1)
    v = F.dropout1d(tensor.ones(4, 32, 5), 0.5).numpy()
    assert np.all((v == 0).all(-1) | (v == 2.0).all(-1))
    v = F.dropout1d(tensor.ones(32, 5), 0.5).numpy()  # unbatched (C, L)
    assert np.all((v == 0).all(-1) | (v == 2.0).all(-1))
    assert F.dropout2d(tensor.ones(2, 3, 4, 4), 0.0) is not None
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout2d(tensor.ones(2, 3, 4, 4), 1.5)


# -- errors ------------------------------------------------------------------------------------

def test_conv_errors_are_clear():
    x = tensor.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="input has 3 channels"):
        F.conv2d(x, tensor.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="not supported for strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(RuntimeError, match="smaller than the effective kernel"):
        F.conv2d(x, tensor.randn(4, 3, 9, 9))
    with pytest.raises(RuntimeError, match="same dtype"):
        F.conv2d(x.double(), tensor.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="at most half"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="reflect padding"):
        F.pad(x, (8, 0), "reflect")
    with pytest.raises(ValueError, match="output_padding must be smaller"):
        F.conv_transpose2d(x, tensor.randn(3, 2, 3, 3), stride=2, output_padding=2)


def test_unbatched_inputs():
    m = nn.Conv2d(3, 4, 3, padding=1)
    x = tensor.randn(3, 5, 5)
    assert tuple(m(x).shape) == (4, 5, 5)
    np.testing.assert_allclose(m(x).detach().numpy(), m(x.unsqueeze(0))[0].detach().numpy())
    assert tuple(nn.MaxPool2d(2)(x).shape) == (3, 2, 2)
    assert tuple(nn.Conv1d(3, 2, 2)(tensor.randn(3, 6)).shape) == (2, 5)


@requires_cupy
def test_conv_and_pool_on_gpu_match_cpu():
    tensor.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.AvgPool2d(2, ceil_mode=True), nn.ConvTranspose2d(4, 2, 3, 2))
    x = _rand(2, 2, 9, 9).astype(np.float32)
    xc = _t(x)
    yc = m(xc)
    yc.sum().backward()
    gc = [p.grad.numpy().copy() for p in m.parameters()]
    m.zero_grad()
    m.to("cuda")
    xg = tensor.tensor(x, device="cuda", requires_grad=True)
    yg = m(xg)
    yg.sum().backward()
    np.testing.assert_allclose(yg.detach().cpu().numpy(), yc.detach().numpy(), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(xg.grad.cpu().numpy(), xc.grad.numpy(), rtol=1e-4, atol=1e-5)
    for a, p in zip(gc, m.parameters()):
        np.testing.assert_allclose(p.grad.cpu().numpy(), a, rtol=1e-4, atol=1e-4)


def test_empty_batch_and_non_contiguous_input():
    w = tensor.tensor(_rand(4, 3, 3, 3).astype(np.float32), requires_grad=True)
    e = tensor.zeros(0, 3, 9, 8, requires_grad=True)
    for f in (lambda e: F.conv2d(e, w, padding=1), lambda e: F.conv2d(e, w, stride=2),
              lambda e: F.max_pool2d(e, 2), lambda e: F.avg_pool2d(e, 3, 2, 1),
              lambda e: F.adaptive_avg_pool2d(e, 3)):
        y = f(e)
        assert y.shape[0] == 0
        y.sum().backward()
        assert tuple(e.grad.shape) == (0, 3, 9, 8)
    x = _rand(5, 3, 9, 8)
    xz, xt = tensor.tensor(x).permute(0, 1, 3, 2), torch.tensor(x).permute(0, 1, 3, 2)
    wd = _rand(4, 3, 3, 3, seed=1)
    np.testing.assert_allclose(F.conv2d(xz, tensor.tensor(wd), None, 2, 1).numpy(),
                               TF.conv2d(xt, torch.tensor(wd), None, 2, 1).numpy(), atol=1e-12)
    np.testing.assert_array_equal(F.max_pool2d(xz, 3, 2, 1).numpy(),
                                  TF.max_pool2d(xt, 3, 2, 1).numpy())
