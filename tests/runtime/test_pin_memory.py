"""DataLoader pin_memory / pin_memory_device: pinned batches, and batches staged onto a GPU
with non_blocking copies on a side stream (Note [Loader device copies])."""
import numpy as np
import pytest

import tensor
from runtime.data import DataLoader, Dataset
from tests.helpers import requires_cupy


class Ramp(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return np.full((4, 3), i, np.float32), i


def _values(batches):
    return [(x.cpu().numpy().copy(), y.cpu().numpy().copy()) for x, y in batches]


def test_pin_memory_device_must_be_a_gpu():
    with pytest.raises(ValueError, match="pin_memory_device must be '' or 'cuda"):
        DataLoader(Ramp(), batch_size=2, pin_memory=True, pin_memory_device="cpu")
    assert DataLoader(Ramp(), pin_memory=True).pin_memory_device == ""


@pytest.mark.skipif(tensor.backend.cuda_is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("workers", [0, 1])
def test_pin_memory_device_without_cuda_warns_and_keeps_cpu_batches(workers):
    import runtime.data._pin as pin
    pin._warned = False
    loader = DataLoader(Ramp(), batch_size=4, pin_memory=True, pin_memory_device="cuda",
                        num_workers=workers)
    with pytest.warns(UserWarning, match="no CUDA device"):
        out = list(loader)
    assert all(x.device.type == "cpu" for x, _ in out)
    want = _values(DataLoader(Ramp(), batch_size=4))
    for (a, b), (c, d) in zip(_values(out), want):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_staged_batch_without_a_copy_is_returned_as_is():
    from runtime.data._pin import Staged
    batch = [tensor.ones(2)]
    assert Staged(batch, None).get() is batch


@requires_cupy
@pytest.mark.parametrize("workers", [0, 2])
def test_pin_memory_device_delivers_gpu_batches_with_the_cpu_values(workers):
    want = _values(DataLoader(Ramp(), batch_size=4))
    loader = DataLoader(Ramp(), batch_size=4, pin_memory=True, pin_memory_device="cuda",
                        num_workers=workers)
    out = []
    for x, y in loader:
        assert x.device.type == "cuda" and y.device.type == "cuda"
        # consumed on the current stream right away: its kernels wait for the staged copy
        out.append(((x * 1).cpu().numpy(), (y + 0).cpu().numpy()))
    assert len(out) == len(want)
    for (a, b), (c, d) in zip(out, want):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


@requires_cupy
def test_pin_memory_without_device_gives_pinned_cpu_batches():
    x, y = next(iter(DataLoader(Ramp(), batch_size=4, pin_memory=True)))
    assert x.device.type == "cpu" and x.is_pinned() and y.is_pinned()
    g = x.to("cuda", non_blocking=True)
    tensor.cuda.synchronize()
    np.testing.assert_array_equal(g.cpu().numpy(), x.numpy())
