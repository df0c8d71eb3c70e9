"""tensor.nn: Module registration, state_dict keys and loading, repr, modes, init, layers,
losses (gradcheck in float64), clipping. Cross-checks against PyTorch run when it is installed."""
import gc
import math
import pickle
from collections import OrderedDict

import numpy as np
import pytest

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from tensor.nn import init
from tests.helpers import assert_no_new_shm, check_grad, shm_listing, spawn_ranks

try:
    import torch
except Exception:  # torch is optional: cross-checks skip without it
    torch = None

requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = nn.GELU()
        self.register_buffer("scale", tensor.ones(d))
        self.register_buffer("cache", tensor.zeros(d), persistent=False)

    def forward(self, x):
        return self.act(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self, nn_mod=nn):
        super().__init__()
        self.emb = nn_mod.Embedding(10, 4, padding_idx=0)
        self.blocks = nn_mod.ModuleList([Block(4), Block(4)]) if nn_mod is nn else None
        self.heads = nn_mod.ModuleDict({"a": nn_mod.Linear(4, 2), "b": nn_mod.Linear(4, 3,
                                                                                     bias=False)})
        self.seq = nn_mod.Sequential(nn_mod.Linear(4, 4), nn_mod.ReLU(), nn_mod.Dropout(0.5))

    def forward(self, idx):
        h = self.emb(idx)
        for b in self.blocks:
            h = b(h)
        return self.heads["a"](self.seq(h))


# a module's own parameters, then its buffers, then its children (PyTorch's order)
NET_KEYS = ["emb.weight", "blocks.0.scale", "blocks.0.fc.weight", "blocks.0.fc.bias",
            "blocks.1.scale", "blocks.1.fc.weight", "blocks.1.fc.bias", "heads.a.weight",
            "heads.a.bias", "heads.b.weight", "seq.0.weight", "seq.0.bias"]


# -- registration ------------------------------------------------------------------------------
def test_attribute_assignment_registers_parameters_buffers_and_children():
    net = Net()
    assert list(net.state_dict()) == NET_KEYS
    assert [n for n, _ in net.named_parameters()] == [k for k in NET_KEYS if "scale" not in k]
    assert [n for n, _ in net.named_buffers()] == ["blocks.0.scale", "blocks.0.cache",
                                                   "blocks.1.scale", "blocks.1.cache"]
    assert [n for n, _ in net.named_children()] == ["emb", "blocks", "heads", "seq"]
    names = [n for n, _ in net.named_modules()]
    assert names[:4] == ["", "emb", "blocks", "blocks.0"] and "seq.2" in names
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())
    assert len(list(net.blocks[0].parameters(recurse=False))) == 0
    assert [n for n, _ in net.named_parameters(prefix="model")][0] == "model.emb.weight"


def test_reassigning_and_deleting_registered_attributes():
    m = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="parameter 'weight'"):
        m.weight = tensor.ones(2, 3)  # a plain Tensor cannot replace a Parameter
    m.bias = None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert m(tensor.ones(1, 3)).shape == (1, 2)
    m.extra = nn.Parameter(tensor.zeros(1))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        m.nope
    with pytest.raises(KeyError, match="contain"):
        m.register_buffer("a.b", tensor.ones(1))
    with pytest.raises(TypeError, match="Tensor or None"):
        m.register_buffer("x", [1.0])


def test_assigning_before_init_gives_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(tensor.ones(1))
    with pytest.raises(AttributeError, match="before Module.__init__"):
        Bad()


def test_tied_parameter_listed_once_and_state_dict_keeps_both_keys():
    a = nn.Linear(3, 3)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(seq.parameters())) == 2
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


