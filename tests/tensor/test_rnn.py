"""RNN, LSTM, GRU, their cells and packed sequences: gradients in float64 against central
differences, and forward values and gradients against PyTorch through state_dicts."""
import numpy as np
import pytest

import tensor
from tensor import nn
from tensor.nn.utils import rnn as rnn_utils
from tensor.ops.rnn import recurrence
from tests.helpers import check_grad, requires_cupy

torch = pytest.importorskip("torch")

MODES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _t(a):
    return tensor.tensor(np.asarray(a))


def _pair(kind, *args, **kwargs):
    """The same layer in zgrad and PyTorch, float64, PyTorch's weights loaded into zgrad."""
    torch.manual_seed(0)
    tm = getattr(torch.nn, kind)(*args, **kwargs).double()
    zm = getattr(nn, kind)(*args, **kwargs).double()
    zm.load_state_dict({k: _t(v.detach().numpy()) for k, v in tm.state_dict().items()})
    assert list(zm.state_dict()) == list(tm.state_dict())
    return zm, tm


def _close(z, t, what):
    np.testing.assert_allclose(z.detach().numpy(), t.detach().numpy(), rtol=1e-9, atol=1e-10,
                               err_msg=what)


def _compare_grads(zm, tm, zx, tx):
    for (n, zp), (_, tp) in zip(zm.named_parameters(), tm.named_parameters()):
        _close(zp.grad, tp.grad, f"grad of {n}")
    if zx is not None:
        _close(zx.grad, tx.grad, "grad of the input")


# ---------------------------------------------------------------------------------------------
# the fused recurrence: gradcheck of every input, every mode, masks and both directions


