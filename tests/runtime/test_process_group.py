"""Process groups: init variants, async overlap, sub-groups, and every failure mode ending in a
clear error on every rank (desync, timeout, a dying rank, a peer without the secret)."""
import datetime
import hashlib
import os
import threading
import time

import numpy as np
import pytest

from tests.helpers import free_port, grab_log
from tests.runtime.test_collectives import spawn


def _layout(rank, tcp):
    if tcp:
        os.environ["ZGRAD_HOST_ID"] = f"host{rank}"


# --------------------------------------------------------------------------------------------
# init


def _init_variants(rank, ws, tcp_port):
    import runtime.distributed as dist
    assert "ZGRAD_SECRET" not in os.environ
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialised"):
        dist.get_rank()
    # only PyTorch's variables are set (spawn_ranks): env:// with a loopback MASTER_ADDR
    dist.init_process_group(timeout=datetime.timedelta(seconds=20))
    assert (dist.get_rank(), dist.get_world_size()) == (rank, ws)
    with pytest.raises(RuntimeError, match="already initialised"):
        dist.init_process_group()
    x = np.array([rank + 1.0])
    dist.all_reduce(x)
    dist.destroy_process_group()
    # tcp:// with explicit rank and world size, on a port of its own (MASTER_PORT + 1 could be
    # any socket's ephemeral port)
    dist.init_process_group("zmq", init_method=f"tcp://127.0.0.1:{tcp_port}", rank=rank,
                            world_size=ws, timeout=20)
    y = np.array([rank + 1.0])
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    dist.destroy_process_group()
    return float(x[0]), float(y[0])


def test_init_with_pytorch_variables_only_and_tcp_init_method(monkeypatch):
    monkeypatch.delenv("ZGRAD_SECRET", raising=False)
    res = spawn(_init_variants, 3, free_port(), timeout_s=60)
    assert res == [(6.0, 3.0)] * 3


def test_non_loopback_without_secret_refuses_to_start(monkeypatch):
    import runtime.distributed as dist
    monkeypatch.delenv("ZGRAD_SECRET", raising=False)
    with pytest.raises(RuntimeError, match="ZGRAD_SECRET=.*secrets.token_hex"):
        dist.init_process_group(init_method="tcp://10.123.45.67:29511", rank=0, world_size=1)
    assert not dist.is_initialized()


def test_bad_arguments():
    import runtime.distributed as dist
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        dist.init_process_group(init_method="tcp://127.0.0.1:29512", rank=3, world_size=2)
    with pytest.raises(ValueError, match="backend"):
        dist.init_process_group("mpi")
    with pytest.raises(ValueError, match="init_method"):
        dist.init_process_group(init_method="file:///tmp/x", rank=0, world_size=1)


# --------------------------------------------------------------------------------------------
# async


def _async_overlap(rank, ws, tcp):
    _layout(rank, tcp)
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    big = np.full(2_000_003, rank + 1.0, np.float32)
    work = dist.all_reduce(big, async_op=True)
    # the communication thread makes progress while this thread computes and never waits
    acc, deadline = 0.0, time.monotonic() + 25
    while not work.is_completed():
        acc += float(np.sin(np.arange(10_000.0)).sum())
        assert time.monotonic() < deadline, "async all_reduce made no progress without wait()"
    assert work.wait() is True and work.is_success()
    assert np.all(big == sum(range(1, ws + 1)))
    # many launches, some from another thread (as DDP's autograd hooks), waited in any order
    arrays = [np.full(1000 + i, float(rank + i), np.float64) for i in range(8)]
    works = [None] * 8

    def launch(i):
        works[i] = dist.all_reduce(arrays[i], op=dist.ReduceOp.SUM, async_op=True)
    t = threading.Thread(target=lambda: [launch(i) for i in range(0, 8, 2)])
    # launches from two threads must happen in the same order on every rank
    t.start()
    t.join()
    for i in range(1, 8, 2):
        launch(i)
    for w in reversed(works):
        w.wait(timeout=datetime.timedelta(seconds=20))
    for i, a in enumerate(arrays):
        assert np.all(a == sum(r + i for r in range(ws)))
    dist.barrier()
    dist.destroy_process_group()
    return True


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_async_all_reduce_overlaps_and_keeps_order(tcp):
    assert spawn(_async_overlap, 2, tcp, timeout_s=60) == [True, True]


# --------------------------------------------------------------------------------------------
# sub-groups


