"""Every nn layer, loss, optimizer and autocast region gives the CPU's results on a device.

The harness (tests/tensor/_parity.py) builds each case on the CPU in float32 from a fixed
seed, deep-copies it to the target and compares forward, backward (and optimizer steps)
within float32 tolerance. Targets: "cpu" (a second CPU copy, checks the harness and state
copying), "fake" (a strict CuPy stand-in that fails where a numpy array meets a device array,
see tests/fakecuda) and "cuda" (a real GPU; skipped without CuPy and one). Optimizers,
autocast, GradScaler and random factories are in test_gpu_parity_train.py.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from tests.tensor import _parity
from tests.tensor._parity import check_case

T = tensor.tensor
target = _parity.target  # the fixture: "cpu", "fake" or "cuda"
CAUSAL5 = np.triu(np.ones((5, 5), bool), 1)      # True = may not attend (nn's convention)
KPM = np.array([[False] * 5 + [True], [False] * 6])  # key padding: batch 0 ignores key 5


def _mha(m, q, k, v, *masks):
    kw = dict(zip(("key_padding_mask", "attn_mask"), masks))
    return m(q, k, v, **kw)


def _packed(m, x):
    """An RNN over a PackedSequence of unsorted lengths, unpacked again."""
    rnn_utils = nn.utils.rnn
    out, h = m(rnn_utils.pack_padded_sequence(x, [4, 2, 6], enforce_sorted=False))
    return rnn_utils.pad_packed_sequence(out)[0], h


def _rnn(m, x, *h):
    return m(x, tuple(h) if len(h) > 1 else h[0]) if h else m(x)


# id -> (build, input specs, forward fn or None, train mode). A spec is a shape (float32 input
# that requires grad) or a tuple spec of _parity.make_inputs. Ids start with the class name.
MODULE_CASES = {
    "Identity": (nn.Identity, [(3, 4)], None, True),
    "Linear": (lambda: nn.Linear(4, 5), [(2, 3, 4)], None, True),
    "Linear-nobias": (lambda: nn.Linear(4, 5, bias=False), [(3, 4)], None, True),
    "Embedding": (lambda: nn.Embedding(10, 4, padding_idx=0), [("long", 10, (3, 5))], None, True),
    "Embedding-maxnorm": (lambda: nn.Embedding(10, 4, max_norm=1.0), [("long", 10, (2, 6))],
                          None, True),
    "Dropout-eval": (lambda: nn.Dropout(0.5), [(2, 3, 4)], None, False),
    "Dropout1d-eval": (lambda: nn.Dropout1d(0.5), [(2, 3, 4)], None, False),
    "Dropout2d-eval": (lambda: nn.Dropout2d(0.5), [(2, 3, 4, 4)], None, False),
    "Flatten": (nn.Flatten, [(2, 3, 4)], None, True),
    "Unflatten": (lambda: nn.Unflatten(1, (2, 3)), [(2, 6, 4)], None, True),
    "ReLU": (nn.ReLU, [(3, 5)], None, True),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.1), [(3, 5)], None, True),
    "GELU": (nn.GELU, [(3, 5)], None, True),
    "GELU-tanh": (lambda: nn.GELU("tanh"), [(3, 5)], None, True),
    "SiLU": (nn.SiLU, [(3, 5)], None, True),
    "ELU": (lambda: nn.ELU(0.7), [(3, 5)], None, True),
    "Tanh": (nn.Tanh, [(3, 5)], None, True),
    "Sigmoid": (nn.Sigmoid, [(3, 5)], None, True),
    "Softmax": (lambda: nn.Softmax(dim=-1), [(3, 5)], None, True),
    "LogSoftmax": (lambda: nn.LogSoftmax(dim=1), [(3, 5, 2)], None, True),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), [(4, 3, 5)], None, True),
    "BatchNorm1d-eval": (lambda: nn.BatchNorm1d(3), [(4, 3)], None, False),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3, momentum=None), [(4, 3, 4, 4)], None, True),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(2), [(2, 2, 3, 3, 3)], None, True),
    "SyncBatchNorm": (lambda: nn.SyncBatchNorm(3), [(4, 3, 5)], None, True),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True), [(2, 3, 6)], None, True),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
                       [(2, 3, 4, 4)], None, True),
    "InstanceNorm3d": (lambda: nn.InstanceNorm3d(2), [(2, 2, 3, 3, 3)], None, True),
    "LayerNorm": (lambda: nn.LayerNorm(4), [(2, 3, 4)], None, True),
    "LayerNorm-2d": (lambda: nn.LayerNorm((3, 4), elementwise_affine=False), [(2, 3, 4)], None,
                     True),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), [(2, 4, 3, 3)], None, True),
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), [(2, 3, 9)], None, True),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3, padding=1), [(2, 3, 6, 5)], None, True),
    "Conv2d-groups": (lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2, padding=2,
                                        padding_mode="reflect"), [(2, 4, 6, 6)], None, True),
    "Conv2d-same": (lambda: nn.Conv2d(2, 3, (3, 2), padding="same", padding_mode="circular"),
                    [(1, 2, 5, 5)], None, True),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 2, 3, stride=2, output_padding=1),
                        [(2, 3, 5)], None, True),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, groups=2),
                        [(2, 4, 4, 4)], None, True),
    "MaxPool1d": (lambda: nn.MaxPool1d(3, 2, padding=1), [(2, 3, 9)], None, True),
    "MaxPool2d": (lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True,
                                       return_indices=True), [(2, 3, 7, 7)], None, True),
    "MaxPool2d-tiles": (lambda: nn.MaxPool2d(2), [(2, 3, 4, 6)], None, True),
    "AvgPool1d": (lambda: nn.AvgPool1d(3, 2, padding=1, count_include_pad=False), [(2, 3, 8)],
                  None, True),
    "AvgPool2d": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), [(2, 3, 7, 6)], None,
                  True),
    "AvgPool2d-divisor": (lambda: nn.AvgPool2d(2, divisor_override=3), [(1, 2, 4, 4)], None,
                          True),
    "AdaptiveAvgPool1d": (lambda: nn.AdaptiveAvgPool1d(4), [(2, 3, 7)], None, True),
    "AdaptiveAvgPool2d": (lambda: nn.AdaptiveAvgPool2d((3, 5)), [(2, 3, 7, 6)], None, True),
    "Upsample-nearest": (lambda: nn.Upsample(scale_factor=2), [(2, 3, 3, 4)], None, True),
    "Upsample-bilinear": (lambda: nn.Upsample(size=(5, 7), mode="bilinear"), [(2, 3, 3, 4)],
                          None, True),
    "Upsample-linear": (lambda: nn.Upsample(scale_factor=1.5, mode="linear", align_corners=True),
                        [(2, 3, 4)], None, True),
    "ZeroPad1d": (lambda: nn.ZeroPad1d(2), [(2, 3, 4)], None, True),
    "ZeroPad2d": (lambda: nn.ZeroPad2d((1, 2, 0, 1)), [(2, 3, 4, 4)], None, True),
    "ConstantPad1d": (lambda: nn.ConstantPad1d(2, 0.5), [(2, 3, 4)], None, True),
    "ConstantPad2d": (lambda: nn.ConstantPad2d(1, -1.0), [(2, 3, 4, 4)], None, True),
    "ReflectionPad1d": (lambda: nn.ReflectionPad1d(2), [(2, 3, 4)], None, True),
    "ReflectionPad2d": (lambda: nn.ReflectionPad2d((1, 2, 2, 1)), [(2, 3, 4, 4)], None, True),
    "ReplicationPad1d": (lambda: nn.ReplicationPad1d(2), [(2, 3, 4)], None, True),
    "ReplicationPad2d": (lambda: nn.ReplicationPad2d(1), [(2, 3, 4, 4)], None, True),
    "CircularPad1d": (lambda: nn.CircularPad1d(2), [(2, 3, 4)], None, True),
    "CircularPad2d": (lambda: nn.CircularPad2d(1), [(2, 3, 4, 4)], None, True),
    "PixelShuffle": (lambda: nn.PixelShuffle(2), [(2, 8, 3, 3)], None, True),
    "PixelUnshuffle": (lambda: nn.PixelUnshuffle(2), [(2, 2, 4, 6)], None, True),
    "MultiheadAttention": (lambda: nn.MultiheadAttention(8, 2), [(5, 2, 8), (6, 2, 8), (6, 2, 8),
                                                                ("const", KPM)], _mha, True),
    "MultiheadAttention-kv": (lambda: nn.MultiheadAttention(8, 2, add_bias_kv=True,
                                                            add_zero_attn=True, kdim=3, vdim=5,
                                                            batch_first=True),
                              [(2, 5, 8), (2, 6, 3), (2, 6, 5)], _mha, True),
    "MultiheadAttention-causal": (lambda: nn.MultiheadAttention(8, 4, bias=False),
                                  [(5, 2, 8), (5, 2, 8), (5, 2, 8), ("const", np.zeros((2, 5),
                                                                                   bool)),
                                   ("const", CAUSAL5)], _mha, True),
    "TransformerEncoderLayer": (lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0),
                                [(5, 2, 8)], None, True),
    "TransformerEncoderLayer-prenorm": (
        lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True),
        [(2, 5, 8), ("const", CAUSAL5)], lambda m, x, mask: m(x, src_mask=mask), True),
    "TransformerDecoderLayer": (lambda: nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0),
                                [(5, 2, 8), (6, 2, 8), ("const", CAUSAL5)],
                                lambda m, t, mem, mask: m(t, mem, tgt_mask=mask), True),
    "TransformerEncoder": (lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2, norm=nn.LayerNorm(8)),
        [(5, 2, 8)], None, True),
    "TransformerDecoder": (lambda: nn.TransformerDecoder(
        nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2),
        [(2, 4, 8), (2, 6, 8)], None, True),
    "Transformer": (lambda: nn.Transformer(8, 2, 1, 1, 16, dropout=0.0), [(6, 2, 8), (5, 2, 8)],
                    None, True),
    "RNN": (lambda: nn.RNN(4, 5, num_layers=2, bidirectional=True), [(6, 2, 4)], None, True),
    "RNN-relu": (lambda: nn.RNN(4, 5, nonlinearity="relu", batch_first=True),
                 [(2, 6, 4), (1, 2, 5)], _rnn, True),
    "LSTM": (lambda: nn.LSTM(4, 5, num_layers=2), [(6, 2, 4), (2, 2, 5), (2, 2, 5)], _rnn, True),
    "LSTM-proj": (lambda: nn.LSTM(4, 5, proj_size=3, bidirectional=True), [(6, 2, 4)], None,
                  True),
    "LSTM-packed": (lambda: nn.LSTM(4, 5, bidirectional=True), [(6, 3, 4)], _packed, True),
    "GRU": (lambda: nn.GRU(4, 5, bidirectional=True, batch_first=True), [(2, 6, 4)], None, True),
    "RNNBase": (lambda: nn.RNNBase("GRU", 4, 5), [(6, 2, 4)], None, True),
    "RNNCell": (lambda: nn.RNNCell(4, 5), [(3, 4), (3, 5)], None, True),
    "LSTMCell": (lambda: nn.LSTMCell(4, 5), [(3, 4), (3, 5), (3, 5)],
                 lambda m, x, h, c: m(x, (h, c)), True),
    "GRUCell": (lambda: nn.GRUCell(4, 5), [(3, 4)], None, True),
    "Sequential": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(16, 3)), [(2, 2, 4, 4)], None, True),
}

# Module subclasses with no forward of their own to compare, and why.
SKIPPED_MODULES = {
    "Module": "abstract base class: no forward",
    "ModuleList": "a container without forward; its layers are covered one by one",
    "ModuleDict": "a container without forward; its layers are covered one by one",
}

LOSSES = tuple(n for n in nn.__all__ if n.endswith("Loss"))
W5 = np.array([0.5, 1.0, 2.0, 1.5, 0.2], np.float32)
LOSS_CASES = {
    "CrossEntropyLoss": (nn.CrossEntropyLoss, [(4, 5), ("long", 5, (4,))], None, True),
    "CrossEntropyLoss-weighted": (
        lambda: nn.CrossEntropyLoss(weight=T(W5), ignore_index=1, label_smoothing=0.1),
        [(6, 5), ("const", [0, 1, 2, 3, 4, 1])], None, True),
    "CrossEntropyLoss-probs": (lambda: nn.CrossEntropyLoss(reduction="sum"),
                               [(4, 5), ("uniform", 0, 1, (4, 5))], None, True),
    "CrossEntropyLoss-spatial": (lambda: nn.CrossEntropyLoss(reduction="none"),
                                 [(2, 5, 3), ("long", 5, (2, 3))], None, True),
    "NLLLoss": (lambda: nn.NLLLoss(weight=T(W5), reduction="sum"), [(4, 5), ("long", 5, (4,))],
                lambda m, x, t: m(x.log_softmax(1), t), True),
    "MSELoss": (lambda: nn.MSELoss(reduction="none"), [(3, 4), (3, 4)], None, True),
    "L1Loss": (nn.L1Loss, [(3, 4), (3, 4)], None, True),
    "BCELoss": (lambda: nn.BCELoss(weight=T(np.linspace(0.5, 1.5, 4, dtype=np.float32))),
                [(3, 4), ("uniform", 0, 1, (3, 4))], lambda m, x, t: m(x.sigmoid(), t), True),
    "BCEWithLogitsLoss": (lambda: nn.BCEWithLogitsLoss(pos_weight=T(np.float32([1, 2, 3, .5]))),
                          [(3, 4), ("uniform", 0, 1, (3, 4))], None, True),
    "SmoothL1Loss": (lambda: nn.SmoothL1Loss(beta=0.5), [(3, 4), (3, 4)], None, True),
    "HuberLoss": (lambda: nn.HuberLoss(delta=0.7, reduction="sum"), [(3, 4), (3, 4)], None,
                  True),
}
FUNCTIONAL_CASES = {  # functional losses and functions no module covers
    "cross_entropy": (lambda x, t: F.cross_entropy(x, t, reduction="none", label_smoothing=0.2),
                      [(4, 5), ("long", 5, (4,))]),
    "nll_loss": (lambda x, t: F.nll_loss(x, t, ignore_index=2), [(4, 5), ("long", 5, (4,))]),
    "mse_loss": (lambda x, t: F.mse_loss(x, t, reduction="sum"), [(3, 4), (3, 4)]),
    "l1_loss": (lambda x, t: F.l1_loss(x, t, reduction="none"), [(3, 4), (3, 4)]),
    "smooth_l1_loss": (lambda x, t: F.smooth_l1_loss(x, t, beta=2.0), [(3, 4), (3, 4)]),
    "huber_loss": (lambda x, t: F.huber_loss(x, t, reduction="none"), [(3, 4), (3, 4)]),
    "binary_cross_entropy": (lambda x, t: F.binary_cross_entropy(x, t, reduction="sum"),
                             [("uniform", 0.05, 0.95, (3, 4)), ("uniform", 0, 1, (3, 4))]),
    "binary_cross_entropy_with_logits": (
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"),
        [(3, 4), ("uniform", 0, 1, (3, 4))]),
    "one_hot+embedding": (lambda i, w: F.embedding(i, w) + F.one_hot(i, 4).float().sum(),
                          [("long", 4, (2, 3)), (4, 2)]),
    "normalize": (lambda x: F.normalize(x, dim=1), [(3, 4)]),
    "softplus": (lambda x: F.softplus(x, beta=2.0), [(3, 4)]),
    "interpolate-nearest-exact": (lambda x: F.interpolate(x, size=(5, 3), mode="nearest-exact"),
                                  [(1, 2, 4, 4)]),
    "interpolate-area": (lambda x: F.interpolate(x, size=(3, 2), mode="area"), [(1, 2, 5, 4)]),
    "interpolate-trilinear": (lambda x: F.interpolate(x, scale_factor=1.5, mode="trilinear"),
                              [(1, 1, 2, 3, 2)]),
    "grid_sample": (lambda x, th: F.grid_sample(x, F.affine_grid(th, (2, 1, 4, 5),
                                                                 align_corners=False),
                                                align_corners=False),
                    [(2, 1, 4, 5), ("uniform", -0.5, 0.5, (2, 2, 3))]),
    "unfold+fold": (lambda x: F.fold(F.unfold(x, 2, stride=1), (4, 4), 2, stride=1),
                    [(1, 2, 4, 4)]),
    "scaled_dot_product_attention": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        [(2, 2, 5, 4), (2, 2, 5, 4), (2, 2, 5, 3)]),
    "sdpa-mask": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                  [(2, 5, 4), (2, 6, 4), (2, 6, 3), ("const", ~KPM[:, None, :])]),
    "max_pool1d_with_indices": (lambda x: F.max_pool1d_with_indices(x, 2), [(2, 3, 6)]),
    "scatter_add-int64": (lambda i: tensor.zeros(2, 5, dtype=tensor.int64, device=i.device)
                          .scatter_add(1, i, i * 3 + 2 ** 40), [("long", 5, (2, 8))]),
    "getitem-repeated": (lambda x, i: x[i] * 2, [(4, 3), ("const", [1, 1, 3])]),
    "sort+topk": (lambda x, s: (x.sort(1, descending=True)[0] * 2, x.topk(2, 0)[0],
                                x.argsort(0, stable=True), s.sort()[0], s.topk(1)[1]),
                  [(4, 3), ()]),
    "pad-reflect": (lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"), [(1, 2, 4, 4)]),
    "batch_norm": (lambda x: F.batch_norm(x, None, None, training=True), [(4, 3)]),
    "instance_norm": (lambda x: F.instance_norm(x), [(2, 3, 5)]),
}


def _module_classes():
    return {n for n in nn.__all__ if inspect.isclass(getattr(nn, n, None))
            and issubclass(getattr(nn, n), nn.Module)}


def test_case_tables_cover_every_module_and_loss():
    covered = {k.split("-")[0] for k in {**MODULE_CASES, **LOSS_CASES}}
    missing = _module_classes() - covered - set(SKIPPED_MODULES)
    assert not missing, (f"tensor.nn exports {sorted(missing)} with no parity case: add each to "
                         "MODULE_CASES / LOSS_CASES (or SKIPPED_MODULES with a reason)")
    assert not (covered | set(SKIPPED_MODULES)) - _module_classes(), "stale case ids"
    fl = {n for n in F.__all__ if n.endswith("_loss") or n in ("cross_entropy",
                                                                "binary_cross_entropy",
                                                                "binary_cross_entropy_with_logits")}
    assert not fl - set(FUNCTIONAL_CASES), f"functional losses without a case: {fl}"


@pytest.mark.parametrize("case", sorted(MODULE_CASES))
def test_module_parity(target, case):
    build, specs, fn, train = MODULE_CASES[case]
    check_case(target, build, specs, fn, train)


@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_loss_parity(target, case):
    build, specs, fn, train = LOSS_CASES[case]
    check_case(target, build, specs, fn, train)


@pytest.mark.parametrize("case", sorted(FUNCTIONAL_CASES))
def test_functional_parity(target, case):
    fn, specs = FUNCTIONAL_CASES[case]
    check_case(target, lambda: None, specs, lambda _, *xs: fn(*xs))


class _Skewed(nn.Module):
    """Off by 1e-2 on a GPU: the harness must notice."""

    def forward(self, x):
        return x + (0.01 if x.device.type == "cuda" else 0.0)


def test_harness_fails_on_a_device_mismatch(monkeypatch):
    _parity.fakecuda.install(monkeypatch)
    with pytest.raises(AssertionError, match="output 0"):
        check_case("fake", _Skewed, [(3, 4)])


def test_fake_cupy_refuses_what_cupy_refuses(monkeypatch):
    """The fake target is only worth running if it fails where CuPy would."""
    _parity.fakecuda.install(monkeypatch)
    a = tensor.ones(2, 3, device="cuda").array
    with pytest.raises(TypeError):
        a + np.ones((2, 3), np.float32)            # host and device arrays in one kernel
    with pytest.raises(TypeError):
        np.asarray(a)                              # implicit device -> host conversion
    with pytest.raises(TypeError):
        a[...] = np.zeros((2, 3), np.float32)      # CuPy's fill refuses a numpy array
    x = a[0, 1]                                    # an element is a 0-d view, as in CuPy
    a[0, 1] = 5.0
    assert float(x) == 5.0 and not isinstance(a.sum(), np.generic)
    with pytest.raises(TypeError, match="scatter"):
        backend_xp = tensor.backend.get_array_module(a)
        backend_xp.add.at(backend_xp.zeros(3, np.int64), backend_xp.asarray([0, 0]), 1)
    with pytest.raises(AttributeError):
        backend_xp.random.default_rng(0).normal(size=2)   # CuPy's Generator has no normal()
