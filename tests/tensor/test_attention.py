"""scaled_dot_product_attention, MultiheadAttention and the Transformer layers: gradients in
float64 against central differences, values and gradients against PyTorch via state_dicts."""
import numpy as np
import pytest

import tensor
from tensor import nn
from tensor.nn import functional as F
from tests.helpers import check_grad, requires_cupy

torch = pytest.importorskip("torch")
# PyTorch warns when a bool key_padding_mask meets a float attn_mask; the tests mix them on
# purpose (zgrad accepts the mix, as PyTorch still does)
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched")


def _t(a):
    return tensor.tensor(np.asarray(a))


def _close(z, t, what, rtol=1e-9):
    np.testing.assert_allclose(z.detach().numpy(), t.detach().numpy(), rtol=rtol, atol=1e-10,
                               err_msg=what)


def _pair(kind, *args, **kwargs):
    torch.manual_seed(0)
    tm = getattr(torch.nn, kind)(*args, **kwargs).double()
    zm = getattr(nn, kind)(*args, **kwargs).double()
    assert list(zm.state_dict()) == list(tm.state_dict())
    zm.load_state_dict({k: _t(v.detach().numpy()) for k, v in tm.state_dict().items()})
    return zm, tm


def _grads_match(zm, tm, pairs=()):
    for (n, zp), (_, tp) in zip(zm.named_parameters(), tm.named_parameters()):
        _close(zp.grad, tp.grad, f"grad of {n}")
    for z, t, what in pairs:
        _close(z.grad, t.grad, what)


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention


MASKS = ["none", "bool", "float", "causal"]


@pytest.mark.parametrize("mask", MASKS)
def test_sdpa_matches_pytorch(mask):
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 7, 4)), \
        rng.normal(size=(2, 3, 7, 6))
    am = None
    if mask == "bool":
        am = rng.random((5, 7)) > 0.3
        am[:, 0] = True
    elif mask == "float":
        am = rng.normal(size=(2, 1, 5, 7))
    causal = mask == "causal"
    if causal:
        k, v = k[:, :, :5], v[:, :, :5]
    zs = [_t(a).requires_grad_() for a in (q, k, v)]
    ts = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    zo = F.scaled_dot_product_attention(*zs, attn_mask=None if am is None else _t(am),
                                        is_causal=causal, scale=0.3)
    to = torch.nn.functional.scaled_dot_product_attention(
        *ts, attn_mask=None if am is None else torch.tensor(am), is_causal=causal, scale=0.3)
    _close(zo, to, "output")
    w = rng.normal(size=to.shape)
    (zo * _t(w)).sum().backward()
    (to * torch.tensor(w)).sum().backward()
    for z, t, n in zip(zs, ts, "qkv"):
        _close(z.grad, t.grad, f"grad of {n}")


@pytest.mark.parametrize("mask", MASKS)
def test_sdpa_gradcheck(mask):
    rng = np.random.default_rng(1)
    am = {"none": None, "bool": _t(rng.random((3, 5)) > 0.4), "causal": None}.get(mask)
    w = _t(rng.normal(size=(2, 3, 2)))
    S = 3 if mask == "causal" else 5
    args = [rng.normal(size=(2, 3, 4)), rng.normal(size=(2, S, 4)), rng.normal(size=(2, S, 2))]
    if mask == "float":  # a float mask that requires grad gets its gradient too; one of the
        args.append(rng.normal(size=(2, 3, S)))  # scores' full shape (no broadcast sum-back)

    def f(q, k, v, fm=None):
        m = fm if mask == "float" else am
        return (F.scaled_dot_product_attention(q, k, v, m, is_causal=mask == "causal") * w).sum()
    check_grad(f, *args)


