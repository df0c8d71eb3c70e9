"""examples/mlp_digits.py reaches >= 97% test accuracy on scikit-learn's digits."""
import pytest

from tests.helpers import load_example

pytest.importorskip("sklearn", reason="scikit-learn ships the digits data set")


def test_mlp_digits_reaches_97_percent(capsys):
    mod = load_example("mlp_digits")
    acc = mod.main(["--epochs", "8", "--seed", "0"])  # a small budget; the default is 20
    out = capsys.readouterr().out
    assert "test accuracy" in out
    assert acc >= 0.97, out
