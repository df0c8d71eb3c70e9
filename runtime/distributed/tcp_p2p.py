"""Point-to-point messages (send, recv, isend, irecv) over a group's peer mesh.

Note [Point-to-point]
~~~~~~~~~~~~~~~~~~~~~
A message is one mesh message whose call is ``send(tag=T, dtype, shape) #k`` (k counts this
rank's point-to-point calls) and whose step is the tag; payloads of 64 KiB and more take the
data channel, as collectives' do (Note [Data channel]). Between two ranks messages keep their
order; a receive takes the first message of its source (any source when src is None) with
its tag, as MPI and torch.distributed match.

Same-host ranks use this TCP mesh too, not a shared-memory slot: a message has one sender
and one receiver that meet at no common barrier, and any-source receives and tags need
matching against whatever arrived. The mesh already queues every sender's messages apart,
bounds every wait, detects lost peers, and carries a payload with one kernel copy into the
destination; a shared-memory version would need a second flow-controlled ring per pair and a
second matching engine for one copy less. Collectives keep shared memory.

Sends and receives are *posted* on the communication thread (Note [Communication thread])
and finish later: an isend finishes once its bytes have left our buffers (``mesh.sent()``),
an irecv once a matching message has been read into its tensor. The thread drives posted
work between calls and while idle, so ``isend(right); recv(left)`` on every rank of a ring,
or an irecv posted before the isend it waits for, cannot deadlock on full socket buffers or
on each other. A message that reaches a rank before its receive is posted waits in the mesh's
queue, except when it blocks another message that a posted receive or a running collective
needs: then it is read into a private buffer (the stash) and matched from there later.
Every received message is checked: a dtype or element count different from the receiver's
tensor is a DesyncError naming both sides.
"""
from __future__ import annotations

import time

import numpy as np

from .call import Call
from .transport import DesyncError, PeerMesh

P2P_NAME = "send"


class _Recv:
    __slots__ = ("call", "src", "staged", "work", "deadline")

    def __init__(self, call, src, staged, work, deadline):
        self.call, self.src, self.staged, self.work = call, src, staged, work
        self.deadline = deadline

    def wants(self, src: int, tag: int) -> bool:
        return self.src in (None, src) and self.call.tag == tag