@requires_torch
def test_state_dict_keys_and_shapes_match_pytorch():
    ours = Net()

    class TBlock(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = torch.nn.Linear(d, d)
            self.act = torch.nn.GELU()
            self.register_buffer("scale", torch.ones(d))
            self.register_buffer("cache", torch.zeros(d), persistent=False)

    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4, padding_idx=0)
            self.blocks = torch.nn.ModuleList([TBlock(4), TBlock(4)])
            self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 2),
                                              "b": torch.nn.Linear(4, 3, bias=False)})
            self.seq = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(),
                                           torch.nn.Dropout(0.5))
    theirs = TNet()
    sd_t = theirs.state_dict()
    sd_o = ours.state_dict()
    assert list(sd_o) == list(sd_t)
    assert all(tuple(sd_o[k].shape) == tuple(sd_t[k].shape) for k in sd_t)
    # a PyTorch state_dict (as numpy arrays) loads into the zgrad model and gives equal values
    ours.load_state_dict({k: v.numpy() for k, v in sd_t.items()})
    for k, v in sd_t.items():
        np.testing.assert_array_equal(ours.state_dict()[k].numpy(), v.numpy())
    assert repr(ours.seq) == repr(theirs.seq)
    assert repr(ours.heads) == repr(theirs.heads)
    assert repr(nn.Embedding(10, 4, padding_idx=0)) == repr(torch.nn.Embedding(10, 4,
                                                                               padding_idx=0))


@requires_torch
def test_every_layer_repr_matches_pytorch():
    specs = [("Linear", (3, 2), {"bias": False}), ("Embedding", (5, 2), {}), ("Identity", (), {}),
             ("Flatten", (), {}), ("ReLU", (), {}), ("ReLU", (), {"inplace": True}),
             ("LeakyReLU", (0.2,), {}), ("GELU", (), {"approximate": "tanh"}), ("SiLU", (), {}),
             ("Tanh", (), {}), ("Sigmoid", (), {}), ("Softmax", (), {"dim": -1}),
             ("LogSoftmax", (), {"dim": 1}), ("Dropout", (0.2,), {}),
             ("CrossEntropyLoss", (), {"label_smoothing": 0.1}),
             ("NLLLoss", (), {"reduction": "sum"}), ("MSELoss", (), {}), ("L1Loss", (), {}),
             ("BCEWithLogitsLoss", (), {})]
    for name, args, kw in specs:
        assert repr(getattr(nn, name)(*args, **kw)) == repr(getattr(torch.nn, name)(*args, **kw))


# -- load_state_dict ---------------------------------------------------------------------------
def test_load_state_dict_copies_in_place_and_keeps_parameter_objects():
    src, dst = Net(), Net()
    w = dst.seq[0].weight
    arr = w.array
    v0 = w._version
    res = dst.load_state_dict(src.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    assert dst.seq[0].weight is w and w.array is arr and w._version > v0
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[k].numpy(), v.numpy())


def test_load_state_dict_strict_lists_missing_unexpected_and_size_mismatch():
    net = Net()
    sd = net.state_dict()
    del sd["heads.a.bias"]
    sd["heads.c.weight"] = tensor.ones(1)
    sd["blocks.0.fc.weight"] = tensor.ones(5, 4)
    with pytest.raises(RuntimeError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert msg.startswith("Error(s) in loading state_dict for Net:")
    assert 'Missing key(s) in state_dict: "heads.a.bias"' in msg
    assert 'Unexpected key(s) in state_dict: "heads.c.weight"' in msg
    assert ("size mismatch for blocks.0.fc.weight: copying a param with shape [5, 4] from "
            "checkpoint, the shape in current model is [4, 4]") in msg
    # non-strict: key problems are reported, a shape mismatch is still an error
    with pytest.raises(RuntimeError, match="size mismatch"):
        net.load_state_dict(sd, strict=False)
    del sd["blocks.0.fc.weight"]
    res = net.load_state_dict(sd, strict=False)
    assert set(res.missing_keys) == {"heads.a.bias", "blocks.0.fc.weight"}
    assert res.unexpected_keys == ["heads.c.weight"]


def test_non_persistent_buffer_key_is_unexpected():
    b = Block(2)
    sd = b.state_dict()
    assert "cache" not in sd
    sd["cache"] = tensor.zeros(2)
    with pytest.raises(RuntimeError, match='Unexpected key.*"cache"'):
        b.load_state_dict(sd)


# -- repr --------------------------------------------------------------------------------------
def test_repr_like_pytorch():
    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(),
                      nn.Sequential(nn.Dropout(0.25), nn.Softmax(dim=1)))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=3, bias=False)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Dropout(p=0.25, inplace=False)\n"
        "    (1): Softmax(dim=1)\n"
        "  )\n"
        ")")
    assert repr(nn.Parameter(tensor.ones(2))).startswith("Parameter containing:\ntensor([1., 1.]")


