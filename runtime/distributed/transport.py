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
"""
from __future__ import annotations

import collections
import os
import time

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import wire

_POLL_MS = 50
_LOST_GRACE_S = 0.5


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


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


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

    @staticmethod
    def _heartbeat(sock):
        timeout_ms = int(float(os.environ.get("ZGRAD_HEARTBEAT_TIMEOUT_S", "4")) * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, max(100, timeout_ms // 4))
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, timeout_ms)

    def connect(self, endpoints: list[str], local_pids: dict[int, int]):
        """Connect a PUSH socket (with a monitor) to every other member's endpoint."""
        self.endpoints = endpoints
        self.local_pids = local_pids
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
            header["nb"] = buf.nbytes
        tracker = wire.send_msg(self.push[dst], self.auth, header, buf, track=True)
        if tracker is not None:
            self.trackers.append((dst, tracker))

    def flush(self, call: list, deadline: float):
        """Wait until ZeroMQ has released every zero-copy buffer we sent (see Note [Framing])."""
        for dst, tracker in self.trackers:
            while not tracker.done:
                try:
                    tracker.wait(0.05)      # wakes as soon as ZeroMQ lets go of the buffer
                except zmq.NotDone:
                    self._poll(call, [dst], deadline, block_ms=0)
        self.trackers.clear()

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
             dtype=None, count: int | None = None):
        """The next message from group rank `src`, checked against our `call`.

        Returns the payload as a 1-d array of `dtype` (a view of the received frame) or None.
        `waiting` lists the ranks still expected in this phase, for the timeout message.
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
        if payload is None:
            return None
        arr = np.frombuffer(payload, dtype=dtype)
        if count is not None and arr.size != count:
            msg = (f"{call[1]}: rank {self.grank(src)} sent {arr.size} elements where rank "
                   f"{self.grank(self.rank)} expected {count} ({describe(call)}).")
            self.abort(msg)
            raise DesyncError(msg)
        return arr

    def _poll(self, call: list, waiting: list[int], deadline: float, block_ms: int = _POLL_MS):
        if self.aborted is not None:
            raise AbortedError(self.aborted)
        now = time.monotonic()
        if now > deadline:
            missing = [self.grank(r) for r in waiting if not self.pending[r]]
            raise TimeoutError(
                f"{call[1]}: rank {self.grank(self.rank)} timed out in {describe(call)}: ranks "
                f"{missing} did not arrive. They may be stuck in other work, have crashed (see "
                "their logs), or not have called it; or raise the timeout of "
                "init_process_group/new_group.")
        events = dict(self.poller.poll(min(block_ms, max(1, int((deadline - now) * 1000)))))
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
        self._check_lost(call, waiting)

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

    def _check_lost(self, call: list, waiting: list[int]):
        now = time.monotonic()
        for r in waiting:
            if self.pending[r]:
                continue
            pid = self.local_pids.get(r)
            dead = pid is not None and not pid_alive(pid)
            since = self.lost.get(r)
            if dead or (since is not None and now - since > _LOST_GRACE_S):
                how = f"its process (pid {pid}) died" if dead else \
                    (f"its connection ({self.endpoints[r]}) dropped: the process died or the "
                     "network link is down")
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
