"""The GPU plumbing of runtime.distributed on a CPU: the nccl backend's calls at world size 1
and the zmq backend's pinned staging at world size 2, with CuPy replaced by a fake that keeps
numpy arrays and records stream waits (tests/fakecuda). What they check:
results, argument plumbing into NCCL, that wait() orders the caller's stream instead of
blocking the host, and that pinned buffers are reused. The real thing runs in
test_dist_nccl.py and test_ddp_gpu.py on a GPU."""
import numpy as np

from tests.runtime.test_collectives import spawn


def _nccl_one_rank(rank, ws):
    from tests import fakecuda
    cp = fakecuda.install()
    import runtime.distributed as dist
    dist.init_process_group("nccl", timeout=30)
    from runtime.distributed import api
    pg = api._state.world
    assert pg.nccl is not None and pg.nccl_barrier
    comm = pg.nccl.comm
    x = cp.asarray(np.arange(10, dtype=np.float32))
    w = dist.all_reduce(x, op=dist.ReduceOp.AVG, async_op=True)
    cur = cp.cuda.get_current_stream()
    # the comm stream waited on the caller's stream; wait() makes the caller's stream wait on
    # the work's event and does not block the host
    assert pg.nccl.stream.waited, "the comm stream must wait for the current stream"
    n_sync = len(fakecuda.log.events_synchronized)
    w.wait()
    assert cur.waited[-1] is w._event and len(fakecuda.log.events_synchronized) == n_sync
    assert w.is_completed() and comm.calls[-1] == ("allReduce", cp.cuda.nccl.NCCL_AVG)
    np.testing.assert_array_equal(x.get(), np.arange(10))
    dist.broadcast(x, src=0)
    dist.reduce(x, dst=0, op=dist.ReduceOp.MAX)
    assert comm.calls[-1] == ("reduce", cp.cuda.nccl.NCCL_MAX)
    out = cp.empty((10,), np.float32)
    dist.all_gather_into_tensor(out, x)
    np.testing.assert_array_equal(out.get(), np.arange(10))
    outs = [cp.zeros((2, 5), np.float32)]
    dist.all_gather(outs, x.reshape(2, 5))
    np.testing.assert_array_equal(outs[0].get(), np.arange(10).reshape(2, 5))
    rs = cp.zeros((10,), np.float32)
    dist.reduce_scatter_tensor(rs, x)
    np.testing.assert_array_equal(rs.get(), np.arange(10))
    rs2 = cp.zeros((10,), np.float32)
    dist.reduce_scatter(rs2, [x])
    np.testing.assert_array_equal(rs2.get(), np.arange(10))
    a2a = cp.zeros((5, 2), np.int64)
    dist.all_to_all_single(a2a, cp.asarray(np.arange(10).reshape(5, 2)))
    np.testing.assert_array_equal(a2a.get(), np.arange(10).reshape(5, 2))
    o = [cp.zeros((3,), np.float64)]
    dist.all_to_all(o, [cp.asarray(np.array([1.0, 2, 3]))])
    np.testing.assert_array_equal(o[0].get(), [1, 2, 3])
    g = [cp.zeros((2,), np.int32)]
    dist.gather(cp.asarray(np.array([4, 5], np.int32)), g, dst=0)
    np.testing.assert_array_equal(g[0].get(), [4, 5])
    sc = cp.zeros((2,), np.int32)
    dist.scatter(sc, [cp.asarray(np.array([6, 7], np.int32))], src=0)
    np.testing.assert_array_equal(sc.get(), [6, 7])
    assert cp.cuda.nccl.groups[0] == 0, "every groupStart needs its groupEnd"
    n_sync = len(fakecuda.log.events_synchronized)
    dist.barrier()
    assert len(fakecuda.log.events_synchronized) == n_sync + 1, "barrier blocks the host"
    # CPU arrays still take the zmq group
    c = np.array([3.0])
    dist.all_reduce(c)
    assert c[0] == 3.0
    try:
        dist.all_reduce(cp.asarray(np.zeros((4, 4), np.float32))[:, 1])
    except ValueError as e:
        assert "C-contiguous" in str(e)
    else:
        raise AssertionError("a strided array must be refused by NCCL")
    dist.destroy_process_group()
    return True


def test_nccl_backend_calls_with_a_fake_gpu():
    assert spawn(_nccl_one_rank, 1, timeout_s=60) == [True]


