"""The bulk data channel of a peer mesh: one plain TCP connection per ordered pair of members.

Note [Data channel]
~~~~~~~~~~~~~~~~~~~
Payloads of at least ``RAW_MIN_BYTES`` (``ZGRAD_DATA_MIN_BYTES``, default 64 KiB) bypass
ZeroMQ: its I/O thread and the hand-off to the application cost more than the copy itself
on a loaded machine. Every member also listens on a plain TCP socket (same interface, its
port published with the ZeroMQ endpoint as ``tcp://host:port data=PORT``) and opens one TCP
connection to every other member. A connection starts with a hello: magic, (src, dst) group
ranks, a 16-byte random nonce and HMAC-SHA256 over all of it plus the job id, the group's
name and the listener's published address, with the job secret. The listener accepts one
authenticated connection per peer and closes anything else; it is closed once every peer is
in. Handshakes never wait on each other: accepted connections are read without blocking,
side by side, each with its own deadline (``_HELLO_TIMEOUT_S``), so idle connections from a
stranger cannot stall setup; at most ``_MAX_PENDING`` wait at once (the oldest is dropped).
If any member published no data port (``ZGRAD_DATA_CHANNEL=0`` there), every member keeps
all payloads on ZeroMQ. A forked child closes its copies of the data connections (so peers
still see them close when this process dies).

A large message is its header (with ``"raw": nbytes``), sent and authenticated over ZeroMQ
as every message (so the desync check, the counters and the size check are unchanged), and
its payload bytes on the data connection to that peer, in the same order. The receiver reads
them straight into their destination, so a payload is copied by the kernel and never by us.
Payloads, as large ZeroMQ payloads by default, are not MAC'd; ``ZGRAD_AUTH_PAYLOAD=1``
(every payload MAC'd) keeps everything on ZeroMQ, and so does ``ZGRAD_DATA_CHANNEL=0``.

Sends never block: a payload is queued per destination (a memoryview of the caller's
array, no copy) and pushed with non-blocking ``send`` whenever the mesh waits on anything,
so two ranks that send to each other before they receive cannot deadlock on full socket
buffers. A connection that closes or fails is recorded in ``closed`` (when, how); the mesh
decides when that means the peer is lost (see Note [Peer mesh]).
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

import zmq

from . import wire

RAW_MIN_BYTES = int(os.environ.get("ZGRAD_DATA_MIN_BYTES", 64 * 1024))
_HELLO = struct.Struct(">4sII16s32s")
_MAGIC = b"ZGD1"
_SOCKBUF = int(os.environ.get("ZGRAD_DATA_SOCKBUF", 4 << 20))   # 0: kernel autotuning
_HELLO_TIMEOUT_S = 2.0
_MAX_PENDING = 64


def enabled(auth: wire.Auth) -> bool:
    """Whether this process offers a data channel (see Note [Data channel])."""
    return os.environ.get("ZGRAD_DATA_CHANNEL", "1") != "0" and not auth.payload_always


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


def _tune(sock: socket.socket):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if _SOCKBUF > 0:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, _SOCKBUF)


_CHANNELS: "weakref.WeakSet[DataChannel]" = weakref.WeakSet()


def _close_in_child():
    # a forked child (a DataLoader worker) must not hold our data connections open: a peer
    # would not see them close when this process dies (Note [Data channel])
    for ch in list(_CHANNELS):
        ch.close(report=False)
    _CHANNELS.clear()


os.register_at_fork(after_in_child=_close_in_child)


class _Pending:
    """An accepted connection whose hello has not fully arrived yet."""
    __slots__ = ("conn", "addr", "data", "deadline")

    def __init__(self, conn, addr, deadline):
        self.conn, self.addr, self.data, self.deadline = conn, addr, b"", deadline


class DataChannel:
    """Raw TCP connections to and from every other member, for bulk payload bytes."""

    def __init__(self, size: int, rank: int, auth: wire.Auth, bind_host: str, what: str):
        self.size, self.rank, self.auth, self.what = size, rank, auth, what
        fam = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self.listener: socket.socket | None = _bind_listener(fam, bind_host.strip("[]"))
        self.listener.listen(max(8, size))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.published = ""              # our published address, set by connect()
        self.out: dict[int, socket.socket] = {}
        self.inp: dict[int, socket.socket] = {}
        self.outq: dict[int, collections.deque] = {}
        self.send_failed: dict[int, str] = {}
        self.closed: dict[int, tuple[float, str]] = {}   # rank -> (when, how)
        self.refusals = wire.Refusals(f"{what} data channel")

    def _hello_mac(self, src: int, dst: int, nonce: bytes, dst_published: str) -> bytes:
        msg = b"|".join([b"zgrad-data", self.auth.job, self.what.encode(),
                         dst_published.encode(), struct.pack(">II", src, dst), nonce])
        return hmac.digest(self.auth.key, msg, "sha256")

    # -- setup -----------------------------------------------------------------------------

    def connect(self, published: list[str], deadline: float, grank=lambda r: r):
        """Open an authenticated connection to every other member and accept theirs."""
        self.published = published[self.rank]
        # outgoing first: a connect completes in the peer's listen backlog and the hello fits
        # its socket buffer, so nobody waits for anybody to accept
        for peer in range(self.size):
            if peer != self.rank:
                self._connect_out(peer, published[peer], deadline, grank)
        pending: list[_Pending] = []
        while len(self.inp) < self.size - 1:
            now = time.monotonic()
            if now > deadline:
                missing = [grank(r) for r in range(self.size)
                           if r != self.rank and r not in self.inp]
                for p in pending:
                    p.conn.close()
                raise TimeoutError(f"{self.what}: rank {grank(self.rank)} timed out waiting "
                                   f"for the data connections of ranks {missing}")
            self._accept_all(pending, deadline)
            pending = [p for p in pending if not self._advance(p, now)]
            wait = min([deadline] + [p.deadline for p in pending]) - now
            zmq.select([self.listener] + [p.conn for p in pending], [], [],
                       min(0.05, max(0.001, wait)))
        for p in pending:
            p.conn.close()
        self.listener.close()        # every peer is connected: take no more connections
        self.listener = None
        self.refusals.report()
        _CHANNELS.add(self)

    def _connect_out(self, peer: int, peer_published: str, deadline: float, grank):
        host = peer_published.split("tcp://", 1)[1].rsplit(":", 1)[0].strip("[]")
        port = int(peer_published.rsplit(" data=", 1)[1])
        try:
            s = socket.create_connection((host, port),
                                         timeout=max(0.1, deadline - time.monotonic()))
        except OSError as e:
            raise ConnectionError(f"{self.what}: rank {grank(self.rank)} could not open the "
                                  f"data connection to rank {grank(peer)} at {host}:{port}: "
                                  f"{e}") from e
        _tune(s)
        nonce = secrets.token_bytes(16)
        s.sendall(_HELLO.pack(_MAGIC, self.rank, peer, nonce,
                              self._hello_mac(self.rank, peer, nonce, peer_published)))
        s.setblocking(False)
        self.out[peer] = s
        self.outq[peer] = collections.deque()

    def _accept_all(self, pending: list[_Pending], deadline: float):
        while True:
            try:
                conn, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            if len(pending) >= _MAX_PENDING:
                old = pending.pop(0)
                self.refusals.refuse(old.addr[0], "too many connections without a hello",
                                     "data connection")
                old.conn.close()
            pending.append(_Pending(conn, addr,
                                    min(deadline, time.monotonic() + _HELLO_TIMEOUT_S)))

    def _advance(self, p: _Pending, now: float) -> bool:
        """Read what arrived of p's hello; True once p is settled (accepted or refused)."""
        try:
            chunk = p.conn.recv(_HELLO.size - len(p.data))
        except (BlockingIOError, InterruptedError):
            chunk = None
        except OSError:
            chunk = b""
        if chunk:
            p.data += chunk
        if len(p.data) < _HELLO.size:
            if chunk == b"" or now > p.deadline:
                self._refuse(p, "no complete hello" if chunk == b"" else
                             f"no hello within {_HELLO_TIMEOUT_S:.0f}s")
                return True
            return False
        magic, src, dst, nonce, mac = _HELLO.unpack(p.data)
        if not (magic == _MAGIC and dst == self.rank and 0 <= src < self.size
                and src != self.rank and src not in self.inp
                and hmac.compare_digest(mac, self._hello_mac(src, dst, nonce, self.published))):
            self._refuse(p, "its hello does not match the job secret")
            return True
        _tune(p.conn)
        self.inp[src] = p.conn
        return True

    def _refuse(self, p: _Pending, why: str):
        self.refusals.refuse(p.addr[0], why, "data connection")
        p.conn.close()

    # -- sending ---------------------------------------------------------------------------

    def enqueue(self, dst: int, buf: memoryview):
        """Queue `buf` (no copy) for `dst` and push what the kernel takes now."""
        self.outq[dst].append(buf)
        self.push(dst)

    def push(self, dst: int):
        """Write what the kernel takes of the queue to `dst` without blocking."""
        q, sock = self.outq[dst], self.out[dst]
        while q:
            buf = q[0]
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # the peer is gone: the mesh reports it (the waits also see the monitor or pid)
                self.send_failed.setdefault(dst, f"its data connection failed ({e})")
                return
            if sent == buf.nbytes:
                q.popleft()
            else:
                q[0] = buf[sent:]
                return

    def push_all(self):
        for dst, q in self.outq.items():
            if q:
                self.push(dst)

    def waiting_fds(self, src: int | None) -> list:
        """(fd, event) pairs the mesh polls: room on connections with queued bytes, and
        bytes from `src`."""
        fds = [(s.fileno(), zmq.POLLOUT) for dst, s in self.out.items() if self.outq[dst]]
        if src is not None:
            fds.append((self.inp[src].fileno(), zmq.POLLIN))
        return fds

    # -- receiving -------------------------------------------------------------------------

    def recv_some(self, src: int, mv: memoryview) -> int | None:
        """Read what is there from `src` into `mv`: bytes read, or None when nothing was;
        a connection that ended is recorded in ``closed`` (and reads 0)."""
        try:
            n = self.inp[src].recv_into(mv)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            self.closed.setdefault(src, (time.monotonic(), f"its data connection failed ({e})"))
            return 0
        if n == 0:
            self.closed.setdefault(src, (time.monotonic(), "its data connection closed"))
        return n

    def close(self, report: bool = True):
        for s in [*self.out.values(), *self.inp.values(), self.listener]:
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.out.clear()
        self.inp.clear()
        self.outq.clear()
        self.listener = None
        if report:
            self.refusals.report()
