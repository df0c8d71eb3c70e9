"""CuPy arrays between processes through CUDA IPC handles (skipped without CuPy and a GPU).

CUDA cannot be used in a forked child of a process that initialised it: these tests use spawn.
"""
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shm
import shm.multiprocessing as mp
from tests.helpers import requires_cupy
from tests.shm.test_multiprocessing import _get, _join

pytestmark = [requires_cupy, pytest.mark.real_gpu_only(
    "CUDA IPC (ipcGetMemHandle, UnownedMemory, MemoryPointer over another process's memory) is "
    "not modelled by the fake, whose arrays are process-local numpy")]


def _child_adds_one(q, r):
    import cupy

    x, view = q.get(timeout=60)
    assert isinstance(x, cupy.ndarray) and x.device.id == 0
    x += 1                     # in place, in the parent's device memory
    view[...] = -5             # a view at an offset inside the block
    cupy.cuda.Device(0).synchronize()
    r.put((float(x.sum()), x.shape, view.shape))
    assert q.get(timeout=60) == "parent wrote"
    r.put(float(x[0, 0]))


def test_cupy_array_and_view_through_a_queue():
    import cupy

    ctx = mp.get_context("spawn")
    q, r = ctx.Queue(), ctx.Queue()
    pad = cupy.zeros(1000, cupy.float32)  # so that x sits at an offset in a pool block, likely
    x = cupy.zeros((4, 8), cupy.float32)
    p = ctx.Process(target=_child_adds_one, args=(q, r))
    p.start()
    q.put((x, x[2:, 3:5]))
    total, shape, vshape = _get(r, p, 120)
    assert total == 32 - 4 - 4 * 5 and shape == (4, 8) and vshape == (2, 2)
    host = cupy.asnumpy(x)
    assert (host[2:, 3:5] == -5).all() and host[0, 0] == 1.0
    x[0, 0] = 42
    cupy.cuda.Device(0).synchronize()
    q.put("parent wrote")
    assert _get(r, p, 60) == 42.0
    _join(p, 60)
    del pad


def test_cupy_roundtrip_in_the_same_process_shares_memory():
    import cupy

    x = cupy.arange(10, dtype=cupy.float64)
    assert shm.is_shared(x) and shm.share(x) is x
    shm.cuda_ipc.ipc_collect()
    y = pickle.loads(ForkingPickler.dumps(x[3:]))
    y[0] = 100
    assert float(x[3]) == 100.0 and y.shape == (7,)
    payload = ForkingPickler.dumps(x)
    assert len(payload) < 1500  # a handle, not the data
    pickle.loads(payload)
    assert shm.cuda_ipc.ipc_collect() == 1  # both rebuilt here: the block is ours again


def _child_returns_gpu_array(q, done):
    import cupy

    a = cupy.full((3,), 7, dtype=cupy.int32)
    q.put(a)
    del a  # the lease keeps the block alive in this process
    assert shm.cuda_ipc.ipc_collect() == 0
    assert done.get(timeout=60) == "dropped"
    freed = shm.cuda_ipc.ipc_collect()
    q.put(freed)


def test_child_produced_cupy_array_reaches_parent():
    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_child_returns_gpu_array, args=(q, done))
    p.start()
    a = _get(q, p, 120)
    view = a[1:]
    del a
    assert np.array_equal(view.get(), [7, 7])  # the producer freed nothing yet: view is live
    del view  # ends the lease
    done.put("dropped")
    assert _get(q, p, 60) == 1  # then the producer's ipc_collect frees the block
    _join(p, 60)


def _child_writes_tensor(q, r):
    import tensor

    t = q.get(timeout=60)
    assert isinstance(t, tensor.Tensor) and t.device.type == "cuda"
    t.array[...] *= 2            # in the parent's device memory: the tensor came as a handle
    import cupy
    cupy.cuda.Device(0).synchronize()
    r.put(float(t.array.sum()))


def test_cuda_tensor_through_a_queue_arrives_as_a_handle():
    import tensor

    ctx = mp.get_context("spawn")
    q, r = ctx.Queue(), ctx.Queue()
    t = tensor.arange(6, dtype=tensor.float32, device="cuda")
    p = ctx.Process(target=_child_writes_tensor, args=(q, r))
    p.start()
    q.put(t)
    assert _get(r, p, 120) == 30.0
    np.testing.assert_array_equal(t.array.get(), np.arange(6) * 2.0)
    _join(p, 60)


def _child_reads_late(q, r, go):
    import cupy

    assert go.get(timeout=60) == "go"     # the producer dropped its array and churned its pool
    x = q.get(timeout=60)
    r.put(cupy.asnumpy(x).tolist())


def test_exporter_keeps_memory_until_the_receiver_opened_it():
    import cupy

    ctx = mp.get_context("spawn")
    q, r, go = ctx.Queue(), ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_child_reads_late, args=(q, r, go))
    p.start()
    x = cupy.arange(256, dtype=cupy.float32)
    x += 1                      # queued work: the consumer's stream waits for it (IPC event)
    q.put(x)
    del x
    assert shm.cuda_ipc.ipc_collect() == 0     # the lease is still 1: nobody opened it yet
    junk = [cupy.full(256, -1, cupy.float32) for _ in range(8)]   # would reuse a freed block
    cupy.cuda.Device(0).synchronize()
    go.put("go")
    assert _get(r, p, 120) == list(np.arange(1, 257, dtype=np.float32))
    _join(p, 60)
    del junk
