"""The control link of a peer mesh: signed, counted ZeroMQ messages between group members.

Each member binds one PULL socket and connects one PUSH socket to every other member (see
Note [Peer mesh] in transport.py); only holders of the job secret get through the connection
gate (Note [Connection gate]). Every message is signed for its receiver, its group and
its job (Note [Wire MAC]) and carries a per-(sender, receiver) counter, so within a pair
messages arrive in order, exactly once; they are parked per sender until the mesh asks.
Only the group's communication thread touches these sockets.
"""
from __future__ import annotations

import collections
import os
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import wire, zap

# the largest frame a member sends: a header, or a payload frame (Note [Unauthenticated bytes])
MAX_FRAME_BYTES = wire.FRAME_MAX_BYTES + 4096
_NO_LOGIN = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _heartbeat(sock: zmq.Socket):
    timeout_ms = int(float(os.environ.get("ZGRAD_HEARTBEAT_TIMEOUT_S", "4")) * 1000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, timeout_ms // 4))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)


class ControlLink:
    """ZeroMQ sockets from one member to every other member of a group (ranks 0..size-1)."""

    def __init__(self, size: int, rank: int, auth: wire.Auth, bind_host: str, what: str):
        self.size, self.rank, self.auth, self.what = size, rank, auth, what
        self.refusals = wire.Refusals(what)
        self.pull = wire.context().socket(zmq.PULL)
        wire.limit_socket(self.pull, MAX_FRAME_BYTES)
        self.pull.setsockopt(zmq.LINGER, 0)
        self._domain = zap.gate_server(self.pull, auth.key, self.refusals)
        _heartbeat(self.pull)
        # a client without a login (ZeroMQ's NULL mechanism) fails before the gate's check
        self.pull_monitor = self.pull.get_monitor_socket(_NO_LOGIN)
        self._next_login_check = 0.0
        port = self.pull.bind_to_random_port(f"tcp://{bind_host}")
        self.endpoint = f"tcp://{bind_host}:{port}"
        self.push: dict[int, zmq.Socket] = {}
        self.monitors: dict[zmq.Socket, int] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.pull, zmq.POLLIN)
        self.pending = [collections.deque() for _ in range(size)]
        self.send_count = [0] * size
        self.recv_count = [0] * size
        self.lost: dict[int, float] = {}      # rank -> when its connection dropped
        self.trackers: list = []              # (dst, MessageTracker) of zero-copy frames
        self.aborted: str | None = None       # the first ABORT a peer sent us...
        self.aborted_by: int | None = None    # ...and who sent it
        # see Note [Wire MAC]: what our MACs are bound to, besides the header
        self._bind = b"|".join([b"zgrad-msg", auth.job, what.encode(), b""])
        self._ctx_in = self._bind + str(rank).encode()

    def connect(self, endpoints: list[str]):
        """A PUSH socket (with a monitor for dead-peer detection) to every other member."""
        ctx = wire.context()
        for peer in range(self.size):
            if peer == self.rank:
                continue
            s = ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.LINGER, 2000)
            zap.gate_client(s, self.auth.key)
            _heartbeat(s)
            mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
            self.monitors[mon] = peer
            self.poller.register(mon, zmq.POLLIN)
            s.connect(endpoints[peer])
            self.push[peer] = s

    def send(self, dst: int, header: dict, payload=None, track: bool = False, flags: int = 0):
        """Sign and send `header` (plus sender and counter) and `payload` to `dst`; zero-copy
        frames are tracked in ``trackers`` when `track`."""
        header["src"] = self.rank
        header["n"] = self.send_count[dst]
        self.send_count[dst] += 1
        ctx = self._bind + str(dst).encode()
        for t in wire.send_msg(self.push[dst], self.auth, header, payload, track, flags, ctx):
            self.trackers.append((dst, t))

    def abort(self, message: str):
        """Tell every other member that this group failed, and why (best effort)."""
        for dst in self.push:
            try:
                self.send(dst, {"t": "abort", "msg": message}, flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def poll(self, timeout_ms: int, fds: list):
        """Wait up to timeout_ms for a message, a monitor event or one of `fds` ((fd, event)
        pairs); take the messages and events that arrived."""
        if fds:
            events = dict(zmq.zmq_poll([(s, zmq.POLLIN) for s in [self.pull, *self.monitors]]
                                       + fds, timeout_ms))
        else:
            events = dict(self.poller.poll(timeout_ms))
        if self.pull in events:
            self.drain()
        now = time.monotonic()
        if now > self._next_login_check:    # not polled with the rest: it costs every wait
            self._next_login_check = now + 1.0
            self._count_no_login()
        for mon, peer in self.monitors.items():
            if mon in events:
                while mon.poll(0):
                    ev = recv_monitor_message(mon, zmq.NOBLOCK)
                    if ev["event"] == zmq.EVENT_DISCONNECTED:
                        self.lost.setdefault(peer, time.monotonic())
                    elif ev["event"] == zmq.EVENT_CONNECTED:
                        self.lost.pop(peer, None)

    def _count_no_login(self):
        while self.pull_monitor.poll(0):
            if recv_monitor_message(self.pull_monitor, zmq.NOBLOCK)["event"] & _NO_LOGIN:
                # ZeroMQ does not say who: the count goes under our own address
                self.refusals.refuse(f"a client of {self.endpoint}", "it has no ZeroMQ login "
                                     "(a job secret) for this socket", "connection")

    def drain(self):
        """Take every queued message: verified ones in order into ``pending``, ABORTs into
        ``aborted``; the rest are dropped and counted (Note [Unauthenticated bytes])."""
        while True:
            try:
                got = wire.recv_msg(self.pull, self.auth, self.refusals, self._ctx_in)
            except zmq.Again:
                return
            if got is None:
                continue
            header, payload = got
            src = header.get("src")
            if not isinstance(src, int) or not 0 <= src < self.size or src == self.rank:
                self.refusals.refuse(f"rank {src!r}", "a signed message from no member")
                continue
            if header.get("n") != self.recv_count[src]:
                self.refusals.refuse(f"rank {src}", f"counter {header.get('n')}, expected "
                                     f"{self.recv_count[src]}: replayed or lost")
                continue
            self.recv_count[src] += 1
            if header.get("t") == "abort":
                # raised once we need a message we do not have (see PeerMesh._poll): what the
                # peer sent before it gave up is still consumed in order
                if self.aborted is None:
                    self.aborted = str(header.get("msg"))
                    self.aborted_by = src
                continue
            self.pending[src].append((header, payload))

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
        self._count_no_login()
        self.pull.disable_monitor()
        self.pull_monitor.close(0)
        self.pull.close(0)
        zap.release(self._domain)
        self.refusals.report()