def _future_polled(rank, ws, backend_name):
    from tests import fakecuda
    cp = fakecuda.install()
    import runtime.distributed as dist
    dist.init_process_group(backend_name, timeout=30)
    x = cp.asarray(np.arange(4, dtype=np.float32))
    work = dist.all_reduce(x, async_op=True)
    gpu_event = work._event if backend_name == "nccl" else None
    ordered = []

    def callback(fut):
        cur = cp.cuda.get_current_stream()
        ev = gpu_event if gpu_event is not None else work._after[0]
        ordered.append(bool(cur.waited) and cur.waited[-1] is ev)
        return fut.value()
    chained = work.get_future().then(callback)
    while not chained.done():   # polled, never wait()ed: the callback still runs after
        pass                    # the current stream was made to wait for the GPU part
    dist.destroy_process_group()
    return ordered


def test_a_polled_work_future_orders_the_stream_before_its_callbacks():
    assert spawn(_future_polled, 1, "nccl", timeout_s=60) == [[True]]
    assert spawn(_future_polled, 2, "zmq", timeout_s=60) == [[True], [True]]


def _nccl_shutdown(rank, ws, failing):
    from tests import fakecuda
    fakecuda.install()
    import runtime.distributed as dist
    from runtime.distributed import api
    dist.init_process_group("nccl", timeout=30)
    comm = api._state.world.nccl.comm
    ended = []
    comm.destroy = lambda: ended.append("destroy")
    comm.abort = lambda: ended.append("abort")
    if failing:
        def peer_died():
            raise RuntimeError("NCCL error: remote process exited")
        comm.check_async_error = peer_died
    dist.destroy_process_group()
    return ended


def test_nccl_shutdown_destroys_or_aborts_when_nccl_reports_an_error():
    # a communicator whose peer died is aborted: destroying it (or waiting on its stream)
    # would hang destroy_process_group
    assert spawn(_nccl_shutdown, 1, False, timeout_s=60) == [["destroy"]]
    assert spawn(_nccl_shutdown, 1, True, timeout_s=60) == [["abort"]]


def _zmq_staging(rank, ws):
    from tests import fakecuda
    cp = fakecuda.install()
    import runtime.distributed as dist
    dist.init_process_group("zmq", timeout=30)
    cur = cp.cuda.get_current_stream()
    for step in range(6):
        x = cp.asarray(np.full(1000, rank + 1.0 + step, np.float32))
        w = dist.all_reduce(x, async_op=True)
        w.wait()
        np.testing.assert_array_equal(x.get(), np.full(1000, 3.0 + 2 * step))
        ev, dev = w._after
        assert cur.waited[-1] is ev and dev == 0, "the caller's stream waits for the copy back"
    # one buffer per size class in flight at a time, reused: no allocation per call
    assert len(fakecuda.log.pinned_allocations) <= 2, fakecuda.log.pinned_allocations
    # a strided array: staged through a contiguous copy and written back in place
    big = cp.asarray(np.zeros((4, 6), np.float64))
    view = big[:, 1:3]
    view[...] = rank + 1.0
    dist.all_reduce(view)
    want = np.zeros((4, 6))
    want[:, 1:3] = 3.0
    np.testing.assert_array_equal(big.get(), want)
    out = cp.empty((2 * ws,), np.float32)
    dist.all_gather_into_tensor(out, cp.asarray(np.full(2, float(rank), np.float32)))
    np.testing.assert_array_equal(out.get(), [0, 0, 1, 1])
    outs = [cp.zeros((3,), np.int64) for _ in range(ws)]
    dist.all_gather(outs, cp.asarray(np.full(3, rank, np.int64)))
    assert [o.get().tolist() for o in outs] == [[0] * 3, [1] * 3]
    b = cp.asarray(np.full(5, float(rank)))
    dist.broadcast(b, src=1)
    np.testing.assert_array_equal(b.get(), np.ones(5))
    peer = 1 - rank
    r = cp.zeros((4,), np.float32)
    works = [dist.isend(cp.asarray(np.full(4, rank + 10.0, np.float32)), peer),
             dist.irecv(r, peer)]
    for w in works:
        w.wait()
    np.testing.assert_array_equal(r.get(), np.full(4, peer + 10.0))
    y = cp.asarray(np.ones(3, np.float32))
    fut = dist.all_reduce(y, async_op=True).get_future()
    fut.wait()
    assert fut.done()
    np.testing.assert_array_equal(y.get(), [2, 2, 2])
    dist.destroy_process_group()
    return True


