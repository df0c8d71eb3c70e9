"""Point-to-point links between the members of one process group, with desync, timeout and
dead-peer detection.

Note [Peer mesh]
~~~~~~~~~~~~~~~~
Each member binds one PULL socket (loopback, or the interface that reaches MASTER_ADDR) and
publishes its endpoint in the store; it connects one PUSH socket to every other member. Only
the group's communication thread touches these sockets. Per (sender, receiver) pair messages
arrive in order, and every algorithm is deterministic, so the next message from `src` is
exactly the one the receiver expects next; messages from other senders are parked per sender.

Note [Desync check]
~~~~~~~~~~~~~~~~~~~
Every data message carries the sender's call: (sequence number, collective, reduce op, dtype,
shape, root). The receiver compares it with its own call; on a mismatch it raises
``DesyncError`` naming both calls and sends an ABORT message carrying the same text to every
member, which raise it too, wherever they wait. (On one host the shared-memory path checks
the calls of all ranks at its first barrier, see Note [Shm reduce].) A collective in which a
rank only sends (the root of broadcast/scatter) learns of a mismatch at its next receive.

Dead peers: every PUSH socket has a ZeroMQ monitor (a peer process that dies closes its TCP
connections: DISCONNECTED) and ZMTP heartbeats (a cut link: no PONG within
``ZGRAD_HEARTBEAT_TIMEOUT_S``, default 4s, also DISCONNECTED); peers on this host are also
checked by pid. A rank waiting on a message from a peer lost for over ``_LOST_GRACE_S`` (a
peer that exits normally may still have messages in flight on its other connection) raises
``PeerLostError`` and ABORTs the others. Every wait has a deadline; the TimeoutError names the
ranks whose messages did not arrive.

Note [Data channel]
~~~~~~~~~~~~~~~~~~~
Payloads of at least ``RAW_MIN_BYTES`` (``ZGRAD_DATA_MIN_BYTES``, default 64 KiB) bypass
ZeroMQ: its I/O thread and the hand-off to the application cost more than the copy itself
on a loaded machine. Every member also listens on a plain TCP socket (same interface, its
port published with the ZeroMQ endpoint as ``tcp://host:port data=PORT``) and opens one TCP
connection to every other member. A connection starts with a hello: magic, (src, dst) group
ranks, a 16-byte random nonce and HMAC-SHA256 over all of it plus the group's name and the
listener's published address, with the job secret; the listener accepts one authenticated
connection per peer, logs and closes anything else, and is closed once every peer is in. If
any member published no data port (``ZGRAD_DATA_CHANNEL=0`` there), every member keeps all
payloads on ZeroMQ. A forked child closes its copies of the data connections (so peers still
see them close when this process dies).

A large message is its header (with ``"raw": nbytes``), sent and authenticated over ZeroMQ
as every message (so the desync check, the counters and the size check are unchanged), and
its payload bytes on the data connection to that peer, in the same order. The receiver reads
them straight into their destination (``recv(out=)``: the ring's all-gather writes into the
tensor itself, reduce-scatter into one reused piece buffer), so a payload is copied by the
kernel and never by us. Payloads, as large ZeroMQ payloads by default, are not MAC'd;
``ZGRAD_AUTH_PAYLOAD=1`` (every payload MAC'd) keeps everything on ZeroMQ, and so does
``ZGRAD_DATA_CHANNEL=0``.

Sends never block: a payload is queued per destination (a memoryview of the caller's
array, no copy) and pushed with non-blocking ``send`` whenever this thread waits on
anything (the receive loop, ``flush``), so two ranks that send to each other before they
receive cannot deadlock on full socket buffers. ``flush`` (end of every collective) waits
until every queued byte is in the kernel, so the caller may reuse its tensor. Waits keep the
ZeroMQ poll: deadlines, ABORTs and dead-peer detection work as for ZeroMQ messages, and a
data connection that closes (or fails a send) while we need it reports the peer as lost
after ``_LOST_GRACE_S``, unless an ABORT from it arrives first: a peer that failed for
another reason (say, a third rank died) closes its connections right after telling us why,
and its reason is the one every rank reports.
"""
from __future__ import annotations

import collections
import errno
import hmac
import os
import secrets
import socket
import struct
import time
import weakref

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from shm import pid_alive

from . import wire

