"""examples/cnn_digits.py (runtime/models/cnn.py's CNN) reaches >= 95% test accuracy on
scikit-learn's digits."""
import pytest

from tests.helpers import load_example

pytest.importorskip("sklearn", reason="scikit-learn ships the digits data set")


def test_cnn_digits_reaches_95_percent(capsys):
    mod = load_example("cnn_digits")
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


def test_cnn_checkpoint_loads_into_the_same_torch_network(tmp_path):
    """tensor.save(state_dict) -> safetensors -> a PyTorch network of the same layout."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    import numpy as np

    import tensor
    from runtime.models.cnn import CNN
    tensor.manual_seed(0)
    m = CNN(image_size=8, batch_norm=True)
    for s in range(3):  # non-trivial running statistics
        m(tensor.tensor(np.random.default_rng(s).normal(size=(8, 1, 8, 8)).astype(np.float32)))
    m.eval()
    tensor.save(m.state_dict(), str(tmp_path / "cnn.safetensors"))
    tn = torch.nn
    ref = tn.Module()
    ref.features = tn.Sequential(tn.Conv2d(1, 6, 5, padding=2, bias=False), tn.BatchNorm2d(6),
                                 tn.ReLU(), tn.MaxPool2d(2),
                                 tn.Conv2d(6, 16, 5, padding=2, bias=False), tn.BatchNorm2d(16),
                                 tn.ReLU(), tn.MaxPool2d(2))
    ref.classifier = tn.Sequential(tn.Flatten(), tn.Linear(64, 120), tn.ReLU(),
                                   tn.Linear(120, 84), tn.ReLU(), tn.Linear(84, 10))
    ref.load_state_dict(st.load_file(str(tmp_path / "cnn.safetensors")))
    ref.eval()
    x = np.random.default_rng(9).normal(size=(5, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref.classifier(ref.features(torch.tensor(x))).numpy()
    np.testing.assert_allclose(m(tensor.tensor(x)).detach().numpy(), want, rtol=1e-4, atol=1e-5)
