"""Point-to-point links between the members of one process group, with desync, timeout and
dead-peer detection: the PeerMesh composes a ControlLink (ZeroMQ messages, control.py) and a
DataChannel (bulk payload bytes over plain TCP, data_channel.py).

Note [Peer mesh]
~~~~~~~~~~~~~~~~
Each member binds one PULL socket (loopback, or the interface that reaches MASTER_ADDR) and
publishes its endpoint in the store (with its data channel's port, see Note [Data channel]);
it connects one PUSH socket to every other member, through the connection gate (Note
[Connection gate]). Only the group's communication thread touches these sockets (the
ControlLink holds them, the DataChannel the raw TCP connections; the mesh composes the two
and owns the waiting, the desync check and dead-peer detection). Per (sender, receiver) pair messages
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

Sends never block (see Note [Data channel]); ``flush`` (end of every collective) waits
until every queued byte is in the kernel and ZeroMQ let go of every zero-copy frame, so the
caller may reuse its tensor. Waits keep the ZeroMQ poll: deadlines, ABORTs and dead-peer
detection work as for ZeroMQ messages, and a data connection that closes (or fails a send)
while we need it reports the peer as lost after ``_LOST_GRACE_S``, unless an ABORT from it
arrives first: a peer that failed for another reason (say, a third rank died) closes its
connections right after telling us why, and its reason is the one every rank reports.
"""
from __future__ import annotations

import time

import numpy as np
import zmq

from shm import pid_alive

from . import wire
from .control import ControlLink
from .data_channel import RAW_MIN_BYTES, DataChannel, enabled as _data_channel_enabled

__all__ = ["PeerMesh", "DesyncError", "PeerLostError", "AbortedError", "describe",
           "RAW_MIN_BYTES"]

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


