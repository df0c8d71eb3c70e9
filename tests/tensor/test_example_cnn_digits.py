"""examples/cnn_digits.py (runtime/models/cnn.py's CNN) reaches >= 95% test accuracy on
scikit-learn's digits."""
import importlib.util
import os

import pytest

pytest.importorskip("sklearn", reason="scikit-learn ships the digits data set")

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "cnn_digits.py")


def test_cnn_digits_reaches_95_percent(capsys):
    spec = importlib.util.spec_from_file_location("cnn_digits", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc = mod.main(["--seed", "0"])
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert acc >= 0.95, out


def test_cnn_model_shapes_and_errors():
    import tensor
    from runtime.models.cnn import CNN
    for size in (28, 8):
        m = CNN(image_size=size, batch_norm=True, dropout=0.2)
        assert tuple(m(tensor.randn(3, 1, size, size)).shape) == (3, 10)
    assert tuple(CNN(image_size=8)(tensor.randn(2, 64)).shape) == (2, 10)  # flat input
    assert "features.1.running_mean" in CNN(batch_norm=True).state_dict()
    with pytest.raises(ValueError, match="expected input"):
        CNN(image_size=28)(tensor.randn(2, 1, 8, 8))
