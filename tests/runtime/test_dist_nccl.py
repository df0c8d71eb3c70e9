"""GPU collectives: CuPy arrays through the nccl backend (world size 1 on one GPU; 2 when the
machine has 2 GPUs: NCCL refuses two ranks of one communicator on one GPU) and through the
zmq backend (2 ranks sharing one GPU, staged through pinned host memory). Every collective
is compared with the numpy result. Skips without CuPy and a GPU. Ranks start with the "spawn"
method: the test process has already initialised CUDA (requires_cupy asks for the device
count), and CUDA does not survive fork."""
import numpy as np
import pytest

from tests.helpers import requires_cupy
from tests.runtime.test_collectives import spawn

pytestmark = requires_cupy

_SPIN = r'''
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
'''


def _two_gpus() -> bool:
    import cupy
    return cupy.cuda.runtime.getDeviceCount() >= 2


def _every_collective(rank, ws):
    """Every collective and point-to-point call on CuPy arrays; the same checks for any
    backend (the caller's init_process_group picked it)."""
    import cupy
    import runtime.distributed as dist
    f32 = cupy.float32
    x = cupy.arange(10_007, dtype=f32) * (rank + 1)
    dist.all_reduce(x)
    assert isinstance(x, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(x), np.arange(10_007, dtype=np.float32) *
                               sum(range(1, ws + 1)), rtol=1e-6)
    a = cupy.full(1001, rank + 1.0, f32)
    dist.all_reduce(a, op=dist.ReduceOp.AVG)
    assert abs(float(a[0]) - (ws + 1) / 2) < 1e-6
    m = cupy.full(5, float(rank), cupy.float64)
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    assert float(m.min()) == ws - 1
    b = cupy.full((3, 5), rank, cupy.int64)
    w = dist.broadcast(b, src=ws - 1, async_op=True)
    w.wait()
    assert int(b.sum()) == 15 * (ws - 1)
    r = cupy.full(4, rank + 1.0, f32)
    dist.reduce(r, dst=0)
    if rank == 0:
        assert cupy.asnumpy(r).tolist() == [ws * (ws + 1) / 2] * 4
    out = cupy.empty(4 * ws, cupy.float64)
    dist.all_gather_into_tensor(out, cupy.full(4, float(rank)))
    assert cupy.asnumpy(out).tolist() == [float(q) for q in range(ws) for _ in range(4)]
    outs = [cupy.zeros((2, 3), cupy.int32) for _ in range(ws)]
    dist.all_gather(outs, cupy.full((2, 3), rank, cupy.int32))
    assert [int(o.sum()) for o in outs] == [6 * q for q in range(ws)]
    rs = cupy.empty(2, f32)
    dist.reduce_scatter_tensor(rs, cupy.arange(2 * ws, dtype=f32))
    assert cupy.asnumpy(rs).tolist() == [ws * float(2 * rank), ws * float(2 * rank + 1)]
    rs2 = cupy.empty(3, f32)
    dist.reduce_scatter(rs2, [cupy.full(3, q + rank, f32) for q in range(ws)])
    assert cupy.asnumpy(rs2).tolist() == [float(ws * rank + sum(range(ws)))] * 3
    # all_to_all_single with uneven splits: rank r sends r + 1 rows to every peer
    rows = rank + 1
    src = cupy.arange(rows * ws * 2, dtype=f32).reshape(rows * ws, 2) + 100 * rank
    dst = cupy.empty((sum(q + 1 for q in range(ws)), 2), f32)
    dist.all_to_all_single(dst, src, [q + 1 for q in range(ws)], [rows] * ws)
    want = np.concatenate([(np.arange((q + 1) * ws * 2, dtype=np.float32).reshape(-1, 2)
                            + 100 * q)[rank * (q + 1):(rank + 1) * (q + 1)] for q in range(ws)])
    np.testing.assert_array_equal(cupy.asnumpy(dst), want)
    ins = [cupy.full(2, 10 * rank + q, cupy.int64) for q in range(ws)]
    outs = [cupy.empty(2, cupy.int64) for _ in range(ws)]
    dist.all_to_all(outs, ins)
    assert [cupy.asnumpy(o).tolist() for o in outs] == [[10 * q + rank] * 2 for q in range(ws)]
    g = [cupy.empty(3, f32) for _ in range(ws)] if rank == 0 else None
    dist.gather(cupy.full(3, rank, f32), g, dst=0)
    if rank == 0:
        assert [float(t[0]) for t in g] == list(map(float, range(ws)))
    s = cupy.empty(3, f32)
    dist.scatter(s, [cupy.full(3, q, f32) for q in range(ws)] if rank == 0 else None, src=0)
    assert float(s.sum()) == 3 * rank
    if ws > 1:   # a ring of isend/irecv, and a batch where every rank sends first
        peer_r, peer_l = (rank + 1) % ws, (rank - 1) % ws
        got = cupy.empty(6, f32)
        # even ranks send first, odd ones receive first: separate NCCL calls on one stream
        # would deadlock if both sides sent first (batch_isend_irecv below may)
        send = lambda: dist.isend(cupy.full(6, rank, f32), peer_r)   # noqa: E731
        recv = lambda: dist.irecv(got, peer_l)                        # noqa: E731
        works = [send(), recv()] if rank % 2 == 0 else [recv(), send()]
        for w in works:
            w.wait()
        assert float(got[0]) == peer_l
        got2 = cupy.empty(6, f32)
        ops = [dist.P2POp(dist.isend, cupy.full(6, rank + 5, f32), peer_r),
               dist.P2POp(dist.irecv, got2, peer_l)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        assert float(got2[0]) == peer_l + 5
    dist.barrier()
    c = np.array([rank + 1.0])            # CPU arrays in the same job go through zmq
    dist.all_reduce(c)
    assert c[0] == sum(range(1, ws + 1))


def _run(rank, ws, backend_name):
    import runtime.distributed as dist
    dist.init_process_group(backend_name, timeout=60)
    assert dist.get_backend() == backend_name
    _every_collective(rank, ws)
    dist.destroy_process_group()
    return True


def test_nccl_every_collective_one_rank():
    assert spawn(_run, 1, "nccl", timeout_s=120, start_method="spawn") == [True]


def test_nccl_every_collective_two_ranks():
    if not _two_gpus():
        pytest.skip("NCCL needs one GPU per rank (it refuses two ranks on one GPU); this "
                    "machine has one")
    assert spawn(_run, 2, "nccl", timeout_s=120, start_method="spawn") == [True, True]


def test_zmq_every_collective_two_ranks_sharing_one_gpu():
    assert spawn(_run, 2, "zmq", timeout_s=120, start_method="spawn") == [True, True]


def test_zmq_every_collective_one_rank():
    assert spawn(_run, 1, "zmq", timeout_s=120, start_method="spawn") == [True]


def _wait_does_not_block(rank, ws):
    """A kernel of about a second on the current stream, then an async all_reduce: wait()
    returns while the all_reduce cannot have run yet (it is ordered after the kernel), and
    the current stream then waits for it; synchronize() blocks until it is done."""
    import cupy
    import runtime.distributed as dist
    dist.init_process_group("nccl", timeout=60)
    spin = cupy.RawKernel(_SPIN, "spin")
    x = cupy.ones(1 << 20, cupy.float32)
    spin((1,), (1,), (np.int64(4_000_000_000),))     # 4e9 clock cycles: 2 s at 2 GHz
    w = dist.all_reduce(x, async_op=True)
    w.wait()
    pending = not w.is_completed()       # the host was not blocked until the collective ran
    y = x * 2                            # queued after the all_reduce on the current stream
    w.synchronize()
    assert w.is_completed()
    assert float(y[0]) == 2.0 * ws
    dist.destroy_process_group()
    return pending


@pytest.mark.real_gpu_only("a 2 s busy-wait CUDA kernel keeps the collective pending; the fake "
                            "runs every kernel at once and has no cupy.RawKernel of raw source")
def test_nccl_work_wait_orders_the_stream_without_blocking_the_host():
    assert spawn(_wait_does_not_block, 1, timeout_s=120, start_method="spawn") == [True]
