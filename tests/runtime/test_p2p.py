"""Point-to-point as torch.distributed, in real processes: the patterns of PyTorch's
"Writing Distributed Applications with PyTorch" tutorial run with only the imports changed
(torch -> tensor, torch.distributed -> runtime.distributed), then any-source receives, tags,
batch_isend_irecv, messages crossing collectives, and the errors."""
import os

import numpy as np
import pytest

from tests.runtime.test_collectives import spawn


def _tutorial_blocking_and_immediate(rank, size):
    import tensor as torch
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    out = []
    # blocking point-to-point communication
    tensor = torch.zeros(1)
    if rank == 0:
        tensor += 1
        # Send the tensor to process 1
        dist.send(tensor=tensor, dst=1)
    else:
        # Receive tensor from process 0
        dist.recv(tensor=tensor, src=0)
    out.append(float(tensor[0]))
    # non-blocking point-to-point communication
    tensor = torch.zeros(1)
    req = None
    if rank == 0:
        tensor += 1
        # Send the tensor to process 1
        req = dist.isend(tensor=tensor, dst=1)
    else:
        # Receive tensor from process 0
        req = dist.irecv(tensor=tensor, src=0)
    req.wait()
    out.append(float(tensor[0]))
    dist.destroy_process_group()
    return out


def test_tutorial_blocking_and_non_blocking():
    assert spawn(_tutorial_blocking_and_immediate, 2, timeout_s=60) == [[1.0, 1.0]] * 2


def _ring_allreduce(send, recv):
    """The tutorial's ring all-reduce, word for word but for the imports."""
    import runtime.distributed as dist
    rank = dist.get_rank()
    size = dist.get_world_size()
    send_buff = send.clone()
    recv_buff = send.clone()
    accum = send.clone()

    left = ((rank - 1) + size) % size
    right = (rank + 1) % size

    for i in range(size - 1):
        if i % 2 == 0:
            # Send send_buff
            send_req = dist.isend(send_buff, right)
            dist.recv(recv_buff, left)
            accum[:] += recv_buff[:]
        else:
            # Send recv_buff
            send_req = dist.isend(recv_buff, right)
            dist.recv(send_buff, left)
            accum[:] += send_buff[:]
        send_req.wait()
    recv[:] = accum[:]


def _tutorial_ring(rank, size, n):
    import tensor as torch
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    # n = 3M float32 (12 MB) outgrows the socket buffers: every rank's isend can only finish
    # while its recv runs, so this fails (times out) unless posted sends make progress
    send = torch.tensor(np.arange(n, dtype=np.float32) % 7 + rank)
    recv = torch.zeros(n)
    _ring_allreduce(send, recv)
    want = sum(np.arange(n, dtype=np.float32) % 7 + r for r in range(size))
    ok = np.array_equal(recv.numpy(), want)
    dist.destroy_process_group()
    return ok


@pytest.mark.parametrize("size,n", [(3, 1), (4, 5), (2, 3_000_000)])
def test_tutorial_ring_all_reduce_with_isend_and_recv(size, n):
    assert all(spawn(_tutorial_ring, size, n, timeout_s=90))


