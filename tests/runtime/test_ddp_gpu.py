"""DistributedDataParallel and ZeroRedundancyOptimizer on CuPy tensors, against a one-process
CPU reference: the zmq backend (2 ranks sharing one GPU, staged through pinned host memory)
and nccl (world size 1 on one GPU; 2 ranks need 2 GPUs). Also gradient_as_bucket_view, the
fp16 comm hook, no_sync accumulation and find_unused_parameters on the GPU. Skips without
CuPy and a GPU. Ranks start with "spawn": the test process has initialised CUDA
(requires_cupy asks for the device count)."""
import numpy as np
import pytest

from tests.helpers import requires_cupy, spawn_ranks
from tests.runtime.test_ddp import N_PER_RANK, _data, _mlp

pytestmark = requires_cupy


def _reference(world_size, micro_batches):
    """One CPU process: the sum over micro-batches k of the gradient of the mean loss over
    every rank's batch k (what DDP with no_sync accumulation must give)."""
    import tensor
    import tensor.nn.functional as F
    model = _mlp()
    for k in range(micro_batches):
        x, y = _data(world_size, seed=k)
        F.cross_entropy(model(tensor.tensor(x)), tensor.tensor(y)).backward()
    return [p.grad.numpy().copy() for p in model.parameters()]


def _gpu_step(rank, world_size, backend_name, as_view, hook, micro_batches, find_unused):
    import tensor
    import tensor.nn.functional as F
    import runtime.distributed as dist
    from runtime.distributed.algorithms.ddp_comm_hooks import default_hooks
    from runtime.distributed.optim import ZeroRedundancyOptimizer
    from tensor import backend
    dist.init_process_group(backend_name, timeout=120)
    model = dist.DistributedDataParallel(_mlp(seed=rank).to("cuda"),
                                         gradient_as_bucket_view=as_view,
                                         find_unused_parameters=find_unused, bucket_cap_mb=0.5)
    if hook == "fp16":
        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=tensor.optim.SGD, lr=0.1)
    sl = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    for k in range(micro_batches):
        x, y = _data(world_size, seed=k)
        xb = tensor.tensor(x[sl], device="cuda")
        yb = tensor.tensor(y[sl], device="cuda")
        if k < micro_batches - 1:
            with model.no_sync():
                F.cross_entropy(model(xb), yb).backward()
        else:
            F.cross_entropy(model(xb), yb).backward()
    grads = [backend.to_numpy(p.grad.array).copy() for p in model.parameters()]
    on_gpu = all(backend.device_of(p.grad.array).type == "cuda" for p in model.parameters())
    opt.step()
    flat = np.concatenate([backend.to_numpy(p.array).ravel() for p in model.parameters()])
    digests = [None] * world_size
    dist.all_gather_object(digests, flat.tobytes())
    dist.destroy_process_group()
    return grads, on_gpu, len(set(digests))


def _check(backend_name, world_size, as_view=False, hook=None, micro_batches=1,
           find_unused=False, rtol=1e-4, atol=1e-6):
    results = spawn_ranks(_gpu_step, world_size, backend_name, as_view, hook, micro_batches,
                          find_unused, timeout_s=180, start_method="spawn")
    ref = _reference(world_size, micro_batches)
    for grads, on_gpu, distinct in results:
        assert on_gpu and distinct == 1
        for g, r in zip(grads, ref):
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("as_view", [False, True])
def test_ddp_zmq_two_ranks_sharing_one_gpu_matches_one_process(as_view):
    _check("zmq", 2, as_view=as_view)


def test_ddp_nccl_one_rank_matches_one_process():
    _check("nccl", 1, as_view=True)


def test_ddp_nccl_two_ranks_matches_one_process():
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("NCCL needs one GPU per rank (it refuses two ranks on one GPU); this "
                    "machine has one")
    _check("nccl", 2, as_view=True)


def test_ddp_gpu_fp16_hook_no_sync_and_find_unused():
    # fp16 on the wire: float16 precision; no_sync: the first micro-batch accumulates locally
    _check("zmq", 2, as_view=True, hook="fp16", micro_batches=2, find_unused=True,
           rtol=2e-2, atol=2e-3)