def test_sdpa_double_backward_and_fully_masked_rows():
    rng = np.random.default_rng(2)
    q = _t(rng.normal(size=(3, 2))).requires_grad_()
    k, v = _t(rng.normal(size=(4, 2))), _t(rng.normal(size=(4, 2)))
    (g,) = tensor.autograd.grad(F.scaled_dot_product_attention(q, k, v).pow(2).sum(), [q],
                                create_graph=True)
    tq = torch.tensor(q.detach().numpy(), requires_grad=True)
    (tg,) = torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(
        tq, torch.tensor(k.numpy()), torch.tensor(v.numpy())).pow(2).sum(), [tq],
        create_graph=True)
    _close(g, tg, "first-order gradient")
    (gg,) = tensor.autograd.grad(g.sum(), [q])
    (tgg,) = torch.autograd.grad(tg.sum(), [tq])
    _close(gg, tgg, "second-order gradient")
    m = np.ones((3, 4), bool)
    m[1] = False  # a query that may attend nothing: zeros, as PyTorch
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_t(m))
    assert np.all(out.detach().numpy()[1] == 0) and np.isfinite(out.detach().numpy()).all()


def test_sdpa_dropout_is_inverted_and_seeded():
    q = tensor.randn(1, 4, 3)
    tensor.manual_seed(3)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    tensor.manual_seed(3)
    b = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    c = F.scaled_dot_product_attention(q, q, q)
    assert np.array_equal(a.numpy(), b.numpy()) and not np.allclose(a.numpy(), c.numpy())
    with pytest.raises(RuntimeError, match="is_causal"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=tensor.ones(4, 4), is_causal=True)


def test_sdpa_grouped_query_attention_matches_pytorch():
    rng = np.random.default_rng(11)
    q, k, v = (rng.normal(size=(2, 4, 3, 2)), rng.normal(size=(2, 2, 5, 2)),
               rng.normal(size=(2, 2, 5, 2)))
    zo = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), enable_gqa=True)
    to = torch.nn.functional.scaled_dot_product_attention(
        torch.tensor(q), torch.tensor(k), torch.tensor(v), enable_gqa=True)
    _close(zo, to, "grouped-query attention")


# ---------------------------------------------------------------------------------------------
# MultiheadAttention


def test_functional_multi_head_attention_forward_matches_pytorch():
    rng = np.random.default_rng(12)
    E, H, L, S, N = 4, 2, 3, 5, 2
    w_in, b_in = rng.normal(size=(3 * E, E)), rng.normal(size=(3 * E,))
    w_out, b_out = rng.normal(size=(E, E)), rng.normal(size=(E,))
    q, k, v = rng.normal(size=(L, N, E)), rng.normal(size=(S, N, E)), rng.normal(size=(S, N, E))
    kpm = np.array([[False] * 4 + [True], [False] * 5])
    zo, zw = F.multi_head_attention_forward(
        *map(_t, (q, k, v)), E, H, _t(w_in), _t(b_in), None, None, False, 0.0, _t(w_out),
        _t(b_out), key_padding_mask=_t(kpm))
    to, tw = torch.nn.functional.multi_head_attention_forward(
        *map(torch.tensor, (q, k, v)), E, H, torch.tensor(w_in), torch.tensor(b_in), None,
        None, False, 0.0, torch.tensor(w_out), torch.tensor(b_out),
        key_padding_mask=torch.tensor(kpm))
    _close(zo, to, "output")
    _close(zw, tw, "weights")