_POLL_MS = 50
_LOST_GRACE_S = 0.5
RAW_MIN_BYTES = int(os.environ.get("ZGRAD_DATA_MIN_BYTES", 64 * 1024))
_HELLO = struct.Struct(">4sII16s32s")
_MAGIC = b"ZGD1"
_SOCKBUF = int(os.environ.get("ZGRAD_DATA_SOCKBUF", 4 << 20))   # 0: kernel autotuning


def _bind_listener(family, host: str) -> socket.socket:
    """A TCP socket bound to a random free port above the kernel's ephemeral range, so it
    cannot take a port that another job (or a test's free_port()) just got from bind(0)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[1]) + 1
    except (OSError, ValueError, IndexError):
        lo = 61000
    lo = min(max(lo, 49152), 65000)
    for _ in range(100):
        try:
            sock.bind((host, secrets.randbelow(65536 - lo) + lo))
            return sock
        except OSError as e:
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                sock.close()
                raise
    sock.bind((host, 0))
    return sock


_MESHES: "weakref.WeakSet[PeerMesh]" = weakref.WeakSet()


def _close_raw_in_child():
    # a forked child (a DataLoader worker) must not hold our data connections open: a peer
    # would not see them close when this process dies (Note [Data channel], dead peers)
    for mesh in list(_MESHES):
        for s in [*mesh.raw_out.values(), *mesh.raw_in.values()]:
            try:
                s.close()
            except OSError:
                pass
        mesh.raw_out, mesh.raw_in, mesh.outq = {}, {}, {}
    _MESHES.clear()


os.register_at_fork(after_in_child=_close_raw_in_child)


def _data_channel_enabled(auth: wire.Auth) -> bool:
    return os.environ.get("ZGRAD_DATA_CHANNEL", "1") != "0" and not auth.payload_always


class DesyncError(RuntimeError):
    """Ranks called different collectives (or the same one with different arguments)."""


class PeerLostError(RuntimeError):
    """A peer process died or its network link went down."""


class AbortedError(RuntimeError):
    """Another rank failed this collective and told us why."""


def describe(call: list) -> str:
    """'all_reduce(SUM, float32, shape=[3, 4]) #7' from a call descriptor."""
    seq, name, op, dtype, shape, root = call
    args = [a for a in (op, dtype) if a]
    if shape is not None:
        args.append(f"shape={list(shape)}")
    if root is not None:
        args.append(f"root={root}")
    return f"{name}({', '.join(args)}) #{seq}"


class PeerMesh:
    """Links from this member to every other member of a group (group ranks 0..n-1)."""

    def __init__(self, size: int, rank: int, global_ranks: list[int], auth: wire.Auth,
                 bind_host: str, what: str):
        self.size, self.rank, self.global_ranks = size, rank, global_ranks
        self.auth, self.what = auth, what
        ctx = wire.context()
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, 0)
        self.pull.setsockopt(zmq.LINGER, 0)
        self._heartbeat(self.pull)
        port = self.pull.bind_to_random_port(f"tcp://{bind_host}")
        self.endpoint = f"tcp://{bind_host}:{port}"
        self.push: dict[int, zmq.Socket] = {}
        self.monitors: dict[zmq.Socket, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)
        self.pending = [collections.deque() for _ in range(size)]
        self.send_count = [0] * size
        self.recv_count = [0] * size
        self.lost: dict[int, float] = {}
        self.endpoints: list[str] = []
        self.local_pids: dict[int, int] = {}   # group rank -> pid, peers on this machine
        self.trackers: list = []
        self.aborted: str | None = None      # the first ABORT a peer sent us
        # data channel (see Note [Data channel])
        self.raw = _data_channel_enabled(auth)
        self.listener: socket.socket | None = None
        self.raw_out: dict[int, socket.socket] = {}
        self.raw_in: dict[int, socket.socket] = {}
        self.outq: dict[int, collections.deque] = {}
        self.send_failed: dict[int, str] = {}
        self.raw_closed: dict[int, tuple[float, str]] = {}   # rank -> (when, how)
        self.published = self.endpoint
        self._scratch: dict = {}
        if self.raw:
            fam = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
            self.listener = _bind_listener(fam, bind_host.strip("[]"))
            self.listener.listen(max(8, size))
            self.listener.setblocking(False)
            self.published = f"{self.endpoint} data={self.listener.getsockname()[1]}"

    @staticmethod
    def _heartbeat(sock):
        timeout_ms = int(float(os.environ.get("ZGRAD_HEARTBEAT_TIMEOUT_S", "4")) * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, timeout_ms // 4))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)

    def connect(self, endpoints: list[str], local_pids: dict[int, int], timeout_s: float = 60.0):
        """Connect a PUSH socket (with a monitor) to every other member's published endpoint,
        and (see Note [Data channel]) a data connection, authenticated, in both directions."""
        published = list(endpoints)
        endpoints = [e.split(" data=")[0] for e in published]
        self.endpoints = endpoints
        self.local_pids = local_pids
        if self.raw and not all(" data=" in e for e in published):
            self._close_raw()          # a peer without a data channel: everything on ZeroMQ
        self._connect_zmq(endpoints)
        if self.raw:
            self._connect_raw(published, time.monotonic() + timeout_s)

    def _hello_mac(self, src: int, dst: int, nonce: bytes, dst_published: str) -> bytes:
        msg = b"|".join([b"zgrad-data", self.what.encode(), dst_published.encode(),
                         struct.pack(">II", src, dst), nonce])
        return hmac.digest(self.auth.key, msg, "sha256")

    @staticmethod
    def _tune(sock: socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _SOCKBUF > 0:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)

    def _connect_raw(self, published: list[str], deadline: float):
        # outgoing first: a connect completes in the peer's listen backlog and the hello fits
        # its socket buffer, so nobody waits for anybody to accept
        for peer in range(self.size):
            if peer == self.rank:
                continue
            host = published[peer].split("tcp://", 1)[1].rsplit(":", 1)[0].strip("[]")
            port = int(published[peer].rsplit(" data=", 1)[1])
            try:
                s = socket.create_connection((host, port),
                                             timeout=max(0.1, deadline - time.monotonic()))
            except OSError as e:
                raise ConnectionError(f"{self.what}: rank {self.grank(self.rank)} could not open "
                                      f"the data connection to rank {self.grank(peer)} at "
                                      f"{host}:{port}: {e}") from e
            self._tune(s)
            nonce = secrets.token_bytes(16)
            s.sendall(_HELLO.pack(_MAGIC, self.rank, peer, nonce,
                                  self._hello_mac(self.rank, peer, nonce, published[peer])))
            s.setblocking(False)
            self.raw_out[peer] = s
            self.outq[peer] = collections.deque()
        while len(self.raw_in) < self.size - 1:
            now = time.monotonic()
            if now > deadline:
                missing = [self.grank(r) for r in range(self.size)
                           if r != self.rank and r not in self.raw_in]
                raise TimeoutError(f"{self.what}: rank {self.grank(self.rank)} timed out waiting "
                                   f"for the data connections of ranks {missing}")
            try:
                conn, addr = self.listener.accept()
            except BlockingIOError:
                zmq.select([self.listener], [], [], min(0.05, max(0.001, deadline - now)))
                continue
            self._accept_hello(conn, addr, deadline)
        self.listener.close()        # every peer is connected: take no more connections
        self.listener = None
        _MESHES.add(self)

    def _accept_hello(self, conn: socket.socket, addr, deadline: float):
        try:
            conn.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
            data = b""
            while len(data) < _HELLO.size:
                chunk = conn.recv(_HELLO.size - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError:
            data = b""
        ok = len(data) == _HELLO.size
        if ok:
            magic, src, dst, nonce, mac = _HELLO.unpack(data)
            ok = (magic == _MAGIC and dst == self.rank and 0 <= src < self.size
                  and src != self.rank and src not in self.raw_in
                  and hmac.compare_digest(mac, self._hello_mac(src, dst, nonce,
                                                               self.published)))
        if not ok:
            wire.log.warning("%s: refused a data connection from %s: its hello does not match "
                             "the job secret (a peer without %s, or a stray connection)",
                             self.what, addr, wire.SECRET_ENV)
            conn.close()
            return
        self._tune(conn)
        conn.setblocking(False)
        self.raw_in[src] = conn

    def _connect_zmq(self, endpoints: list[str]):
        ctx = wire.context()
        for peer in range(self.size):
            if peer == self.rank:
                continue
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.LINGER, 2000)
            self._heartbeat(s)
            mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
            self.monitors[mon] = peer
            self.poller.register(mon, zmq.POLLIN)
            s.connect(endpoints[peer])
            self.push[peer] = s

    def scratch(self, key, count: int, dtype) -> np.ndarray:
        """A reusable buffer of `count` elements of `dtype` for receiving (one per `key`).
        Fresh large arrays cost a page fault per 4 KiB on first touch, more than the transfer
        of a piece: receive and reduction buffers are kept and reused, grown as needed."""
        nbytes = count * np.dtype(dtype).itemsize
        buf = self._scratch.get(key)
        if buf is None or buf.nbytes < nbytes:
            buf = self._scratch[key] = np.empty(max(nbytes, 1), np.uint8)
        return buf[:nbytes].view(dtype)

    def grank(self, r: int) -> int:
        return self.global_ranks[r]

    # -- sending ---------------------------------------------------------------------------

    def send(self, dst: int, call: list, step: int, payload: np.ndarray | None = None):
        """Send one message of `call` to group rank `dst` (zero-copy for large payloads)."""
        header = {"t": "d", "src": self.rank, "n": self.send_count[dst], "c": call, "k": step}
        self.send_count[dst] += 1
        buf = None
        if payload is not None:
            buf = memoryview(np.ascontiguousarray(payload)).cast("B")
            if buf.nbytes >= RAW_MIN_BYTES and dst in self.raw_out:
                header["raw"] = buf.nbytes       # the bytes follow on the data connection
                wire.send_msg(self.push[dst], self.auth, header)
                self.outq[dst].append(buf)
                self._push(dst)
                return
            header["nb"] = buf.nbytes
        tracker = wire.send_msg(self.push[dst], self.auth, header, buf, track=True)
        if tracker is not None:
            self.trackers.append((dst, tracker))

    def _push(self, dst: int):
        """Write what the kernel takes of the queue to `dst` without blocking."""
        q, sock = self.outq[dst], self.raw_out[dst]
        while q:
            buf = q[0]
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # the peer is gone: flush reports it (the waits also see the monitor or pid)
                self.send_failed.setdefault(dst, f"its data connection failed ({e})")
                return
            if sent == buf.nbytes:
                q.popleft()
            else:
                q[0] = buf[sent:]
                return

    def _push_all(self):
        for dst, q in self.outq.items():
            if q:
                self._push(dst)

    def flush(self, call: list, deadline: float):
        """Wait until every payload we sent has left our buffers: ZeroMQ released every
        zero-copy frame (see Note [Framing]) and the data connections took every queued byte."""
        for dst, q in self.outq.items():
            while q:
                self._push(dst)
                if dst in self.send_failed:
                    self.raw_closed.setdefault(dst, (time.monotonic(), self.send_failed[dst]))
                    self._poll(call, [dst], deadline, block_ms=10, must=dst)
                elif q:
                    self._poll(call, [dst], deadline)
        for dst, tracker in self.trackers:
            while not tracker.done:
                try:
                    tracker.wait(0.05)      # wakes as soon as ZeroMQ lets go of the buffer
                except zmq.NotDone:
                    self._poll(call, [dst], deadline, block_ms=0)
        self.trackers.clear()

    def sent(self) -> bool:
        """Push queued payloads without waiting; True once every payload sent so far has left
        our buffers (``flush`` would return at once). For sends that complete later (isend)."""
        self._push_all()
        for dst, q in self.outq.items():
            if q and dst in self.send_failed:
                self.raw_closed.setdefault(dst, (time.monotonic(), self.send_failed[dst]))
        if any(self.outq.values()):
            return False
        self.trackers = [(d, t) for d, t in self.trackers if not t.done]
        return not self.trackers

    def heads(self) -> dict:
        """{src: header} of the next message of every sender that has one, not consumed (for
        receives that pick among senders and tags, and collectives that step over them)."""
        return {s: q[0][0] for s, q in enumerate(self.pending) if q}

    def poll(self, call: list, waiting: list[int], deadline: float, block_ms: int = 0):
        """Take what arrived, waiting up to `block_ms` for traffic (pushing queued sends
        meanwhile); the deadline, ABORTs and lost peers among `waiting` are checked as in
        recv."""
        self._poll(call, waiting, deadline, block_ms=block_ms)

    def abort(self, message: str):
        """Tell every other member that this group failed, and why (best effort)."""
        for dst, s in self.push.items():
            header = {"t": "abort", "src": self.rank, "n": self.send_count[dst], "msg": message}
            self.send_count[dst] += 1
            try:
                wire.send_msg(s, self.auth, header, flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    # -- receiving -------------------------------------------------------------------------

    def recv(self, src: int, call: list, step: int, deadline: float, waiting=None,
             dtype=None, count: int | None = None, out: np.ndarray | None = None,
             scratch=None):
        """The next message from group rank `src`, checked against our `call`.

        Returns the payload as a 1-d array of `dtype` (a view of the received frame, or `out`
        when given: a C-contiguous array of `count` elements the payload is written into) or
        None. A data-channel payload without `out` lands in ``self.scratch(scratch, ...)``
        when `scratch` (a key) is given, else in a fresh array. `waiting` lists the ranks
        still expected in this phase, for the timeout message.
        """
        q = self.pending[src]
        while not q:
            self._poll(call, waiting or [src], deadline)
        header, payload = q.popleft()
        if header["c"] != call:
            msg = (f"{call[1]}: collectives out of step: rank {self.grank(self.rank)} called "
                   f"{describe(call)} but rank {self.grank(src)} called {describe(header['c'])}. "
                   "Every rank of a group must call the same collectives in the same order "
                   "with matching dtype and shape.")
            self.abort(msg)
            raise DesyncError(msg)
        if header["k"] != step:
            raise RuntimeError(f"{call[1]}: internal protocol error: expected step {step} from "
                               f"rank {self.grank(src)}, got {header['k']}")
        raw = header.get("raw")
        if payload is None and raw is None:
            return None
        if raw is not None and (not isinstance(raw, int) or raw < 0 or payload is not None):
            raise RuntimeError(f"{call[1]}: internal protocol error: rank {self.grank(src)} "
                               f"announced a data-channel payload of {raw!r} bytes")
        nbytes = raw if raw is not None else payload.nbytes
        itemsize = np.dtype(dtype).itemsize
        if count is not None and nbytes != count * itemsize:
            msg = (f"{call[1]}: rank {self.grank(src)} sent {nbytes // itemsize} elements where "
                   f"rank {self.grank(self.rank)} expected {count} ({describe(call)}).")
            self.abort(msg)
            raise DesyncError(msg)
        if raw is None:
            arr = np.frombuffer(payload, dtype=dtype)
            if out is None:
                return arr
            out[...] = arr
            return out
        if out is None:
            out = np.empty(nbytes // itemsize, dtype) if scratch is None else \
                self.scratch(scratch, nbytes // itemsize, dtype)
        self._read_raw(src, memoryview(out).cast("B"), call, deadline)
        return out

    def _read_raw(self, src: int, mv: memoryview, call: list, deadline: float):
        """Fill `mv` from the data connection of `src`, pushing our own sends meanwhile."""
        sock, got, total = self.raw_in.get(src), 0, mv.nbytes
        if sock is None:
            msg = (f"{call[1]}: internal protocol error: rank {self.grank(src)} sent a payload "
                   "on a data connection this rank does not have")
            self.abort(msg)
            raise RuntimeError(msg)
        while got < total:
            if src in self.raw_closed:
                # the connection ended: an ABORT the peer sent before it closed still wins;
                # after _LOST_GRACE_S _check_lost reports the peer as lost
                self._push_all()
                self._poll(call, [src], deadline, block_ms=10, must=src)
                continue
            try:
                n = sock.recv_into(mv[got:])
            except (BlockingIOError, InterruptedError):
                n = None
            except OSError as e:
                self.raw_closed.setdefault(src, (time.monotonic(),
                                                 f"its data connection failed ({e})"))
                continue
            if n == 0:
                self.raw_closed.setdefault(src, (time.monotonic(), "its data connection closed"))
                continue
            if n:
                got += n
                self._push_all()
                continue
            self._push_all()
            self._poll(call, [src], deadline, raw_src=src)

    def _poll(self, call: list, waiting: list[int], deadline: float, block_ms: int = _POLL_MS,
              raw_src: int | None = None, must: int | None = None):
        """Wait (up to block_ms) for a message, a monitor event or, on the data connections,
        bytes from `raw_src` or room for our queued sends; then take what arrived."""
        if self.aborted is not None:
            raise AbortedError(self.aborted)
        now = time.monotonic()
        if now > deadline:
            missing = [self.grank(r) for r in waiting if not self.pending[r] or r == raw_src]
            raise TimeoutError(
                f"{call[1]}: rank {self.grank(self.rank)} timed out in {describe(call)}: ranks "
                f"{missing} did not arrive. They may be stuck in other work, have crashed (see "
                "their logs), or not have called it; or raise the timeout of "
                "init_process_group/new_group.")
        timeout_ms = min(block_ms, max(1, int((deadline - now) * 1000)))
        extra = [(sock, zmq.POLLOUT) for dst, sock in self.raw_out.items() if self.outq[dst]]
        if raw_src is not None:
            extra.append((self.raw_in[raw_src], zmq.POLLIN))
        if extra:
            events = dict(zmq.zmq_poll([(s, zmq.POLLIN) for s in [self.pull, *self.monitors]]
                                       + [(s.fileno(), f) for s, f in extra], timeout_ms))
        else:
            events = dict(self.poller.poll(timeout_ms))
        if self.pull in events:
            self._drain()
        for mon, peer in self.monitors.items():
            if mon in events:
                while mon.poll(0):
                    ev = recv_monitor_message(mon, zmq.NOBLOCK)
                    if ev["event"] == zmq.EVENT_DISCONNECTED:
                        self.lost.setdefault(peer, time.monotonic())
                    elif ev["event"] == zmq.EVENT_CONNECTED:
                        self.lost.pop(peer, None)
        if extra:
            self._push_all()
        if self.aborted is not None:      # a peer's reason beats our guess that it is lost
            raise AbortedError(self.aborted)
        self._check_lost(call, waiting, raw_src if must is None else must)

    def _drain(self):
        while True:
            try:
                got = wire.recv_msg(self.pull, self.auth, self.what)
            except zmq.Again:
                return
            if got is None:
                continue
            header, payload = got
            src = header.get("src")
            if not isinstance(src, int) or not 0 <= src < self.size or src == self.rank:
                continue
            if header.get("n") != self.recv_count[src]:
                wire.log.warning("%s: refused a message from rank %d with counter %s (expected "
                                 "%d): replayed or lost", self.what, self.grank(src),
                                 header.get("n"), self.recv_count[src])
                continue
            self.recv_count[src] += 1
            if header.get("t") == "abort":
                # raised once we need a message we do not have (see _poll): what the peer sent
                # before it gave up is still consumed in order
                if self.aborted is None:
                    self.aborted = f"{header['msg']} [reported by rank {self.grank(src)}]"
                continue
            self.pending[src].append((header, payload))

    def _check_lost(self, call: list, waiting: list[int], raw_src: int | None = None):
        now = time.monotonic()
        for r in waiting:
            if self.pending[r] and r != raw_src:
                continue
            pid = self.local_pids.get(r)
            dead = pid is not None and not pid_alive(pid)
            since = self.lost.get(r)
            closed = self.raw_closed.get(r)
            if dead or (since is not None and now - since > _LOST_GRACE_S):
                how = f"its process (pid {pid}) died" if dead else \
                    (f"its connection ({self.endpoints[r]}) dropped: the process died or the "
                     "network link is down")
            elif closed is not None and now - closed[0] > _LOST_GRACE_S:
                how = f"{closed[1]}: the process died or the network link is down"
            else:
                continue
            msg = (f"{call[1]}: rank {self.grank(r)} was lost during {describe(call)}: "
                   f"{how}. See that rank's log for the cause.")
            self.abort(msg)
            raise PeerLostError(msg)

    def close(self):
        # Order matters (a monitor left attached stalls the context's I/O thread, a monitor
        # closed before disable_monitor() blocks it): drain, disable, close the monitor, then
        # the socket.
        for mon, peer in self.monitors.items():
            while mon.poll(0):
                mon.recv_multipart(zmq.NOBLOCK)
            self.push[peer].disable_monitor()
            mon.close(0)
        for s in self.push.values():
            s.close()
        self.pull.close(0)
        self._close_raw()

    def _close_raw(self):
        for s in [*self.raw_out.values(), *self.raw_in.values(), self.listener]:
            if s is not None:
                s.close()
        self.raw_out.clear()
        self.raw_in.clear()
        self.outq.clear()
        self.listener = None
        self.raw = False