# -- modes, moves, grads -----------------------------------------------------------------------
def test_train_eval_switch_dropout():
    tensor.manual_seed(0)
    m = nn.Sequential(nn.Dropout(0.3))
    x = tensor.ones(200, 50)
    y = m(x).numpy()
    zero_frac = (y == 0).mean()
    assert 0.25 < zero_frac < 0.35
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    m.eval()
    assert not m.training and not m[0].training
    assert m(x) is x
    m.train()
    assert m[0].training


def test_manual_seed_reproduces_weights_and_dropout_masks():
    def run():
        tensor.manual_seed(1234)
        net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Embedding(5, 3))
        mask = F.dropout(tensor.ones(4, 8), 0.5)
        return [p.detach().numpy().copy() for p in net.parameters()] + [mask.numpy()]
    a, b = run(), run()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    tensor.manual_seed(4321)
    assert not np.array_equal(nn.Linear(8, 16).weight.detach().numpy(), a[0])


_SEEDED_RUN = """
import hashlib, sys
sys.path.insert(0, {root!r})
import tensor, tensor.nn as nn
tensor.manual_seed(7)
net = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.Linear(32, 4), nn.Embedding(9, 3))
h = hashlib.sha256()
for p in net.parameters():
    h.update(p.detach().numpy().tobytes())
h.update(net[1](tensor.ones(8, 32)).numpy().tobytes())
print(h.hexdigest())
"""


def test_manual_seed_is_reproducible_across_processes():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = _SEEDED_RUN.format(root=root)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.strip()) == 64


def test_to_dtype_keeps_parameters_and_casts_only_floats():
    m = nn.Linear(3, 2)
    m.register_buffer("count", tensor.zeros(1, dtype=tensor.int64))
    w = m.weight
    m.double()
    assert m.weight is w and w.dtype == tensor.float64 and m.count.dtype == tensor.int64
    assert m(tensor.ones(1, 3, dtype=tensor.float64)).dtype == tensor.float64
    m.to(tensor.float32)
    assert w.dtype == tensor.float32
    assert m.to("cpu") is m and m.cpu() is m
    with pytest.raises(TypeError, match="floating point"):
        m.to(tensor.int32)


def test_zero_grad_apply_and_requires_grad():
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    m(tensor.ones(4, 3)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    seen = []
    m.apply(lambda mod: seen.append(type(mod).__name__))
    assert seen == ["Linear", "Linear", "Sequential"]
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_forward_hooks():
    m = nn.Linear(2, 2)
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, args: calls.append("pre"))
    h2 = m.register_forward_hook(lambda mod, args, out: out * 0)
    assert not m(tensor.ones(1, 2)).detach().numpy().any() and calls == ["pre"]
    h1.remove()
    h2.remove()
    assert m(tensor.ones(1, 2)).detach().numpy().any() and calls == ["pre"]


def test_share_memory_moves_params_and_grads_to_shm():
    before = shm_listing()
    m = nn.Linear(4, 3)
    m(tensor.ones(2, 4)).sum().backward()
    w = m.weight.numpy(force=True).copy()
    m.share_memory()
    assert all(p.is_shared() and p.grad.is_shared() for p in m.parameters())
    np.testing.assert_array_equal(m.weight.detach().numpy(), w)
    del m
    gc.collect()
    assert_no_new_shm(before)


def _hogwild_step(rank, world_size, model):
    from tensor import optim
    for p in model.parameters():
        p.grad = tensor.ones_like(p)
    optim.SGD(model.parameters(), lr=0.5).step()
    return rank


