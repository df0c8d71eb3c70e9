"""The wire and the store under a hostile or unlucky neighbour, with real processes and sockets
on 127.0.0.1: floods without the secret, replayed frames and store requests, idle
connections to the data port, a second job on the same port, a fake store, torchrun."""
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from tests.helpers import free_port
from tests.runtime.test_collectives import spawn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Grab(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _grab() -> _Grab:
    grab = _Grab()
    logging.getLogger("runtime.distributed").addHandler(grab)
    return grab


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------
# 1. a stranger floods a rank's mesh port and the store


STRANGER = textwrap.dedent("""
    import os, sys, time, zmq
    ctx = zmq.Context()
    big = b"\\0" * (1 << 20)
    # the mesh twice: without a ZeroMQ login, and with a wrong one
    for addr, kind, login in ((sys.argv[1], zmq.PUSH, False), (sys.argv[1], zmq.PUSH, True),
                              (sys.argv[2], zmq.DEALER, False)):
        for frames, n in (([b"hdr", b"m" * 32], 1500), ([b"hdr", b"m" * 32, big], 1500)):
            s = ctx.socket(kind)
            if login:
                s.plain_username, s.plain_password = b"zgrad", b"guessed"
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.SNDTIMEO, 200)  # a socket whose peer hung up has nowhere to send
            s.connect(addr)
            deadline = time.monotonic() + 2
            for i in range(n):              # zero-copy: the stranger itself stays small
                try:
                    s.send_multipart(frames, copy=len(frames) == 2)
                except zmq.Again:
                    if time.monotonic() > deadline:
                        break
            time.sleep(0.5)                 # let ZeroMQ push what the other side takes
    print("SENT", flush=True)
    os._exit(0)                             # no linger, no context teardown
""")


def _flood(rank, ws):
    os.environ["ZGRAD_HOST_ID"] = f"host{rank}"      # the TCP path: collectives read the mesh
    import runtime.distributed as dist
    grab = _grab()
    dist.init_process_group(timeout=60)
    st = dist.api._state
    dist.barrier()
    before = _rss_bytes()
    if rank == 0:
        out = subprocess.run([sys.executable, "-c", STRANGER, st.world.mesh.endpoints[1],
                              f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}"],
                             capture_output=True, text=True, timeout=60)
        assert "SENT" in out.stdout, out.stderr
        st.store.set("flood/done", b"1")
    else:
        st.store.get("flood/done", 60)      # idle meanwhile: nothing reads the mesh socket
    grown = _rss_bytes() - before
    x = np.array([rank + 1.0])
    dist.all_reduce(x)                     # reads (and refuses) what the stranger left
    y = np.arange(300_001, dtype=np.float32) * (rank + 1)
    dist.all_reduce(y)                     # the ring and the data channel still work
    dist.destroy_process_group()
    refused = [ln for ln in grab.lines if "refused" in ln]
    return grown, float(x[0]), bool(np.array_equal(y, np.arange(300_001, dtype=np.float32) * 3)), \
        refused


def test_stranger_flood_is_bounded_dropped_and_logged_once_per_peer():
    res = spawn(_flood, 2, timeout_s=120, env={"ZGRAD_SECRET": "flood-secret"})
    for grown, x, ring_ok, _ in res:
        assert x == 3.0 and ring_ok
        assert grown < 100 << 20, f"a rank grew by {grown >> 20} MiB"    # unbounded: ~1.5 GiB
    mesh = [ln for ln in res[1][3] if ln.startswith("group 0:")]
    no_login = [ln for ln in mesh if "a client of tcp://127.0.0.1" in ln]
    wrong_login = [ln for ln in mesh if "from 127.0.0.1" in ln]
    store = [ln for ln in res[0][3] if ln.startswith("store:")]
    assert len(mesh) == len(no_login) + len(wrong_login), mesh
    for lines, why in ((no_login, "no ZeroMQ login"), (wrong_login, "login does not match"),
                       (store, "HMAC does not match")):
        # one line when the peer is first refused, one with its count at close: not 1 per message
        assert len(lines) == 2, lines
        assert why in lines[0] and "127.0.0.1" in lines[0] and "ZGRAD_SECRET" in lines[0], lines
        n = int(lines[1].split("refused ")[1].split()[0])
        assert n > 1 and "127.0.0.1" in lines[1], lines


# --------------------------------------------------------------------------------------------
# 2. replayed frames and store requests


def _replay_into_subgroup(rank, ws):
    os.environ["ZGRAD_HOST_ID"] = f"host{rank}"
    import zmq
    import runtime.distributed as dist
    from runtime.distributed import wire, zap
    grab = _grab()
    captured, send_msg = [], wire.send_msg
    if rank == 1:
        def spy(sock, auth, header, payload=None, track=False, flags=0, ctx=b""):
            h = wire.packb(header)          # the exact frames rank 1 puts on the wire
            frames = [h, auth.sign(h, payload, ctx)]
            captured.append(frames + ([bytes(memoryview(payload))] if payload is not None
                                      else []))
            return send_msg(sock, auth, header, payload, track, flags, ctx)
        wire.send_msg = spy
    dist.init_process_group(timeout=30)
    x = np.array([101.0 if rank == 1 else 1.0])
    dist.all_reduce(x)                      # world group: rank 1's frames are captured
    g = dist.new_group([0, 1])              # counters start at 0 again
    if rank == 1:
        wire.send_msg = send_msg
        # the injector holds the secret (another job sharing ZGRAD_SECRET, or a process on the
        # path): it passes the connection gate, so only the MAC's binding can stop it
        s = wire.context().socket(zmq.PUSH)
        zap.gate_client(s, g.mesh.auth.key)
        s.connect(g.mesh.endpoints[0])
        for frames in captured:             # injected before rank 1's own messages
            s.send_multipart(frames)
        s.close(linger=2000)
        time.sleep(0.5)
    y = np.array([rank + 1.0])
    dist.all_reduce(y, group=g)
    dist.destroy_process_group()
    return float(x[0]), float(y[0]), [ln for ln in grab.lines if "refused" in ln]


def test_frames_replayed_from_the_world_into_a_new_group_are_refused():
    res = spawn(_replay_into_subgroup, 2, timeout_s=60, env={"ZGRAD_SECRET": "replay-secret"})
    assert [r[0] for r in res] == [102.0, 102.0]
    assert [r[1] for r in res] == [3.0, 3.0], res        # [102, 3] when the replay is taken
    assert any("group 1" in ln and "HMAC" in ln for ln in res[0][2]), res[0][2]


class _SpySocket:
    """A store client's socket that remembers what it sent."""

    def __init__(self, sock):
        self.sock, self.sent = sock, []

    def send_multipart(self, frames, *a, **k):
        self.sent.append([bytes(f) for f in frames])
        return self.sock.send_multipart(frames, *a, **k)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_replayed_store_requests_are_refused_in_the_same_and_another_store():
    import zmq
    from runtime.distributed import store, wire
    auth = wire.Auth(b"one-secret-for-two-jobs")
    ports = [free_port(), free_port()]
    servers = [store.StoreServer("127.0.0.1", p, auth) for p in ports]
    clients, raw = [], []
    try:
        c = store.StoreClient("127.0.0.1", ports[0], auth, 5)
        clients.append(c)
        c.sock = _SpySocket(c.sock)
        assert c.add("init/joined/1", 1) == 1
        request = c.sock.sent[-1]
        for p in ports:                     # replayed into this job's store, and another's
            d = wire.context().socket(zmq.DEALER)
            raw.append(d)
            d.connect(f"tcp://127.0.0.1:{p}")
            d.send_multipart(request)
            assert d.poll(5000), "the store did not answer the replay"
            assert d.recv_multipart() == [store.REFUSED]
        assert c.add("init/joined/1", 0) == 1                 # not counted twice
        other = store.StoreClient("127.0.0.1", ports[1], auth, 5)
        clients.append(other)
        assert other.check(["init/joined/1"]) == [False]      # not taken by the other job
    finally:
        for s in raw:
            s.close(0)
        for s in clients + servers:
            s.close()


# --------------------------------------------------------------------------------------------
# 3. idle connections to the data port during setup


def _idle_connections(rank, ws):
    import runtime.distributed as dist
    from runtime.distributed import store, transport, wire
    silent = []
    if rank == 1:
        ready = threading.Event()

        def connect_silently():     # a stranger who connects to rank 0's data port, then waits
            c = store.StoreClient("127.0.0.1", int(os.environ["MASTER_PORT"]),
                                  wire.Auth(os.environ["ZGRAD_SECRET"].encode()), 20)
            ep = c.get("g0/ep/0").decode()
            port = int(ep.rsplit("data=", 1)[1])
            silent.extend(socket.create_connection(("127.0.0.1", port)) for _ in range(5))
            c.close()
            ready.set()
        threading.Thread(target=connect_silently, daemon=True).start()
        connect = transport.PeerMesh.connect

        def connect_after_them(self, *a, **k):   # so rank 0 has them in its backlog first
            assert ready.wait(15)
            return connect(self, *a, **k)
        transport.PeerMesh.connect = connect_after_them
    # 5 silent peers at 2 s each would outlast this timeout if handshakes waited in turn
    dist.init_process_group(timeout=8)
    x = np.array([rank + 1.0])
    dist.all_reduce(x)
    dist.destroy_process_group()
    for s in silent:
        s.close()
    return float(x[0])


def test_idle_connections_to_the_data_port_do_not_stall_setup():
    assert spawn(_idle_connections, 2, timeout_s=60,
                 env={"ZGRAD_SECRET": "idle-secret"}) == [3.0, 3.0]


# --------------------------------------------------------------------------------------------
# 4. a second job on the same MASTER_PORT


def _job_rank(rank, port, q):
    os.environ.pop("ZGRAD_SECRET", None)
    import runtime.distributed as dist
    try:
        dist.init_process_group(init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                timeout=20)
        x = np.array([rank + 1.0])
        dist.all_reduce(x)
        dist.destroy_process_group()
        q.put((rank, "ok", float(x[0])))
    except BaseException as e:  # noqa: BLE001
        q.put((rank, type(e).__name__, str(e)))


def test_a_second_job_on_the_same_port_fails_and_leaves_the_first_intact(monkeypatch):
    from runtime.distributed import wire
    monkeypatch.delenv("ZGRAD_SECRET", raising=False)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    port = free_port()
    path = wire.secret_file(port)
    procs = [ctx.Process(target=_job_rank, args=(0, port, q))]          # job A, rank 0
    try:
        procs[0].start()
        deadline = time.monotonic() + 20
        while not os.path.exists(path):
            assert time.monotonic() < deadline and procs[0].is_alive(), "job A did not start"
            time.sleep(0.02)
        with open(path, "rb") as f:
            secret_a = f.read()
        procs.append(ctx.Process(target=_job_rank, args=(0, port, q)))   # job B, rank 0
        procs[1].start()
        rank, kind, msg = q.get(timeout=30)
        assert (rank, kind) == (0, "RuntimeError") and "cannot host the store" in msg, msg
        with open(path, "rb") as f:
            assert f.read() == secret_a, "job B replaced job A's secret"
        procs.append(ctx.Process(target=_job_rank, args=(1, port, q)))   # job A, rank 1
        procs[2].start()
        got = sorted(q.get(timeout=30) for _ in range(2))
        assert got == [(0, "ok", 3.0), (1, "ok", 3.0)], got
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


# --------------------------------------------------------------------------------------------
# 5. a fake store


def _fake_store(port: int, answers: list, stop: threading.Event):
    import zmq
    s = zmq.Context.instance().socket(zmq.ROUTER)
    s.bind(f"tcp://127.0.0.1:{port}")
    try:
        for answer in answers:
            while not s.poll(50):
                if stop.is_set():
                    return
            ident = s.recv_multipart()[0]
            s.send_multipart([ident, *answer])
    finally:
        s.close(0)


@pytest.mark.parametrize("answer, error, match", [
    ([b"\xc1\xff not msgpack"], "StoreError", "not signed with this job's secret"),
    ([b"\x81\xa3err\xa4auth", b""], "StoreError", "not signed"),           # unsigned {"err": ..}
    ([b"\x82\xa1n\x01\xa3err\xa4boom", b"m" * 32], "StoreError", "not signed"),
    ([b"zgrad-store-refused"], "StoreAuthError", "refused this rank"),
], ids=["garbage", "unsigned-error", "forged-mac", "refusal"])
def test_a_fake_store_gives_a_clear_error(answer, error, match):
    from runtime.distributed import store, wire
    port, stop = free_port(), threading.Event()
    t = threading.Thread(target=_fake_store, args=(port, [answer], stop), daemon=True)
    t.start()
    c = store.StoreClient("127.0.0.1", port, wire.Auth(b"s"), 10)
    try:
        with pytest.raises(RuntimeError, match=match) as e:
            c.set("k", b"v")
        assert type(e.value).__name__ == error
    finally:
        stop.set()
        c.close()
        t.join(5)


def test_init_against_a_fake_store_fails_clearly(monkeypatch):
    import runtime.distributed as dist
    monkeypatch.setenv("ZGRAD_SECRET", "fake-store-secret")
    port, stop = free_port(), threading.Event()
    t = threading.Thread(target=_fake_store, args=(port, [[b"\x81\xa3err\xa4auth", b""]], stop),
                         daemon=True)
    t.start()
    try:
        with pytest.raises(RuntimeError, match="not signed with this job's secret.*MASTER_PORT"):
            dist.init_process_group(init_method=f"tcp://127.0.0.1:{port}", rank=1,
                                    world_size=2, timeout=10)
        assert not dist.is_initialized()
    finally:
        stop.set()
        t.join(5)


# --------------------------------------------------------------------------------------------
# 6. torchrun


TORCHRUN_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    import numpy as np
    import runtime.distributed as dist
    dist.init_process_group(timeout=60)
    x = np.array([dist.get_rank() + 1.0])
    dist.all_reduce(x)
    print("RESULT", dist.get_rank(), dist.get_world_size(), x[0], flush=True)
    dist.destroy_process_group()
""")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_script_runs_under_torchrun(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.format(root=ROOT))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ZGRAD_", "MASTER_", "TORCHELASTIC_")) and
           k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK")}
    env["PYTHONPATH"] = ROOT
    port = free_port()
    while not _free(port + 1):       # torchrun's store takes port; zgrad's takes port + 1
        port = free_port()
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(port),
                          str(script)], env=env, capture_output=True, text=True, timeout=120)
    lines = sorted(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT"))
    assert out.returncode == 0 and lines == ["RESULT 0 2 3.0", "RESULT 1 2 3.0"], \
        out.stdout + out.stderr


# --------------------------------------------------------------------------------------------
# payloads of several frames (everything on ZeroMQ)


def _zmq_only_large(rank, ws):
    os.environ["ZGRAD_HOST_ID"] = f"host{rank}"
    os.environ["ZGRAD_DATA_CHANNEL"] = "0"
    import runtime.distributed as dist
    from runtime.distributed import wire
    dist.init_process_group(timeout=30)
    assert not dist.api._state.world.mesh.raw
    n = 2 * wire.FRAME_MAX_BYTES // 4 + 3          # a whole tensor is 3 frames
    x = np.arange(n, dtype=np.float32) + rank
    b = x.copy()
    dist.broadcast(b, src=1)
    outs = [np.empty(n, np.float32) for _ in range(ws)]
    dist.all_gather(outs, x)
    a = x.copy()
    dist.all_reduce(a)
    base = np.arange(n, dtype=np.float32)
    dist.destroy_process_group()
    return (np.array_equal(b, base + 1), all(np.array_equal(o, base + r) for r, o in
                                             enumerate(outs)), np.array_equal(a, 2 * base + 1))


def test_payloads_of_several_frames_arrive_whole():
    assert spawn(_zmq_only_large, 2, timeout_s=60) == [(True, True, True)] * 2