@pytest.mark.parametrize("cfg", [dict(), dict(batch_first=True, bias=False),
                                 dict(kdim=3, vdim=5), dict(add_bias_kv=True, add_zero_attn=True)])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_mha_matches_pytorch(cfg, need_weights, average):
    zm, tm = _pair("MultiheadAttention", 6, 2, **cfg)
    rng = np.random.default_rng(4)
    N, L, S = 3, 4, 5
    bf = cfg.get("batch_first", False)
    sh = lambda n, e: (N, n, e) if bf else (n, N, e)  # noqa: E731
    q = rng.normal(size=sh(L, 6))
    k = rng.normal(size=sh(S, cfg.get("kdim", 6)))
    v = rng.normal(size=sh(S, cfg.get("vdim", 6)))
    kpm = np.zeros((N, S), bool)
    kpm[0, 3:] = True
    kpm[2, 0] = True
    am = rng.normal(size=(L, S))
    zin = [_t(a).requires_grad_() for a in (q, k, v)]
    tin = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    zo, zw = zm(*zin, key_padding_mask=_t(kpm), attn_mask=_t(am), need_weights=need_weights,
                average_attn_weights=average)
    to, tw = tm(*tin, key_padding_mask=torch.tensor(kpm), attn_mask=torch.tensor(am),
                need_weights=need_weights, average_attn_weights=average)
    _close(zo, to, "attn_output")
    if need_weights:
        _close(zw, tw, "attn_weights")
    else:
        assert zw is None and tw is None
    w = rng.normal(size=to.shape)
    (zo * _t(w)).sum().backward()
    (to * torch.tensor(w)).sum().backward()
    _grads_match(zm, tm, [(z, t, f"input {i}") for i, (z, t) in enumerate(zip(zin, tin))])


def test_mha_bool_attn_mask_3d_unbatched_and_self_attention():
    zm, tm = _pair("MultiheadAttention", 4, 2)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 2, 4))
    am = rng.random((2 * 2, 3, 3)) > 0.6
    am[..., 0] = False
    zo, zw = zm(_t(x), _t(x), _t(x), attn_mask=_t(am))
    to, tw = tm(*(torch.tensor(x),) * 3, attn_mask=torch.tensor(am))
    _close(zo, to, "3-d bool mask")
    _close(zw, tw, "3-d bool mask weights")
    xu = x[:, 0]
    zo, zw = zm(*(_t(xu),) * 3)
    to, tw = tm(*(torch.tensor(xu),) * 3)
    _close(zo, to, "unbatched")
    _close(zw, tw, "unbatched weights")


def test_mha_gradcheck_with_masks():
    m = nn.MultiheadAttention(4, 2, batch_first=True).double()
    kpm = _t(np.array([[False, False, True], [False, False, False]]))
    am = _t(np.triu(np.ones((3, 3), bool), 1))
    w = _t(np.random.default_rng(6).normal(size=(2, 3, 4)))

    def f(x):
        return (m(x, x, x, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0] * w).sum()
    check_grad(f, np.random.default_rng(7).normal(size=(2, 3, 4)))


# ---------------------------------------------------------------------------------------------
# Transformer layers


@pytest.mark.parametrize("cfg", [dict(), dict(norm_first=True, activation="gelu"),
                                 dict(batch_first=True, activation=torch.nn.functional.silu)])
def test_encoder_matches_pytorch(cfg):
    zcfg = dict(cfg)
    if callable(cfg.get("activation")):
        zcfg["activation"] = F.silu
    torch.manual_seed(0)
    tl = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, **cfg).double()
    tm = torch.nn.TransformerEncoder(tl, 2, norm=torch.nn.LayerNorm(8).double(),
                                     enable_nested_tensor=False).double()
    zl = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, **zcfg).double()
    zm = nn.TransformerEncoder(zl, 2, norm=nn.LayerNorm(8).double(), enable_nested_tensor=True)
    assert list(zm.state_dict()) == list(tm.state_dict())
    zm.load_state_dict({k: _t(v.detach().numpy()) for k, v in tm.state_dict().items()})
    zm.eval()
    tm.eval()
    rng = np.random.default_rng(8)
    bf = cfg.get("batch_first", False)
    x = rng.normal(size=(2, 5, 8) if bf else (5, 2, 8))
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5).double()
    zmask = nn.Transformer.generate_square_subsequent_mask(5).double()
    kpm = np.array([[False] * 5, [False] * 3 + [True] * 2])
    zx, tx = _t(x).requires_grad_(), torch.tensor(x, requires_grad=True)
    zo = zm(zx, mask=zmask, src_key_padding_mask=_t(kpm), is_causal=True)
    to = tm(tx, mask=mask, src_key_padding_mask=torch.tensor(kpm), is_causal=True)
    _close(zo, to, "encoder output", rtol=1e-8)
    w = rng.normal(size=to.shape)
    (zo * _t(w)).sum().backward()
    (to * torch.tensor(w)).sum().backward()
    _grads_match(zm, tm, [(zx, tx, "input")])