def _subgroups(rank, ws):
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    odd = dist.new_group([1, 3])
    first3 = dist.new_group([0, 1, 2])
    out = {}
    if rank in (1, 3):
        assert dist.get_rank(odd) == [1, 3].index(rank) and dist.get_world_size(odd) == 2
        x = np.array([float(rank)])
        dist.all_reduce(x, group=odd)
        out["odd"] = float(x[0])
        b = np.array([rank], np.int64)
        dist.broadcast(b, src=3, group=odd)
        out["bcast"] = int(b[0])
    else:
        assert odd is dist.GroupMember.NON_GROUP_MEMBER and dist.get_rank(odd) == -1
        assert dist.all_reduce(np.zeros(1), group=odd) is None
    if rank < 3:
        y = np.arange(5, dtype=np.int64) * (rank + 1)
        dist.all_reduce(y, group=first3)
        out["first3"] = y.tolist()
        objs = [None] * 3
        dist.all_gather_object(objs, rank * 10, group=first3)
        out["objs"] = objs
    z = np.array([1.0])
    dist.all_reduce(z)
    out["world"] = float(z[0])
    dist.destroy_process_group()
    return out


def test_subgroups():
    res = spawn(_subgroups, 4, timeout_s=60)
    for r in (1, 3):
        assert res[r]["odd"] == 4.0 and res[r]["bcast"] == 3
    for r in range(3):
        assert res[r]["first3"] == [0, 6, 12, 18, 24] and res[r]["objs"] == [0, 10, 20]
    assert all(o["world"] == 4.0 for o in res)


# --------------------------------------------------------------------------------------------
# failures: every rank gets a clear error, nobody hangs


def _desync(rank, ws, tcp):
    _layout(rank, tcp)
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    x = np.ones(4 if rank != 1 else 5, np.float32)
    with pytest.raises(RuntimeError) as e:
        dist.all_reduce(x)
    msg = str(e.value)
    with pytest.raises(RuntimeError, match="broken"):
        dist.all_reduce(np.ones(4))
    dist.destroy_process_group()
    return msg


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_desync_names_both_calls_on_every_rank(tcp):
    msgs = spawn(_desync, 3, tcp, timeout_s=60)
    for m in msgs:
        assert "out of step" in m, m
        assert "shape=[4]" in m and "shape=[5]" in m, m


# item 7 of issue 11: the shared-memory check once kept 9 dims and no element count
_SIGNATURE_CASES = {
    # name: (rank 0's call, rank 1's call) as (collective, op, shape)
    "tenth dim": (("all_reduce", "SUM", (1,) * 9 + (3,)), ("all_reduce", "SUM", (1,) * 9 + (4,))),
    "more dims": (("all_reduce", "SUM", (3, 102)), ("all_reduce", "SUM", (3, 102, 200))),
    "same numel": (("all_reduce", "SUM", (1,) * 9 + (2, 6)),
                   ("all_reduce", "SUM", (1,) * 9 + (3, 4))),
    "same numel, gather": (("all_gather_into_tensor", None, (1,) * 9 + (2, 6)),
                           ("all_gather_into_tensor", None, (1,) * 9 + (3, 4))),
    "op": (("all_reduce", "SUM", (3, 102)), ("all_reduce", "MAX", (3, 102))),
}


def _desync_signature(rank, ws):
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    out = {}
    for case, calls in _SIGNATURE_CASES.items():
        g = dist.new_group([0, 1])             # a desync breaks a group: one per case
        name, op, shape = calls[rank]
        x = np.full(shape, rank + 1.0, np.float32)
        with pytest.raises(dist.DesyncError) as e:
            if name == "all_reduce":
                dist.all_reduce(x, op=getattr(dist.ReduceOp, op), group=g)
            else:
                dist.all_gather_into_tensor(np.zeros((2, *shape), np.float32), x, group=g)
        assert np.all(x == rank + 1.0), "a desynchronised call changed its tensor"
        out[case] = str(e.value)
    dist.destroy_process_group()
    return out


def test_desync_compares_whole_call_signature_in_shared_memory():
    res = spawn(_desync_signature, 2, timeout_s=60)
    for case, calls in _SIGNATURE_CASES.items():
        texts = []
        for name, op, shape in calls:
            dims = ", ".join(map(str, shape))
            texts.append(f"{name}({op + ', ' if op else ''}float32, shape=[{dims}])")
        for r in range(2):
            m = res[r][case]
            assert "out of step" in m and all(t in m for t in texts), (case, m)


def _desync_kind(rank, ws):
    os.environ["ZGRAD_HOST_ID"] = f"host{rank}"
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    x = np.ones(3, np.float32)
    with pytest.raises(RuntimeError) as e:
        if rank == 0:
            dist.all_reduce(x)
        else:
            dist.all_gather_into_tensor(np.empty(3 * ws, np.float32), x)
    dist.destroy_process_group()
    return str(e.value)