@pytest.mark.parametrize("mode", list(MODES) + ["LSTM_PROJ"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrence_gradcheck(mode, masked, reverse):
    rng = np.random.default_rng(1)
    T, B, H = 4, 3, 3
    proj = mode == "LSTM_PROJ"
    mode = "LSTM" if proj else mode
    P = 2 if proj else H
    G = MODES[mode]
    mask = None
    if masked:  # sequences of lengths 4, 2, 1 (a packed batch)
        mask = np.arange(T)[:, None] < np.array([4, 2, 1])[None, :]
    shapes = [(T, B, P), (B, P)] + ([(B, H)] if mode == "LSTM" else [])
    w_out = [_t(rng.normal(size=sh)) for sh in shapes]
    args = [rng.normal(size=(T, B, G * H)), rng.normal(size=(G * H, P)) * 0.7,
            rng.normal(size=(G * H,)), rng.normal(size=(B, P))]
    if mode == "LSTM":
        args.append(rng.normal(size=(B, H)))
    if proj:
        args.append(rng.normal(size=(P, H)))
    if mode == "RNN_RELU":
        args[0] = args[0] + 0.3  # away from relu's kink

    def f(gx, w, b, h0, c0=None, w_hr=None):
        outs = recurrence(gx, w, b, h0, c0, mode, mask, reverse, w_hr)
        return sum((o * wo).sum() for o, wo in zip(outs, w_out))
    check_grad(f, *args)


def test_recurrence_output_that_gets_no_gradient():
    """An LSTM whose c_n (or output) is unused: the missing gradients count as zeros."""
    x = tensor.randn(3, 2, 8, dtype=tensor.float64, requires_grad=True)
    w = tensor.randn(8, 2, dtype=tensor.float64, requires_grad=True)
    h0 = tensor.zeros(2, 2, dtype=tensor.float64)
    out, h_n, c_n = recurrence(x, w, None, h0, h0, "LSTM")
    h_n.sum().backward()
    g1 = x.grad.numpy().copy()
    x.grad = None
    out, h_n, c_n = recurrence(x, w, None, h0, h0, "LSTM")
    (h_n.sum() + 0 * c_n.sum() + 0 * out.sum()).backward()
    np.testing.assert_allclose(g1, x.grad.numpy())


def test_recurrence_double_backward_is_refused():
    x = tensor.randn(2, 1, 1, dtype=tensor.float64, requires_grad=True)
    w = tensor.randn(1, 1, dtype=tensor.float64, requires_grad=True)
    y, _ = recurrence(x, w, None, tensor.zeros(1, 1, dtype=tensor.float64), None, "RNN_TANH")
    with pytest.raises(RuntimeError, match="double backward"):
        tensor.autograd.grad(y.sum(), [x], create_graph=True)
    (g,) = tensor.autograd.grad(y.sum(), [w])  # the first-order gradient is fine
    assert np.isfinite(g.numpy()).all()


# ---------------------------------------------------------------------------------------------
# layers against PyTorch


CONFIGS = [dict(num_layers=1), dict(num_layers=2, bidirectional=True),
           dict(num_layers=2, batch_first=True, bias=False),
           dict(num_layers=3, bidirectional=True, batch_first=True)]


@pytest.mark.parametrize("kind,extra", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                        ("RNN", {"nonlinearity": "relu"}),
                                        ("LSTM", {"proj_size": 2})])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_layer_matches_pytorch(kind, extra, cfg):
    zm, tm = _pair(kind, 3, 5, **cfg, **extra)
    assert [[tuple(p.shape) for p in g] for g in zm.all_weights] == \
        [[tuple(p.shape) for p in g] for g in tm.all_weights]
    rng = np.random.default_rng(2)
    B, T = 4, 6
    shape = (B, T, 3) if cfg.get("batch_first") else (T, B, 3)
    x = rng.normal(size=shape)
    D = 2 if cfg.get("bidirectional") else 1
    h0 = rng.normal(size=(cfg["num_layers"] * D, B, extra.get("proj_size", 5)))
    c0 = rng.normal(size=(cfg["num_layers"] * D, B, 5))
    zx, tx = _t(x).requires_grad_(), torch.tensor(x, requires_grad=True)
    zh = (_t(h0).requires_grad_(), _t(c0).requires_grad_()) if kind == "LSTM" else \
        _t(h0).requires_grad_()
    th = (torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)) \
        if kind == "LSTM" else torch.tensor(h0, requires_grad=True)
    zo, zs = zm(zx, zh)
    to, ts = tm(tx, th)
    _close(zo, to, "output")
    zs = zs if kind == "LSTM" else (zs,)
    ts = ts if kind == "LSTM" else (ts,)
    wo = rng.normal(size=to.shape)
    zl = (zo * _t(wo)).sum()
    tl = (to * torch.tensor(wo)).sum()
    for z, t in zip(zs, ts):
        _close(z, t, "final state")
        ws = rng.normal(size=t.shape)
        zl, tl = zl + (z * _t(ws)).sum(), tl + (t * torch.tensor(ws)).sum()
    zl.backward()
    tl.backward()
    _compare_grads(zm, tm, zx, tx)
    for z, t in zip(zh if kind == "LSTM" else (zh,), th if kind == "LSTM" else (th,)):
        _close(z.grad, t.grad, "grad of the initial state")


def test_default_state_unbatched_and_init():
    zm, tm = _pair("GRU", 3, 4, 2)
    x = np.random.default_rng(3).normal(size=(5, 3))  # unbatched (L, H_in)
    zo, zh = zm(_t(x))
    to, th = tm(torch.tensor(x))
    _close(zo, to, "unbatched output")
    _close(zh, th, "unbatched h_n")
    assert zh.shape == (2, 4)
    m = nn.LSTM(7, 16, 2)  # PyTorch's init: every parameter ~ U(-1/sqrt(H), 1/sqrt(H))
    for p in m.parameters():
        a = p.detach().numpy()
        assert np.abs(a).max() <= 0.25 and a.std() > 0.1


