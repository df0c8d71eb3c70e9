"""examples/mlp_digits.py reaches >= 97% test accuracy on scikit-learn's digits."""
import importlib.util
import os

import pytest

pytest.importorskip("sklearn", reason="scikit-learn ships the digits data set")

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "mlp_digits.py")


def test_mlp_digits_reaches_97_percent(capsys):
    spec = importlib.util.spec_from_file_location("mlp_digits", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc = mod.main(["--epochs", "8", "--seed", "0"])  # a small budget; the default is 20
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert acc >= 0.97, out