def _matching(rank, ws, tcp):
    if tcp:
        os.environ["ZGRAD_HOST_ID"] = f"host{rank}"
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    out = {}
    # any source: rank 0 learns who sent what
    if rank == 0:
        got = {}
        for _ in range(ws - 1):
            t = np.zeros(2, np.int64)
            src = dist.recv(t)                        # src=None: any rank
            got[src] = t.tolist()
        out["any"] = got
    else:
        dist.send(np.array([rank, 10 * rank]), dst=0)
    # tags: sent 7 then 3, received 3 then 7 (the tag-7 message waits aside meanwhile);
    # the big one takes the data channel
    if rank == 1:
        dist.send(np.full(5, 7.0), dst=0, tag=7)
        dist.send(np.full(200_000, 3.0), dst=0, tag=3)
    elif rank == 0:
        a, b = np.zeros(200_000), np.zeros(5)
        w3 = dist.irecv(a, src=1, tag=3)
        assert w3.result() == 1
        dist.recv(b, src=1, tag=7)
        out["tags"] = (float(a[0]), float(a[-1]), float(b[0]))
    # batch_isend_irecv, receives posted before sends, into a non-contiguous view
    right, left = (rank + 1) % ws, (rank - 1) % ws
    grid = np.zeros((4, 6))
    ops = [dist.P2POp(dist.irecv, grid[:, 1], left, tag=1),
           dist.P2POp(dist.isend, np.full(4, float(rank)), right, tag=1)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    out["batch"] = grid[:, 1].tolist() + [float(grid.sum())]
    # a message sent before a collective reaches a receive posted after it
    if rank == 1:
        dist.isend(np.arange(100_000, dtype=np.float32), dst=0, tag=5).wait()
    x = np.array([1.0 + rank])
    dist.all_reduce(x)
    if rank == 0:
        y = np.zeros(100_000, np.float32)
        dist.recv(y, src=1, tag=5)
        out["crossed"] = bool(np.array_equal(y, np.arange(100_000, dtype=np.float32)))
    out["sum"] = float(x[0])
    # in a sub-group: ranks are global, group_src/group_dst are group ranks
    sub = dist.new_group([1, 2])
    if rank == 1:
        dist.send(np.array([42]), dst=2, group=sub)
        dist.send(np.array([43]), group_dst=1, group=sub, tag=2)
    elif rank == 2:
        a, b = np.zeros(1, np.int64), np.zeros(1, np.int64)
        out["sub"] = (dist.recv(a, group=sub), int(a[0]),
                      dist.recv(b, group_src=0, group=sub, tag=2), int(b[0]))
        # a receive nobody answers times out naming the rank and tag (in a group of its own,
    # with a 1 s deadline: the timeout breaks that group only)
    short = dist.new_group([0, 1], timeout=1.0)
    if rank == 0:
        # the group's deadline or the receive's own, whichever fires first: both name both
        with pytest.raises(TimeoutError, match=r"no message with tag 4 arrived from ranks \[1\]|"
                                               r"recv\(tag=4, .*ranks \[1\] did not arrive"):
            dist.recv(np.zeros(1), src=1, group=short, tag=4)
        dist.send(np.zeros(1), dst=1, tag=11)        # rank 1 stays (alive) until then
    elif rank == 1:
        dist.recv(np.zeros(1), src=0, tag=11)
        # bad arguments fail here, before anything is sent
    with pytest.raises(ValueError, match="itself"):
        dist.send(np.zeros(1), dst=rank)
    with pytest.raises(ValueError, match="tag must be"):
        dist.send(np.zeros(1), dst=right, tag=-1)
    with pytest.raises(ValueError, match="not a member"):
        dist.recv(np.zeros(1), src=ws + 5)
    # a size mismatch is an error naming both sides, and breaks the group (the others tell
    # rank 0 first that they left the all_reduce: its abort must not reach them inside it)
    if rank == 0:
        for r in range(1, ws):
            dist.recv(np.zeros(1), src=r, tag=8)
    else:
        dist.send(np.zeros(1), dst=0, tag=8)
    if rank == 1:
        dist.send(np.zeros(3, np.float32), dst=0, tag=9)
    elif rank == 0:
        with pytest.raises(dist.DesyncError) as e:
            dist.recv(np.zeros(4, np.float32), src=1, tag=9)
        out["mismatch"] = str(e.value)
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_any_source_tags_batch_and_messages_crossing_collectives(tcp):
    ws = 3
    res = spawn(_matching, ws, tcp, timeout_s=90)
    assert res[0]["any"] == {r: [r, 10 * r] for r in range(1, ws)}
    assert res[0]["tags"] == (3.0, 3.0, 7.0)
    for r, o in enumerate(res):
        left = (r - 1) % ws
        assert o["batch"] == [float(left)] * 4 + [4.0 * left]
        assert o["sum"] == sum(1.0 + k for k in range(ws))
    assert res[0]["crossed"]
    assert res[2]["sub"] == (1, 42, 1, 43)
    m = res[0]["mismatch"]
    assert "posted recv(tag=9, float32, shape=[4])" in m and "rank 1 sent send(tag=9, " \
        "float32, shape=[3])" in m, m