def test_dropout_between_layers_trains_and_is_off_in_eval():
    zm, tm = _pair("LSTM", 3, 4, 2, dropout=0.5)
    x = np.random.default_rng(4).normal(size=(5, 2, 3))
    zm.eval()
    tm.eval()
    _close(zm(_t(x))[0], tm(torch.tensor(x))[0], "eval output")
    zm.train()
    tensor.manual_seed(0)
    a = zm(_t(x))[0]
    tensor.manual_seed(1)
    b = zm(_t(x))[0]
    assert not np.allclose(a.detach().numpy(), b.detach().numpy())
    # with the mask fixed by the seed, the gradient through the dropped layer is right
    w = zm.weight_ih_l0

    def f(xx):
        tensor.manual_seed(5)
        return (zm(xx)[0] ** 2).sum()
    check_grad(f, x, rtol=1e-5)
    assert w.grad is None or np.isfinite(w.grad.numpy()).all()


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_match_pytorch(kind):
    zm, tm = _pair(kind, 3, 4)
    rng = np.random.default_rng(5)
    x, h = rng.normal(size=(2, 3)), rng.normal(size=(2, 4))
    zx, tx = _t(x).requires_grad_(), torch.tensor(x, requires_grad=True)
    if kind == "LSTMCell":
        c = rng.normal(size=(2, 4))
        zh, zc = zm(zx, (_t(h), _t(c)))
        th, tc = tm(tx, (torch.tensor(h), torch.tensor(c)))
        _close(zc, tc, "c'")
        zl, tl = (zh * zh).sum() + zc.sum(), (th * th).sum() + tc.sum()
    else:
        zh, th = zm(zx, _t(h)), tm(tx, torch.tensor(h))
        zl, tl = (zh * zh).sum(), (th * th).sum()
    _close(zh, th, "h'")
    zl.backward()
    tl.backward()
    _compare_grads(zm, tm, zx, tx)
    out = zm(_t(x[0]))  # unbatched, zero state
    ref = tm(torch.tensor(x[0]))
    _close(out[0] if kind == "LSTMCell" else out, ref[0] if kind == "LSTMCell" else ref,
           "unbatched cell")


# ---------------------------------------------------------------------------------------------
# packed sequences


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_pack_pad_roundtrip_matches_pytorch(enforce_sorted, batch_first):
    rng = np.random.default_rng(6)
    lengths = [5, 3, 3, 1] if enforce_sorted else [2, 5, 1, 4]
    x = rng.normal(size=(4, 5, 2) if batch_first else (5, 4, 2))
    zp = rnn_utils.pack_padded_sequence(_t(x), lengths, batch_first, enforce_sorted)
    tp = torch.nn.utils.rnn.pack_padded_sequence(torch.tensor(x), lengths, batch_first,
                                                 enforce_sorted)
    _close(zp.data, tp.data, "packed data")
    assert zp.batch_sizes.tolist() == tp.batch_sizes.tolist()
    if not enforce_sorted:
        assert zp.sorted_indices.tolist() == tp.sorted_indices.tolist()
        assert zp.unsorted_indices.tolist() == tp.unsorted_indices.tolist()
    zpad, zlen = rnn_utils.pad_packed_sequence(zp, batch_first, padding_value=-1.0,
                                               total_length=6)
    tpad, tlen = torch.nn.utils.rnn.pad_packed_sequence(tp, batch_first, padding_value=-1.0,
                                                        total_length=6)
    _close(zpad, tpad, "padded")
    assert zlen.tolist() == tlen.tolist() == lengths


def test_pack_rejects_unsorted_and_bad_lengths():
    x = tensor.zeros(3, 2, 1)
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        rnn_utils.pack_padded_sequence(x, [1, 3])
    with pytest.raises(RuntimeError, match="greater than 0"):
        rnn_utils.pack_padded_sequence(x, [3, 0])
    with pytest.raises(ValueError, match="one length per sequence"):
        rnn_utils.pack_padded_sequence(x, [3])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTM_PROJ"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_layer_on_packed_sequence_matches_pytorch(kind, enforce_sorted):
    extra = {"proj_size": 2} if kind == "LSTM_PROJ" else {}
    kind = kind[:4] if extra else kind
    zm, tm = _pair(kind, 2, 3, 2, bidirectional=True, batch_first=True, **extra)
    rng = np.random.default_rng(7)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    x = rng.normal(size=(4, 6, 2))
    h0 = rng.normal(size=(4, 4, 3))
    if extra:
        h0 = (rng.normal(size=(4, 4, 2)), h0)
    zx, tx = _t(x).requires_grad_(), torch.tensor(x, requires_grad=True)
    zp = rnn_utils.pack_padded_sequence(zx, lengths, True, enforce_sorted)
    tp = torch.nn.utils.rnn.pack_padded_sequence(tx, lengths, True, enforce_sorted)
    if not extra and kind == "LSTM":
        h0 = (h0, h0 * 0.5)
    zh = tuple(map(_t, h0)) if kind == "LSTM" else _t(h0)
    th = tuple(map(torch.tensor, h0)) if kind == "LSTM" else torch.tensor(h0)
    zo, zs = zm(zp, zh)
    to, ts = tm(tp, th)
    assert isinstance(zo, rnn_utils.PackedSequence)
    _close(zo.data, to.data, "packed output")
    zpad, _ = rnn_utils.pad_packed_sequence(zo, batch_first=True)
    tpad, _ = torch.nn.utils.rnn.pad_packed_sequence(to, batch_first=True)
    zs = zs if kind == "LSTM" else (zs,)
    ts = ts if kind == "LSTM" else (ts,)
    wo = rng.normal(size=tpad.shape)
    zl, tl = (zpad * _t(wo)).sum(), (tpad * torch.tensor(wo)).sum()
    for z, t in zip(zs, ts):
        _close(z, t, "final state of a packed batch")
        zl, tl = zl + (z * z).sum(), tl + (t * t).sum()
    zl.backward()
    tl.backward()
    _compare_grads(zm, tm, zx, tx)


