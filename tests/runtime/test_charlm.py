"""The character-level language models: shapes, causality, and a loss that falls."""
import numpy as np
import pytest

import tensor
import tensor.nn.functional as F
from runtime.data.datasets import CharDataset
from runtime.models.charlm import CharLSTM, CharTransformer

TEXT = "to be, or not to be, that is the question: whether 'tis nobler in the mind " * 20


def _loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@pytest.mark.parametrize("make", [lambda v: CharLSTM(v, 16, 32, 2, 0.1),
                                  lambda v: CharTransformer(v, 32, 4, 2, 24, 0.1)])
def test_shapes_causality_and_training(make):
    ds = CharDataset(text=TEXT, block_size=24)
    tensor.manual_seed(0)
    model = make(ds.vocab_size)
    model.eval()
    x = tensor.tensor(np.stack([ds[i][0] for i in range(4)]))
    with tensor.no_grad():
        out = model(x)
    assert out.shape == (4, 24, ds.vocab_size)
    x2 = x.clone()
    x2[:, 12:] = (x2[:, 12:] + 1) % ds.vocab_size  # change the future
    with tensor.no_grad():
        out2 = model(x2)
    np.testing.assert_allclose(out[:, :12].numpy(), out2[:, :12].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[:, 12:].numpy(), out2[:, 12:].numpy())
    model.train()
    opt = tensor.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(40):
        idx = rng.integers(0, len(ds), 16)
        xb = tensor.tensor(np.stack([ds[i][0] for i in idx]))
        yb = tensor.tensor(np.stack([ds[i][1] for i in idx]))
        loss = _loss(model, xb, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_transformer_rejects_long_sequences():
    with pytest.raises(ValueError, match="block_size"):
        CharTransformer(10, 8, 2, 1, block_size=4)(tensor.zeros(1, 5, dtype=tensor.int64))


def test_charlm_config_is_schema_valid():
    from runtime.config import load_config
    cfg = load_config("configs/charlm.yaml")
    assert cfg.model.name == "char_lstm" and cfg.train.loss == "cross_entropy"
    CharLSTM(**cfg.model.args)