def test_shared_model_updated_in_place_by_worker_processes():
    # Hogwild-style: optimizers update p.array in place, so a shared model sees every worker
    before = shm_listing()
    m = nn.Linear(3, 2).share_memory()
    w0 = m.weight.detach().numpy().copy()
    assert spawn_ranks(_hogwild_step, 2, m, timeout_s=60) == [0, 1]
    np.testing.assert_allclose(m.weight.detach().numpy(), w0 - 1.0, rtol=1e-6)
    del m
    gc.collect()
    assert_no_new_shm(before)


def test_parameter_pickles_as_parameter_and_deepcopies():
    import copy
    p = nn.Parameter(tensor.ones(3))
    q = pickle.loads(pickle.dumps(p))
    assert isinstance(q, nn.Parameter) and q.requires_grad
    m = copy.deepcopy(nn.Linear(2, 2))
    assert isinstance(m.weight, nn.Parameter)
    with pytest.raises(RuntimeError, match="floating point"):
        nn.Parameter(tensor.ones(2, dtype=tensor.int64))


# -- containers --------------------------------------------------------------------------------
def test_sequential_indexing_slicing_append_delete():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    s = nn.Sequential(a, b)
    s.append(c)
    assert len(s) == 3 and s[0] is a and s[-1] is c and list(s) == [a, b, c]
    assert isinstance(s[1:], nn.Sequential) and list(s[1:]) == [b, c]
    del s[1]
    assert list(s.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    with pytest.raises(IndexError, match="out of range"):
        s[5]
    named = nn.Sequential(OrderedDict(first=nn.Linear(1, 1)))
    assert list(named.state_dict()) == ["first.weight", "first.bias"]


def test_modulelist_and_moduledict():
    ml = nn.ModuleList([nn.Linear(1, 1)])
    ml.append(nn.Linear(1, 2))
    ml += [nn.Identity()]
    assert len(ml) == 3 and isinstance(ml[2], nn.Identity)
    assert list(ml.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    md = nn.ModuleDict({"x": nn.Linear(1, 1)})
    md["y"] = nn.Tanh()
    assert list(md.keys()) == ["x", "y"] and "y" in md and len(md) == 2


# -- layers ------------------------------------------------------------------------------------
def test_activation_modules_match_functional():
    x = tensor.tensor(np.linspace(-3, 3, 12).reshape(3, 4).astype(np.float32))
    pairs = [(nn.ReLU(), lambda t: np.maximum(t, 0)), (nn.Tanh(), np.tanh),
             (nn.Sigmoid(), lambda t: 1 / (1 + np.exp(-t))),
             (nn.SiLU(), lambda t: t / (1 + np.exp(-t))),
             (nn.Softmax(dim=1), lambda t: np.exp(t) / np.exp(t).sum(1, keepdims=True)),
             (nn.LogSoftmax(dim=1), lambda t: t - np.log(np.exp(t).sum(1, keepdims=True))),
             (nn.Identity(), lambda t: t), (nn.Flatten(0), lambda t: t.reshape(-1))]
    for mod, ref in pairs:
        np.testing.assert_allclose(mod(x).numpy(), ref(x.numpy()), rtol=1e-5, atol=1e-6,
                                   err_msg=type(mod).__name__)
    from scipy.special import erf
    xn = x.numpy()
    np.testing.assert_allclose(nn.GELU()(x).numpy(), 0.5 * xn * (1 + erf(xn / math.sqrt(2))),
                               rtol=1e-5, atol=1e-6)
    assert nn.GELU("tanh")(x).shape == x.shape


@pytest.mark.parametrize("make", [lambda: nn.ReLU(inplace=True),
                                  lambda: nn.LeakyReLU(0.1, inplace=True),
                                  lambda: nn.SiLU(inplace=True),
                                  lambda: nn.Dropout(0.3, inplace=True)])
def test_inplace_activations_give_the_same_gradients(make):
    act = make()
    tensor.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 1))
    x = tensor.randn(5, 3)
    grads = []
    for inplace in (True, False):
        act.inplace = inplace
        tensor.manual_seed(1)  # the same dropout mask both times
        m.zero_grad()
        m(x).sum().backward()
        grads.append(m[0].weight.grad.numpy().copy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)
    act.inplace = True
    with tensor.no_grad():
        x2 = tensor.randn(3, 4)
        assert act(x2) is x2


