"""DistributedDataParallel and ZeroRedundancyOptimizer on CuPy tensors (zmq backend staging
through host memory, and nccl). Skips without CuPy and a GPU. Ranks start with "spawn": the
test process has initialised CUDA (requires_cupy asks for the device count)."""
import numpy as np
import pytest

from tests.helpers import requires_cupy, spawn_ranks
from tests.runtime.test_ddp import N_PER_RANK, _data, _mlp, _reference_grads

pytestmark = requires_cupy


def _gpu_step(rank, world_size, backend_name, as_view):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.optim import ZeroRedundancyOptimizer
    from tensor import backend
    dist.init_process_group(backend_name, timeout=120)
    model = dist.DistributedDataParallel(_mlp(seed=rank).to("cuda"),
                                         gradient_as_bucket_view=as_view)
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tensor.optim.SGD, lr=0.1)
    x, y = _data(world_size)
    sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    xb = tensor.tensor(x[sl], device="cuda")
    yb = tensor.tensor(y[sl], device="cuda")
    F.cross_entropy(model(xb), yb).backward()
    grads = [backend.to_numpy(p.grad.array).copy() for p in model.parameters()]
    on_gpu = all(backend.device_of(p.grad.array).type == "cuda" for p in model.parameters())
    opt.step()
    flat = np.concatenate([backend.to_numpy(p.array).ravel() for p in model.parameters()])
    digests = [None] * world_size
    dist.all_gather_object(digests, flat.tobytes())
    dist.destroy_process_group()
    return grads, on_gpu, len(set(digests))


@pytest.mark.parametrize("backend_name,as_view", [("zmq", False), ("nccl", True)])
def test_ddp_on_cupy_tensors_matches_one_process(backend_name, as_view):
    results = spawn_ranks(_gpu_step, 2, backend_name, as_view, timeout_s=180,
                          start_method="spawn")
    ref = _reference_grads(2)
    for grads, on_gpu, distinct in results:
        assert on_gpu and distinct == 1
        for g, r in zip(grads, ref):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
