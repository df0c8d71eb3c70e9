"""Names and behaviours the PyTorch tutorials ported in tests/tutorials reached for and zgrad
lacked, each checked against PyTorch: ``out=`` on the module-level functions, ..."""
import numpy as np
import pytest

import tensor
from tests.helpers import check_grad  # noqa: F401

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)


# -- out= ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, args", [
    ("matmul", ((3, 4), (4, 5))), ("mul", ((3, 4), (3, 4))), ("add", ((3, 4), (4,))),
    ("exp", ((2, 3),)), ("cat", None), ("sum", ((3, 4),))])
def test_out_writes_into_the_given_tensor(name, args):
    if name == "cat":
        xs = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2)]
        za, ta = ([tensor.tensor(x) for x in xs],), ([torch.tensor(x) for x in xs],)
    else:
        xs = [rng.normal(size=s).astype(np.float32) for s in args]
        za, ta = tuple(tensor.tensor(x) for x in xs), tuple(torch.tensor(x) for x in xs)
    want = getattr(torch, name)(*ta)
    out = tensor.zeros(*want.shape)
    keep = out.array
    got = getattr(tensor, name)(*za, out=out)
    assert got is out and out.array is keep          # same storage, written in place
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-6)


def test_out_of_another_shape_is_resized_and_keeps_its_dtype():
    a = rng.normal(size=(3, 4))
    out = tensor.empty(0, dtype=tensor.float64)
    tensor.matmul(tensor.tensor(a), tensor.tensor(a.T), out=out)
    assert out.shape == (3, 3) and out.dtype == tensor.float64
    np.testing.assert_allclose(out.numpy(), a @ a.T)


def test_out_refuses_autograd_as_pytorch_does():
    a = tensor.ones(2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="don't support automatic differentiation"):
        tensor.mul(a, a, out=tensor.empty(2, 2))
    with pytest.raises(RuntimeError):     # PyTorch refuses the same call
        torch.mul(torch.ones(2, 2, requires_grad=True), 1.0, out=torch.empty(2, 2))
    with tensor.no_grad():                # allowed under no_grad, as in PyTorch
        tensor.mul(a, a, out=tensor.empty(2, 2))