def test_embedding_padding_idx_row_is_zero_and_gets_no_grad():
    tensor.manual_seed(0)
    e = nn.Embedding(6, 3, padding_idx=-1)
    assert e.padding_idx == 5 and not e.weight.numpy(force=True)[5].any()
    idx = tensor.tensor([[0, 5, 2], [5, 5, 1]])
    out = e(idx)
    assert out.shape == (2, 3, 3)
    out.sum().backward()
    g = e.weight.grad.numpy()
    assert not g[5].any() and g[0].tolist() == [1, 1, 1] and g[3].sum() == 0


def test_linear_on_batched_input_and_flatten():
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    assert m(tensor.ones(5, 3, 4)).shape == (5, 2)
    assert nn.Linear(4, 2)(tensor.ones(2, 3, 4)).shape == (2, 3, 2)


# -- init --------------------------------------------------------------------------------------
def test_default_initialisation_matches_pytorch_bounds():
    tensor.manual_seed(0)
    lin = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.98 * bound
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound
    emb = nn.Embedding(300, 200).weight.detach().numpy()
    assert abs(emb.mean()) < 0.02 and abs(emb.std() - 1) < 0.02


def test_init_functions_bounds_and_statistics():
    tensor.manual_seed(0)
    t = tensor.empty(256, 512)
    init.xavier_uniform_(t, gain=2.0)
    a = 2.0 * math.sqrt(6 / (256 + 512))
    assert np.abs(t.numpy()).max() <= a and np.abs(t.numpy()).max() > 0.99 * a
    init.xavier_normal_(t)
    assert abs(t.numpy().std() - math.sqrt(2 / (256 + 512))) < 0.01 * math.sqrt(2 / 768)
    init.kaiming_uniform_(t, nonlinearity="relu")
    bound = math.sqrt(2) * math.sqrt(3 / 512)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.99 * bound
    init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
    assert abs(t.numpy().std() - math.sqrt(2 / 256)) < 0.01 * math.sqrt(2 / 256)
    init.normal_(t, 3.0, 0.5)
    assert abs(t.numpy().mean() - 3) < 0.01 and abs(t.numpy().std() - 0.5) < 0.01
    init.uniform_(t, -2, -1)
    assert t.numpy().min() >= -2 and t.numpy().max() < -1
    init.trunc_normal_(t, std=1.0, a=-0.5, b=0.5)
    assert np.abs(t.numpy()).max() <= 0.5
    init.constant_(t, 0.25)
    assert (t.numpy() == 0.25).all()
    init.zeros_(t)
    assert not t.numpy().any()
    init.ones_(t)
    assert (t.numpy() == 1).all()
    conv_like = tensor.empty(8, 4, 3, 3)  # fan_in = 4*9, fan_out = 8*9
    assert init._calculate_fan_in_and_fan_out(conv_like) == (36, 72)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(tensor.empty(5))


def test_init_generator_and_no_grad_on_parameters():
    p = nn.Parameter(tensor.empty(10, 10))
    g1 = tensor.Generator().manual_seed(7)
    g2 = tensor.Generator().manual_seed(7)
    a = init.kaiming_uniform_(p, generator=g1).detach().numpy().copy()
    b = init.kaiming_uniform_(p, generator=g2).detach().numpy().copy()
    np.testing.assert_array_equal(a, b)
    assert p.requires_grad and p.grad_fn is None


def test_calculate_gain():
    assert init.calculate_gain("linear") == 1 and init.calculate_gain("sigmoid") == 1
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("selu") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("swish")