class P2P:
    """The point-to-point half of a group's TCP route (see Note [Point-to-point])."""

    def __init__(self, mesh: PeerMesh):
        self.mesh = mesh
        self.sends: list = []          # (work, dst, flat kept alive, call, deadline)
        self.recvs: list[_Recv] = []   # posted, in post order
        self.stash: list = []          # (src, header, payload) read ahead of their receive

    def _recv(self, src: int, w: list, step: int, deadline: float, waiting=None, *args, **kw):
        """mesh.recv for a collective, stepping over point-to-point messages ahead of it."""
        mesh = self.mesh
        while True:
            head = mesh.heads().get(src)
            if head is None:
                mesh.poll(w, waiting or [src], deadline, 50)
            elif head["c"][1] != P2P_NAME:
                return mesh.recv(src, w, step, deadline, waiting, *args, **kw)
            else:
                self._stash_head(src, head, deadline)

    def _stash_head(self, src: int, head: dict, deadline: float):
        payload = self.mesh.recv(src, head["c"], head["k"], deadline, None, head["c"][3])
        self.stash.append((src, head, payload))

    # -- posting and progress (communication thread) ---------------------------------------

    def post_send(self, call: Call, dst: int, flat: np.ndarray, work, deadline: float):
        self.mesh.send(dst, call.wire(), call.tag, flat)
        self.sends.append((work, dst, flat, call, deadline))

    def post_recv(self, call: Call, src: int | None, staged, work, deadline: float):
        self.recvs.append(_Recv(call, src, staged, work, deadline))

    def pending(self) -> bool:
        return bool(self.sends or self.recvs)

    def progress(self, block_ms: int) -> bool:
        """Drive posted sends and receives, waiting up to block_ms for traffic when nothing
        moved; returns whether some are left."""
        if not self.pending():
            return False
        # what already finished goes first: it must not fail on a peer that has since left
        moved = self._step()
        if self.pending():
            ops = [(r.deadline, r.call) for r in self.recvs] + [(d, c) for *_, c, d in self.sends]
            deadline, call = min(ops, key=lambda o: o[0])
            # lost peers are checked for named sources and destinations; a receive from any
            # rank waits for its deadline (one sender leaving does not fail it)
            waiting = sorted({r.src for r in self.recvs if r.src is not None} |
                             {s[1] for s in self.sends})
            self._check_late()
            self.mesh.poll(call.wire(), waiting, deadline, 0 if moved else block_ms)
            self._step()
        self._check_late()
        return self.pending()

    def _step(self) -> bool:
        """Match what arrived and finish the sends that left; whether anything moved."""
        moved = False
        while self.recvs and self._match_one():
            moved = True
        if self.sends and self.mesh.sent():
            for send in self.sends:
                send[0]._finish(None, None)
            self.sends.clear()
            moved = True
        return moved

    def _sources(self, r: _Recv) -> list[int]:
        me = self.mesh.rank
        return [p for p in range(self.mesh.size) if p != me] if r.src is None else [r.src]

    def _match_one(self) -> bool:
        """Deliver one message to a posted receive (or stash one in the way); False if none."""
        for i, (src, head, payload) in enumerate(self.stash):
            r = next((r for r in self.recvs if r.wants(src, head["k"])), None)
            if r is not None:
                del self.stash[i]
                self._deliver(r, src, head, payload)
                return True
        for src, head in self.mesh.heads().items():
            if head["c"][1] != P2P_NAME:
                continue          # a collective's message: the collective will take it
            r = next((r for r in self.recvs if r.wants(src, head["k"])), None)
            if r is not None:
                self._deliver(r, src, head, None)
                return True
            if any(src in self._sources(r) for r in self.recvs):
                self._stash_head(src, head, min(r.deadline for r in self.recvs))
                return True
        return False

    def _check_late(self):
        now = time.monotonic()
        for _, dst, _, call, deadline in self.sends:
            if now > deadline:
                raise TimeoutError(
                    f"send: rank {self.mesh.grank(self.mesh.rank)} timed out in {call}: rank "
                    f"{self.mesh.grank(dst)} did not receive it. It may be stuck in other "
                    "work, have crashed (see its log), or not have posted the recv; or raise "
                    "the timeout of init_process_group/new_group.")
        late = [r for r in self.recvs if now > r.deadline]
        if late:
            srcs = sorted({self.mesh.grank(p) for r in late for p in self._sources(r)})
            raise TimeoutError(
                f"recv: rank {self.mesh.grank(self.mesh.rank)} timed out in {late[0].call}: no "
                f"message with tag {late[0].call.tag} arrived from ranks {srcs}. They may be "
                "stuck in other work, have crashed (see their logs), or not have sent it; or "
                "raise the timeout of init_process_group/new_group.")
    def _deliver(self, r: _Recv, src: int, head: dict, payload):
        """Read (or copy from the stash) the message into r's tensor, checked, and finish r."""
        sent = head["c"]
        flat = r.staged.flat
        numel = int(np.prod(sent[4], dtype=np.int64)) if sent[4] is not None else -1
        if sent[3] != flat.dtype.name or numel != flat.size:
            theirs = str(Call(sent[0], P2P_NAME, None, sent[3],
                              None if sent[4] is None else tuple(sent[4]), tag=head["k"]))
            raise DesyncError(
                f"recv: rank {self.mesh.grank(self.mesh.rank)} posted {r.call} but rank "
                f"{self.mesh.grank(src)} sent {theirs}: the receiving tensor must have the "
                "sender's dtype and number of elements.")
        if payload is None:
            self.mesh.recv(src, sent, head["k"], r.deadline, None, flat.dtype, flat.size,
                           out=flat)
        else:
            flat[...] = payload
        self.recvs.remove(r)       # only now: a receive that failed fails with the group
        r.staged.write_back()
        r.work._finish(None, self.mesh.grank(src))

    def fail_posted(self, exc: BaseException):
        """Finish every posted send and receive with `exc` (the group is broken)."""
        for send in self.sends:
            send[0]._finish(exc)
        for r in self.recvs:
            r.work._finish(exc)
        self.sends.clear()
        self.recvs.clear()