class PeerMesh:
    """Links from this member to every other member of a group (group ranks 0..n-1)."""

    def __init__(self, size: int, rank: int, global_ranks: list[int], auth: wire.Auth,
                 bind_host: str, what: str):
        self.size, self.rank, self.global_ranks = size, rank, global_ranks
        self.auth, self.what = auth, what
        self.control = ControlLink(size, rank, auth, bind_host, what)
        self.endpoint = self.control.endpoint
        self.data = DataChannel(size, rank, auth, bind_host, what) \
            if _data_channel_enabled(auth) else None
        self.published = self.endpoint if self.data is None else \
            f"{self.endpoint} data={self.data.port}"
        self.endpoints: list[str] = []
        self.local_pids: dict[int, int] = {}   # group rank -> pid, peers on this machine
        self._scratch: dict = {}

    @property
    def pending(self) -> list:
        """Per sender, the verified messages not yet taken by recv (the control link's)."""
        return self.control.pending

    @property
    def raw(self) -> bool:
        """Whether large payloads travel on the data channel."""
        return self.data is not None

    def connect(self, endpoints: list[str], local_pids: dict[int, int], timeout_s: float = 60.0):
        """Connect to every other member's published endpoint: the control link, and (see
        Note [Data channel]) a data connection, authenticated, in both directions."""
        published = list(endpoints)
        self.endpoints = [e.split(" data=")[0] for e in published]
        self.local_pids = local_pids
        if self.data is not None and not all(" data=" in e for e in published):
            self.data.close()          # a peer without a data channel: everything on ZeroMQ
            self.data = None
        self.control.connect(self.endpoints)
        if self.data is not None:
            self.data.connect(published, time.monotonic() + timeout_s, self.grank)

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
        header = {"t": "d", "c": call, "k": step}
        if payload is None:
            self.control.send(dst, header)
            return
        buf = memoryview(np.ascontiguousarray(payload)).cast("B")
        if buf.nbytes >= RAW_MIN_BYTES and self.data is not None:
            header["raw"] = buf.nbytes       # the bytes follow on the data connection
            self.control.send(dst, header)
            self.data.enqueue(dst, buf)
            return
        header["nb"] = buf.nbytes
        self.control.send(dst, header, buf, track=True)

    def flush(self, call: list, deadline: float):
        """Wait until every payload we sent has left our buffers: ZeroMQ released every
        zero-copy frame (see Note [Framing]) and the data connections took every queued byte."""
        data = self.data
        for dst, q in (data.outq.items() if data is not None else ()):
            while q:
                data.push(dst)
                if dst in data.send_failed:
                    data.closed.setdefault(dst, (time.monotonic(), data.send_failed[dst]))
                    self._poll(call, [dst], deadline, block_ms=10, must=dst)
                elif q:
                    self._poll(call, [dst], deadline)
        for dst, tracker in self.control.trackers:
            while not tracker.done:
                try:
                    tracker.wait(0.05)      # wakes as soon as ZeroMQ lets go of the buffer
                except zmq.NotDone:
                    self._poll(call, [dst], deadline, block_ms=0)
        self.control.trackers.clear()

    def sent(self) -> bool:
        """Push queued payloads without waiting; True once every payload sent so far has left
        our buffers (``flush`` would return at once). For sends that complete later (isend)."""
        data, ctl = self.data, self.control
        if data is not None:
            data.push_all()
            for dst, q in data.outq.items():
                if q and dst in data.send_failed:
                    data.closed.setdefault(dst, (time.monotonic(), data.send_failed[dst]))
            if any(data.outq.values()):
                return False
        ctl.trackers = [(d, t) for d, t in ctl.trackers if not t.done]
        return not ctl.trackers

    def heads(self) -> dict:
        """{src: header} of the next message of every sender that has one, not consumed (for
        receives that pick among senders and tags, and collectives that step over them)."""
        return {s: q[0][0] for s, q in enumerate(self.control.pending) if q}

    def poll(self, call: list, waiting: list[int], deadline: float, block_ms: int = 0):
        """Take what arrived, waiting up to `block_ms` for traffic (pushing queued sends
        meanwhile); the deadline, ABORTs and lost peers among `waiting` are checked as in
        recv."""
        self._poll(call, waiting, deadline, block_ms=block_ms)

    def abort(self, message: str):
        """Tell every other member that this group failed, and why (best effort)."""
        self.control.abort(message)

    # -- receiving -------------------------------------------------------------------------

    def recv(self, src: int, call: list, step: int, deadline: float, waiting=None,
             dtype=None, count: int | None = None, out: np.ndarray | None = None,
             scratch=None):
        """The next message from group rank `src`, checked against our `call`.

        Returns the payload as a 1-d array of `dtype` (a view of the received frame, or `out`
        when given: a C-contiguous array of `count` elements the payload is written into) or
        None. A payload that is not one frame (the data channel's, or several frames) lands,
        without `out`, in ``self.scratch(scratch, ...)`` when `scratch` (a key) is given,
        else in a fresh array. `waiting` lists the ranks still expected in this phase, for
        the timeout message.
        """
        q = self.control.pending[src]
        while not q:
            self._poll(call, waiting or [src], deadline)
        header, payload = q.popleft()
        if header["c"] != call:
            self._fail(DesyncError, f"{call[1]}: collectives out of step: rank "
                       f"{self.grank(self.rank)} called {describe(call)} but rank "
                       f"{self.grank(src)} called {describe(header['c'])}. Every rank of a "
                       "group must call the same collectives in the same order with matching "
                       "dtype and shape.")
        if header["k"] != step:
            raise RuntimeError(f"{call[1]}: internal protocol error: expected step {step} from "
                               f"rank {self.grank(src)}, got {header['k']}")
        raw = header.get("raw")
        if payload is None and raw is None:
            return None
        if raw is not None and (not isinstance(raw, int) or raw < 0 or payload is not None
                                or self.data is None):
            self._fail(RuntimeError, f"{call[1]}: internal protocol error: rank "
                       f"{self.grank(src)} announced a data-channel payload of {raw!r} bytes")
        nbytes = raw if raw is not None else header["nb"]
        itemsize = np.dtype(dtype).itemsize
        if count is not None and nbytes != count * itemsize:
            self._fail(DesyncError, f"{call[1]}: rank {self.grank(src)} sent "
                       f"{nbytes // itemsize} elements where rank {self.grank(self.rank)} "
                       f"expected {count} ({describe(call)}).")
        if raw is None and not isinstance(payload, list):
            arr = np.frombuffer(payload, dtype=dtype)
            if out is None:
                return arr
            out[...] = arr
            return out
        if out is None:
            out = np.empty(nbytes // itemsize, dtype) if scratch is None else \
                self.scratch(scratch, nbytes // itemsize, dtype)
        mv = memoryview(out).cast("B")
        if raw is None:                     # several frames (Note [Unauthenticated bytes])
            at = 0
            for part in payload:
                mv[at:at + part.nbytes] = part
                at += part.nbytes
        else:
            self._read_raw(src, mv, call, deadline)
        return out

    def _fail(self, kind, msg: str):
        self.abort(msg)
        raise kind(msg)

    def _read_raw(self, src: int, mv: memoryview, call: list, deadline: float):
        """Fill `mv` from the data connection of `src`, pushing our own sends meanwhile."""
        data, got, total = self.data, 0, mv.nbytes
        while got < total:
            if src in data.closed:
                # the connection ended: an ABORT the peer sent before it closed still wins;
                # after _LOST_GRACE_S _check_lost reports the peer as lost
                data.push_all()
                self._poll(call, [src], deadline, block_ms=10, must=src)
                continue
            n = data.recv_some(src, mv[got:])
            if n:
                got += n
            data.push_all()
            if n is None:
                self._poll(call, [src], deadline, raw_src=src)

    def _poll(self, call: list, waiting: list[int], deadline: float, block_ms: int = _POLL_MS,
              raw_src: int | None = None, must: int | None = None):
        """Wait (up to block_ms) for a message, a monitor event or, on the data connections,
        bytes from `raw_src` or room for our queued sends; then take what arrived."""
        ctl = self.control
        self._raise_aborted()
        now = time.monotonic()
        if now > deadline:
            missing = [self.grank(r) for r in waiting if not ctl.pending[r] or r == raw_src]
            raise TimeoutError(
                f"{call[1]}: rank {self.grank(self.rank)} timed out in {describe(call)}: ranks "
                f"{missing} did not arrive. They may be stuck in other work, have crashed (see "
                "their logs), or not have called it; or raise the timeout of "
                "init_process_group/new_group.")
        timeout_ms = min(block_ms, max(1, int((deadline - now) * 1000)))
        fds = self.data.waiting_fds(raw_src) if self.data is not None else []
        ctl.poll(timeout_ms, fds)
        if fds:
            self.data.push_all()
        self._raise_aborted()          # a peer's reason beats our guess that it is lost
        self._check_lost(call, waiting, raw_src if must is None else must)

    def _raise_aborted(self):
        if self.control.aborted is not None:
            raise AbortedError(f"{self.control.aborted} [reported by rank "
                               f"{self.grank(self.control.aborted_by)}]")

    def _check_lost(self, call: list, waiting: list[int], raw_src: int | None = None):
        now = time.monotonic()
        for r in waiting:
            if self.control.pending[r] and r != raw_src:
                continue
            pid = self.local_pids.get(r)
            dead = pid is not None and not pid_alive(pid)
            since = self.control.lost.get(r)
            closed = self.data.closed.get(r) if self.data is not None else None
            if dead or (since is not None and now - since > _LOST_GRACE_S):
                how = f"its process (pid {pid}) died" if dead else \
                    (f"its connection ({self.endpoints[r]}) dropped: the process died or the "
                     "network link is down")
            elif closed is not None and now - closed[0] > _LOST_GRACE_S:
                how = f"{closed[1]}: the process died or the network link is down"
            else:
                continue
            self._fail(PeerLostError, f"{call[1]}: rank {self.grank(r)} was lost during "
                       f"{describe(call)}: {how}. See that rank's log for the cause.")

    def close(self):
        self.control.close()
        if self.data is not None:
            self.data.close()