def test_zmq_backend_stages_gpu_arrays_through_reused_pinned_buffers():
    assert spawn(_zmq_staging, 2, timeout_s=90) == [True, True]


def _shared_gpu(rank, ws, backend_name):
    from tests import fakecuda
    cp = fakecuda.install()
    import runtime.distributed as dist
    from runtime.distributed import api
    try:
        dist.init_process_group(backend_name, timeout=30)
    except RuntimeError as e:
        return str(e)
    pg = api._state.world
    assert pg.nccl is None and pg.nccl_lazy is not None   # auto: built at the first GPU call
    x = cp.asarray(np.ones(4, np.float32))
    dist.all_reduce(x)                       # both ranks on GPU 0: no NCCL, zmq staged
    np.testing.assert_array_equal(x.get(), [2, 2, 2, 2])
    assert pg.nccl is None and pg.nccl_lazy is None
    dist.destroy_process_group()
    return "zmq"


def test_two_ranks_on_one_gpu_take_zmq_under_auto_and_fail_clearly_under_nccl():
    assert spawn(_shared_gpu, 2, "auto", timeout_s=60) == ["zmq", "zmq"]
    errors = spawn(_shared_gpu, 2, "nccl", timeout_s=60)
    assert all("ranks 0 and 1 are on one GPU" in e and "NCCL needs one GPU per rank" in e
               for e in errors), errors


def _auto_one_rank(rank, ws):
    from tests import fakecuda
    cp = fakecuda.install()
    import runtime.distributed as dist
    from runtime.distributed import api
    dist.init_process_group("auto", timeout=30)
    pg = api._state.world
    dist.all_reduce(np.ones(3))               # CPU arrays build nothing
    assert pg.nccl is None and pg.nccl_lazy is not None
    dist.all_reduce(cp.asarray(np.ones(3, np.float32)))
    assert pg.nccl is not None and pg.nccl.comm.calls == [("allReduce", cp.cuda.nccl.NCCL_SUM)]
    dist.destroy_process_group()
    return True


def test_auto_backend_builds_nccl_at_the_first_gpu_collective():
    assert spawn(_auto_one_rank, 1, timeout_s=60) == [True]


def test_staging_makes_pinned_memory_with_the_arrays_gpu_current(monkeypatch):
    """Pinned buffers are allocated with the staged array's GPU current: on the
    communication thread (current device: GPU 0) cudaHostAlloc would otherwise give every
    rank of a multi-GPU host a CUDA context on GPU 0. In this process, through monkeypatch."""
    from runtime.distributed import _cuda
    from tests import fakecuda
    cp = fakecuda.install(monkeypatch, device_count=2)
    monkeypatch.setattr(_cuda, "pinned", _cuda._PinnedPool())
    monkeypatch.setattr(_cuda, "_side", {})
    with cp.cuda.Device(1):
        x, out = cp.asarray(np.arange(6, dtype=np.float32)), cp.zeros(3)
    ctx = _cuda.GpuStaging([x, out])
    staged = ctx.stage(x)
    ctx.stage(out, read=False)
    assert fakecuda.log.pinned_allocations == [1, 1], fakecuda.log.pinned_allocations
    np.testing.assert_array_equal(staged.flat, np.arange(6))


def test_pinned_pool_never_lets_go_of_a_buffer_a_copy_may_still_read():
    """CuPy's pinned pool hands a freed buffer out again at once: a full free list must drop
    a buffer whose copy finished, never one an asynchronous copy may still be reading."""
    from runtime.distributed._cuda import _PinnedPool

    class Ev:
        def __init__(self, done):
            self.done = done
    pool = _PinnedPool()
    n = pool.MAX_PER_SIZE
    busy = [(bytearray(4096), Ev(False)) for _ in range(n + 1)]
    for mem, ev in busy:
        pool.give(mem, 4096, ev)
    kept = [m for m, _ in pool._free[4096]]
    assert all(any(m is k for k in kept) for m, _ in busy), "an in-flight buffer was dropped"
    busy[0][1].done = True                      # its copy finished: it may go now
    extra = bytearray(4096)
    pool.give(extra, 4096, Ev(False))
    kept = [m for m, _ in pool._free[4096]]
    assert not any(m is busy[0][0] for m in kept) and any(m is extra for m in kept)
    idle = bytearray(4096)
    pool.give(idle, 4096, None)                 # full of busy buffers: an idle one just goes
    assert not any(m is idle for m, _ in pool._free[4096])