@requires_torch
def test_calculate_gain_matches_pytorch():
    for nl, a in [("linear", None), ("tanh", None), ("relu", None), ("leaky_relu", None),
                  ("leaky_relu", 0.3), ("selu", None)]:
        assert init.calculate_gain(nl, a) == pytest.approx(torch.nn.init.calculate_gain(nl, a))


# -- losses ------------------------------------------------------------------------------------
def _np_log_softmax(x, axis=1):
    s = x - x.max(axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis, keepdims=True))


def test_loss_modules_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5))
    y = np.array([0, 4, 2, 2, 1, -100])
    w = rng.uniform(0.5, 2, size=5)
    lp = _np_log_softmax(x)
    valid = y != -100
    yc = np.where(valid, y, 0)
    picked = -lp[np.arange(6), yc] * w[yc] * valid
    ref = picked.sum() / (w[yc] * valid).sum()
    out = nn.CrossEntropyLoss(weight=tensor.tensor(w))(tensor.tensor(x), tensor.tensor(y))
    assert out.item() == pytest.approx(ref, rel=1e-10)
    assert nn.NLLLoss(reduction="sum")(tensor.tensor(lp), tensor.tensor(yc)).item() == \
        pytest.approx(-lp[np.arange(6), yc].sum(), rel=1e-10)
    t = rng.normal(size=(6, 5))
    assert nn.MSELoss()(tensor.tensor(x), tensor.tensor(t)).item() == \
        pytest.approx(((x - t) ** 2).mean(), rel=1e-10)
    assert nn.L1Loss(reduction="sum")(tensor.tensor(x), tensor.tensor(t)).item() == \
        pytest.approx(np.abs(x - t).sum(), rel=1e-10)
    tb = (t > 0).astype(np.float64)
    bce = np.mean(np.logaddexp(0, x) - x * tb)
    assert nn.BCEWithLogitsLoss()(tensor.tensor(x), tensor.tensor(tb)).item() == \
        pytest.approx(bce, rel=1e-10)
    loss = nn.CrossEntropyLoss(weight=tensor.tensor(w))
    assert list(loss.state_dict()) == ["weight"]
    assert F.cross_entropy(tensor.tensor(x), tensor.tensor(yc), None, None, -100, False).shape \
        == (6,)  # legacy reduce=False positional argument maps to reduction='none'


@pytest.mark.parametrize("case", ["ce", "ce_smooth_ignore_weight", "ce_probs", "nll", "mse",
                                  "l1", "bce_logits", "bce_pos_weight"])
def test_loss_gradcheck_float64(case):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3))
    y = np.array([2, 0, -100, 1])
    yc = np.array([2, 0, 1, 1])
    t = rng.normal(size=(4, 3)) + 0.3  # away from l1's kink
    probs = np.exp(_np_log_softmax(rng.normal(size=(4, 3))))
    w = tensor.tensor(rng.uniform(0.5, 2, size=3))
    fns = {
        "ce": (lambda a: F.cross_entropy(a, tensor.tensor(yc)), x),
        "ce_smooth_ignore_weight": (lambda a: F.cross_entropy(
            a, tensor.tensor(y), weight=w, ignore_index=-100, label_smoothing=0.2), x),
        "ce_probs": (lambda a: F.cross_entropy(a, tensor.tensor(probs), label_smoothing=0.1), x),
        "nll": (lambda a: F.nll_loss(F.log_softmax(a, 1), tensor.tensor(yc), reduction="sum"),
                x),
        "mse": (lambda a: nn.MSELoss()(a, tensor.tensor(t)), x),
        "l1": (lambda a: nn.L1Loss()(a, tensor.tensor(x * 0.5 + t)), x),
        "bce_logits": (lambda a: nn.BCEWithLogitsLoss()(a, tensor.tensor((t > 0) * 1.0)), x),
        "bce_pos_weight": (lambda a: F.binary_cross_entropy_with_logits(
            a, tensor.tensor((t > 0) * 1.0), pos_weight=tensor.tensor([1.0, 2.0, 0.5])), x),
    }
    fn, inp = fns[case]
    check_grad(fn, inp)
    assert tensor.autograd.gradcheck(fn, [tensor.tensor(inp, requires_grad=True)])


