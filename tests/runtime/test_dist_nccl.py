"""GPU collectives: CuPy arrays through the zmq backend (staged through host memory) and
through the nccl backend. Skips without CuPy and a GPU. Ranks start with the "spawn" method:
the test process has already initialised CUDA (requires_cupy asks for the device count), and
CUDA does not survive fork."""
import numpy as np
import pytest

from tests.helpers import requires_cupy
from tests.runtime.test_collectives import spawn

pytestmark = requires_cupy


def _zmq_cupy(rank, ws):
    import cupy
    import runtime.distributed as dist
    dist.init_process_group("zmq", timeout=60)
    x = cupy.arange(10_007, dtype=cupy.float32) * (rank + 1)
    dist.all_reduce(x)
    want = np.arange(10_007, dtype=np.float32) * sum(range(1, ws + 1))
    assert isinstance(x, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(x), want, rtol=1e-6)
    b = cupy.full((3, 5), rank, cupy.int64)
    dist.broadcast(b, src=ws - 1)
    assert int(b.sum()) == 15 * (ws - 1)
    out = cupy.empty(4 * ws, cupy.float64)
    dist.all_gather_into_tensor(out, cupy.full(4, float(rank)))
    assert cupy.asnumpy(out).tolist() == [float(r) for r in range(ws) for _ in range(4)]
    w = dist.all_reduce(x, op=dist.ReduceOp.AVG, async_op=True)
    w.wait()
    dist.destroy_process_group()
    return True


def test_zmq_backend_stages_cupy_arrays():
    assert spawn(_zmq_cupy, 2, timeout_s=120, start_method="spawn") == [True, True]


def _nccl(rank, ws):
    import cupy
    import runtime.distributed as dist
    dist.init_process_group("nccl", timeout=60)
    assert dist.get_backend() == "nccl"
    x = cupy.full(1001, rank + 1.0, cupy.float32)
    dist.all_reduce(x)
    assert float(x[0]) == sum(range(1, ws + 1))
    dist.all_reduce(x, op=dist.ReduceOp.AVG)
    assert abs(float(x[0]) - sum(range(1, ws + 1)) / ws) < 1e-6
    b = cupy.full(7, float(rank), cupy.float64)
    w = dist.broadcast(b, src=0, async_op=True)
    w.wait()
    assert float(b.sum()) == 0.0
    out = cupy.empty(3 * ws, cupy.float32)
    dist.all_gather_into_tensor(out, cupy.full(3, float(rank), cupy.float32))
    assert cupy.asnumpy(out).tolist() == [float(r) for r in range(ws) for _ in range(3)]
    rs = cupy.empty(2, cupy.float32)
    dist.reduce_scatter_tensor(rs, cupy.ones(2 * ws, cupy.float32))
    assert cupy.asnumpy(rs).tolist() == [float(ws)] * 2
    # CPU arrays in the same job still go through the zmq group
    c = np.array([rank + 1.0])
    dist.all_reduce(c)
    assert c[0] == sum(range(1, ws + 1))
    dist.destroy_process_group()
    return True


def test_nccl_backend_one_rank():
    assert spawn(_nccl, 1, timeout_s=120, start_method="spawn") == [True]


def test_nccl_backend_two_ranks():
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("NCCL needs one GPU per rank; this machine has one")
    assert spawn(_nccl, 2, timeout_s=120, start_method="spawn") == [True, True]