def test_desync_different_collectives():
    for m in spawn(_desync_kind, 2, timeout_s=60):
        assert "all_reduce(SUM" in m and "all_gather_into_tensor(" in m, m


def _timeout(rank, ws, tcp):
    _layout(rank, tcp)
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    group = dist.new_group(list(range(ws)), timeout=1.0)   # a short deadline for this group
    t0 = time.monotonic()
    if rank == 1:
        time.sleep(2.5)        # "stuck in other work"
        msg = "skipped"
    else:
        with pytest.raises((TimeoutError, RuntimeError)) as e:
            dist.all_reduce(np.ones(10), group=group)
        msg = str(e.value)
        assert time.monotonic() - t0 < 30
    dist.destroy_process_group()
    return msg


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_timeout_names_missing_ranks(tcp):
    msgs = spawn(_timeout, 3, tcp, timeout_s=60)
    for m in (msgs[0], msgs[2]):
        assert "timed out" in m and "[1]" in m and "did not arrive" in m, m


def _dying_child(ws, tcp):
    os.environ["RANK"] = str(ws - 1)
    _layout(ws - 1, tcp)
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    dist.all_reduce(np.ones(10))
    dist.all_reduce(np.ones(8_000_000, np.float32), async_op=True)
    time.sleep(0.01)
    os._exit(3)                # dies in the middle of the collective


def _dying(rank, ws, tcp):
    if rank == ws - 1:
        # the dying rank runs in a grandchild, so spawn_ranks sees this rank exit cleanly
        pid = os.fork()
        if pid == 0:
            try:
                _dying_child(ws, tcp)
            finally:
                os._exit(1)
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "hung"
    _layout(rank, tcp)
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    dist.all_reduce(np.ones(10))
    with pytest.raises(RuntimeError) as e:
        dist.all_reduce(np.ones(8_000_000, np.float32))
    dist.destroy_process_group()
    return str(e.value)


@pytest.mark.parametrize("tcp", [False, True], ids=["shm", "tcp"])
def test_rank_dying_mid_collective_is_reported(tcp):
    res = spawn(_dying, 3, tcp, timeout_s=60)
    assert res[2] == 3
    for msg in res[:2]:    # reported as the death it is, not as a timeout
        assert "rank 2" in msg and ("died" in msg or "dropped" in msg), msg
        assert "timed out" not in msg, msg


def _secret(rank, ws):
    import zmq
    import runtime.distributed as dist
    from runtime.distributed import wire
    from runtime.distributed.store import StoreAuthError, StoreClient
    _layout(rank, True)               # the TCP path reads the mesh socket
    grab = grab_log()
    dist.init_process_group(timeout=20)
    pg = dist.api._state.world
    if rank == 0:
        # a peer without the secret pushes a well-formed message to rank 1's endpoint
        s = wire.context().socket(zmq.PUSH)
        s.connect(pg.mesh.endpoints[1])
        wrong = wire.Auth(b"not-the-secret")
        wire.send_msg(s, wrong, {"t": "abort", "src": 0, "n": 0, "msg": "forged"})
        s.close(linger=1000)
        # and asks the store for something
        c = StoreClient("127.0.0.1", int(os.environ["MASTER_PORT"]), wrong, 5)
        with pytest.raises(StoreAuthError, match="secret differs"):
            c.get("init/0")
        c.close()
    dist.barrier()
    time.sleep(0.3)
    x = np.array([rank + 1.0])
    dist.all_reduce(x)                 # the forged abort was dropped: the group still works
    dist.destroy_process_group()
    return float(x[0]), [ln for ln in grab.lines if "refused" in ln]


def test_message_without_secret_is_refused_and_logged():
    res = spawn(_secret, 2, timeout_s=60, env={"ZGRAD_SECRET": "job-secret-123"})
    assert res[0][0] == res[1][0] == 3.0
    # the mesh refuses the peer at the ZeroMQ handshake (Note [Connection gate])
    assert any("refused a connection" in ln and "ZeroMQ login" in ln and "ZGRAD_SECRET" in ln
               for ln in res[1][1]), res
    assert any("store: refused" in ln for ln in res[0][1]), res


def test_rendezvous_timeout_names_missing_ranks(monkeypatch):
    import runtime.distributed as dist
    from tests.helpers import free_port
    monkeypatch.delenv("ZGRAD_SECRET", raising=False)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"missing \['init/1', 'init/2'\].*did not arrive"):
        dist.init_process_group(init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                world_size=3, timeout=1.0)
    assert time.monotonic() - t0 < 15
    assert not dist.is_initialized()