@requires_torch
def test_cross_entropy_options_match_pytorch():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4, 3))  # (N, C, d): class dim 1, as PyTorch
    y = rng.integers(0, 4, size=(5, 3))
    y_ign = y.copy()
    y_ign[0, 0] = y_ign[3, 2] = -1
    w = rng.uniform(0.5, 2, size=4)
    for target, kw in [(y, {}), (y, {"label_smoothing": 0.3}),
                       (y_ign, {"ignore_index": -1, "label_smoothing": 0.1}),
                       (y_ign, {"reduction": "sum", "ignore_index": -1}),
                       (y_ign, {"reduction": "none", "ignore_index": -1})]:
        ours = F.cross_entropy(tensor.tensor(x), tensor.tensor(target), weight=tensor.tensor(w),
                               **kw)
        theirs = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(target),
                                                   weight=torch.tensor(w), **kw)
        np.testing.assert_allclose(ours.detach().numpy(), theirs.numpy(), rtol=1e-10,
                                   err_msg=str(kw))


# -- clipping ----------------------------------------------------------------------------------
def _with_grads(arrays):
    ps = []
    for a in arrays:
        p = nn.Parameter(tensor.tensor(a))
        p.grad = tensor.tensor(a * 2.0)
        ps.append(p)
    return ps


def test_clip_grad_norm_scales_to_max_norm_and_returns_total():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(3, 4)), rng.normal(size=(5,))]
    ps = _with_grads(arrays)
    grads = [a * 2.0 for a in arrays]
    total = math.sqrt(sum((g ** 2).sum() for g in grads))
    out = nn.utils.clip_grad_norm_(ps, max_norm=1.0)
    assert out.item() == pytest.approx(total, rel=1e-12)
    coef = 1.0 / (total + 1e-6)
    for p, g in zip(ps, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-12)
    # below the limit nothing changes; inf-norm is the largest |g|
    ps = _with_grads(arrays)
    nn.utils.clip_grad_norm_(ps, max_norm=1e6)
    np.testing.assert_array_equal(ps[0].grad.numpy(), grads[0])
    ps = _with_grads(arrays)
    out = nn.utils.clip_grad_norm_(ps, 0.5, norm_type=float("inf"))
    assert out.item() == pytest.approx(max(np.abs(g).max() for g in grads))
    ps = _with_grads(arrays)
    out = nn.utils.clip_grad_norm_(ps, 1.0, norm_type=1)
    assert out.item() == pytest.approx(sum(np.abs(g).sum() for g in grads))


def test_clip_grad_norm_nonfinite_and_clip_value():
    ps = _with_grads([np.array([1.0, np.inf])])
    with pytest.raises(RuntimeError, match="non-finite"):
        nn.utils.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True)
    ps = _with_grads([np.array([-3.0, 0.1, 2.0])])
    nn.utils.clip_grad_value_(ps, 1.0)
    np.testing.assert_array_equal(ps[0].grad.numpy(), [-1.0, 0.2, 1.0])
    p = nn.Parameter(tensor.ones(2))
    assert nn.utils.clip_grad_norm_(p, 1.0).item() == 0.0  # no grads: total norm 0


def test_parameters_to_vector_and_back():
    m = nn.Linear(3, 2)
    v = nn.utils.parameters_to_vector(m.parameters())
    assert v.shape == (8,)
    np.testing.assert_array_equal(v.detach().numpy()[:6], m.weight.detach().numpy().ravel())
    nn.utils.vector_to_parameters(tensor.arange(8.0), m.parameters())
    np.testing.assert_array_equal(m.bias.detach().numpy(), [6.0, 7.0])
    with pytest.raises(ValueError, match="8 in all"):
        nn.utils.vector_to_parameters(tensor.arange(7.0), m.parameters())