def test_encoder_layer_dropout_trains_and_gradcheck():
    layer = nn.TransformerEncoderLayer(4, 2, 6, dropout=0.2, batch_first=True).double()
    x = np.random.default_rng(9).normal(size=(2, 3, 4))
    layer.train()

    def f(xx):
        tensor.manual_seed(1)  # the same dropout masks on every call
        return (layer(xx) ** 2).sum()
    check_grad(f, x, rtol=1e-5)
    layer.eval()
    check_grad(lambda xx: (layer(xx) ** 2).sum(), x, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_and_transformer_match_pytorch(norm_first):
    torch.manual_seed(0)
    tm = torch.nn.Transformer(8, 2, 1, 2, 16, dropout=0.0, norm_first=norm_first,
                              batch_first=True).double()
    zm = nn.Transformer(8, 2, 1, 2, 16, dropout=0.0, norm_first=norm_first,
                        batch_first=True).double()
    assert list(zm.state_dict()) == list(tm.state_dict())
    zm.load_state_dict({k: _t(v.detach().numpy()) for k, v in tm.state_dict().items()})
    rng = np.random.default_rng(10)
    src, tgt = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 4, 8))
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(4).double()
    zmask = nn.Transformer.generate_square_subsequent_mask(4).double()
    mkpm = np.array([[False] * 5, [False] * 4 + [True]])
    zs, ts = _t(src).requires_grad_(), torch.tensor(src, requires_grad=True)
    zo = zm(zs, _t(tgt), tgt_mask=zmask, memory_key_padding_mask=_t(mkpm), tgt_is_causal=True)
    to = tm(ts, torch.tensor(tgt), tgt_mask=tmask, memory_key_padding_mask=torch.tensor(mkpm),
            tgt_is_causal=True)
    _close(zo, to, "transformer output", rtol=1e-8)
    w = rng.normal(size=to.shape)
    (zo * _t(w)).sum().backward()
    (to * torch.tensor(w)).sum().backward()
    _grads_match(zm, tm, [(zs, ts, "src")])


def test_encoder_layer_rejects_unknown_activation():
    with pytest.raises(RuntimeError, match="relu/gelu"):
        nn.TransformerEncoderLayer(4, 2, activation="swish")


@requires_cupy
def test_attention_and_transformer_on_gpu_match_cpu():
    """SDPA, MultiheadAttention (need_weights both ways) and a transformer encoder on CuPy
    (float64): outputs and gradients equal the CPU ones."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(2, 5, 8))
    kpm = np.array([[False] * 5, [False] * 3 + [True] * 2])
    results = []
    for dev in ("cpu", "cuda"):
        tensor.manual_seed(0)
        enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True),
                                    2).double().to(dev)
        mha = nn.MultiheadAttention(8, 2, batch_first=True).double().to(dev)
        xt = tensor.tensor(x, device=dev, requires_grad=True)
        mask = nn.Transformer.generate_square_subsequent_mask(5, device=dev, dtype=xt.dtype)
        km = tensor.tensor(kpm, device=dev)
        y = enc(xt, mask=mask, src_key_padding_mask=km)
        a, w = mha(xt, xt, xt, key_padding_mask=km)
        s = F.scaled_dot_product_attention(xt, xt, xt, is_causal=True)
        (y.sum() + (a ** 2).sum() + w.sum() + s.sum()).backward()
        results.append([t.detach().cpu().numpy() for t in
                        [y, a, w, s, xt.grad] + [p.grad for p in enc.parameters()]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