def test_packed_gradcheck_unequal_lengths():
    m = nn.GRU(2, 2, bidirectional=True).double()
    lengths = [1, 3, 2]

    def f(x):
        p = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, h = m(p)
        pad, _ = rnn_utils.pad_packed_sequence(out)
        return (pad * pad).sum() + (h * h * 0.5).sum()
    check_grad(f, np.random.default_rng(8).normal(size=(3, 3, 2)))


def test_pack_sequence_and_pad_sequence():
    a, b = tensor.ones(3, 2), tensor.full((1, 2), 2.0)
    pad = rnn_utils.pad_sequence([a, b], batch_first=True)
    assert pad.shape == (2, 3, 2) and pad[1, 1:].abs().sum().item() == 0
    left = rnn_utils.pad_sequence([a, b], padding_value=9.0, padding_side="left")
    assert left[0, 1].tolist() == [9.0, 9.0] and left[2, 1].tolist() == [2.0, 2.0]
    seqs = rnn_utils.unpack_sequence(rnn_utils.pack_sequence([b, a], enforce_sorted=False))
    assert [s.shape[0] for s in seqs] == [1, 3]


def test_errors_name_the_problem():
    m = nn.LSTM(3, 4)
    with pytest.raises(RuntimeError, match="expected input of shape"):
        m(tensor.zeros(2, 1, 5))
    with pytest.raises(RuntimeError, match="expected h_0 of size"):
        m(tensor.zeros(2, 1, 3), (tensor.zeros(2, 1, 4), tensor.zeros(1, 1, 4)))
    with pytest.raises(ValueError, match="proj_size"):
        nn.LSTM(3, 4, proj_size=4)
    with pytest.raises(RuntimeError, match="expected h_0 of size"):
        nn.LSTM(3, 4, proj_size=2)(tensor.zeros(2, 1, 3), (tensor.zeros(1, 1, 4),
                                                            tensor.zeros(1, 1, 4)))


@requires_cupy
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layers_on_gpu_match_cpu(kind):
    """The same layers on CuPy (float64): outputs and gradients equal the CPU ones, packed
    input included."""
    rng = np.random.default_rng(9)
    x = rng.normal(size=(4, 6, 3))
    results = []
    for dev in ("cpu", "cuda"):
        tensor.manual_seed(0)
        m = getattr(nn, kind)(3, 5, 2, bidirectional=True, batch_first=True).double().to(dev)
        cell = getattr(nn, kind + "Cell")(3, 5).double().to(dev)
        xt = tensor.tensor(x, device=dev, requires_grad=True)
        packed = rnn_utils.pack_padded_sequence(xt, [3, 6, 1, 4], True, enforce_sorted=False)
        out, _ = m(packed)
        pad, _ = rnn_utils.pad_packed_sequence(out, batch_first=True)
        full, _ = m(xt)
        c = cell(xt[:, 0])
        c = c[0] if kind == "LSTM" else c
        ((pad ** 2).sum() + full.sum() + c.sum()).backward()
        results.append([t.detach().cpu().numpy() for t in
                        [pad, full, c, xt.grad] + [p.grad for p in m.parameters()]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