def test_hmac_covers_header_sizes_and_small_payloads(monkeypatch):
    from runtime.distributed import wire
    auth = wire.Auth(b"k")
    h = wire.packb({"src": 0, "n": 0, "nb": 16})
    small = np.arange(4, dtype=np.float32)
    mac = auth.sign(h, small)
    assert auth.verify(h, mac, small)
    assert not auth.verify(h, mac, small * 2)                   # tampered small payload
    assert not wire.Auth(b"other").verify(h, mac, small)       # another secret
    assert not auth.verify(wire.packb({"src": 1, "n": 0, "nb": 16}), mac, small)
    big = np.zeros(wire.ZERO_COPY_MIN_BYTES, np.uint8)
    mac = auth.sign(h, big)
    assert auth.verify(h, mac, big + 1)        # large payloads: header only by default...
    monkeypatch.setenv("ZGRAD_AUTH_PAYLOAD", "1")
    strict = wire.Auth(b"k")
    mac = strict.sign(h, big)
    assert strict.verify(h, mac, big) and not strict.verify(h, mac, big + 1)   # ...or all


# --------------------------------------------------------------------------------------------
# the data channel (Note [Data channel])


def _data_channel_handshake(rank, ws):
    import socket

    from runtime.distributed import data_channel, transport, wire
    grab = grab_log()
    auth = wire.Auth(b"data-channel-test-secret")
    meshes = [transport.PeerMesh(2, r, [0, 1], auth, "127.0.0.1", "group t") for r in range(2)]
    stray = None
    try:
        assert all(m.raw and " data=" in m.published for m in meshes)
        # a connection that does not know the secret, queued before the real peer's
        port = int(meshes[0].published.rsplit("data=", 1)[1])
        stray = socket.create_connection(("127.0.0.1", port), timeout=5)
        stray.sendall(data_channel._HELLO.pack(data_channel._MAGIC, 1, 0, b"n" * 16, b"x" * 32))
        pub = [m.published for m in meshes]
        errors = []

        def connect(m):
            try:
                m.connect(pub, {}, 10)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        threads = [threading.Thread(target=connect, args=(m,)) for m in meshes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors, errors
        assert sorted(meshes[0].data.inp) == [1] and sorted(meshes[1].data.inp) == [0]
        assert meshes[0].data.listener is None     # closed once every peer is in
        assert any("refused a data connection" in line for line in grab.lines), grab.lines
        # a payload over the data channel both ways at once (sends never block), checked
        n = 3_000_001                              # > socket buffers: needs the send queue
        xs = [np.arange(n, dtype=np.float32) * (r + 1) for r in range(2)]
        call = [0, "all_reduce", "SUM", "float32", [n], None]
        deadline = time.monotonic() + 20
        out = np.empty(n, np.float32)
        got = {}

        def exchange(r):           # each mesh in its own thread, as each rank's comm thread
            try:
                meshes[r].send(1 - r, call, 0, xs[r])
                got[r] = meshes[r].recv(1 - r, call, 0, deadline, dtype=np.float32, count=n,
                                        out=out if r == 0 else None)
                meshes[r].flush(call, deadline)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        threads = [threading.Thread(target=exchange, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert got[0] is out and np.array_equal(got[0], xs[1]) and np.array_equal(got[1], xs[0])
        # a size mismatch is a desync error, before any payload byte is read
        meshes[0].send(1, call, 1, xs[0])
        with pytest.raises(transport.DesyncError, match="expected 5 "):
            meshes[1].recv(0, call, 1, deadline, dtype=np.float32, count=5)
    finally:
        if stray is not None:
            stray.close()
        for m in meshes:
            m.close()
    return True


def test_data_channel_handshake_refuses_a_peer_without_the_secret():
    assert spawn(_data_channel_handshake, 1, timeout_s=60) == [True]


def _data_channel_off_on_one_rank(rank, ws):
    _layout(rank, True)
    import runtime.distributed as dist
    dist.init_process_group(timeout=20)
    x = (np.arange(600_001, dtype=np.float32) * 0.1 + rank).astype(np.float32)  # ring-sized
    a = x.copy()
    dist.all_reduce(a)
    assert dist.api._state.world.mesh.raw
    if rank == 0:
        os.environ["ZGRAD_DATA_CHANNEL"] = "0"   # only here: the whole group falls back
    g = dist.new_group(list(range(ws)))
    assert not g.mesh.raw and g.mesh.data is None
    b = x.copy()
    dist.all_reduce(b, group=g)
    dist.destroy_process_group()
    return a.tobytes() == b.tobytes(), hashlib.sha256(a.tobytes()).hexdigest()


def test_data_channel_off_on_one_rank_falls_back_to_zeromq_with_the_same_bits():
    res = spawn(_data_channel_off_on_one_rank, 2, timeout_s=60)
    assert all(same for same, _ in res), res
    assert len({h for _, h in res}) == 1
