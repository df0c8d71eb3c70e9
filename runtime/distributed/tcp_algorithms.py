"""Collective algorithms over the peer mesh (TCP), on flat C-contiguous numpy arrays.

Note [Ring and direct]
~~~~~~~~~~~~~~~~~~~~~~
Small messages use *direct* exchange: one round in which every rank sends its data to every
rank that needs it, and reductions apply the inputs in rank order 0, 1, ..., n-1
(latency-optimal for the small groups we run). all_reduce goes direct while a rank would send
at most ``ZGRAD_RING_MIN_BYTES`` (default 1 MiB) in all, i.e. nbytes * (n-1); reduce_scatter
and all_gather (where direct and ring move the same bytes) below n times that.
Large all_reduce / reduce_scatter / all_gather use the *ring*: the array is cut into n
segments; in reduce-scatter step k rank r sends segment (r-k-1) mod n to r+1 and adds segment
(r-k-2) mod n from r-1, so after n-1 steps rank r holds segment r fully reduced; all-gather
then passes the reduced segments around the ring. Segments travel in pieces of
``ZGRAD_RING_PIECE_BYTES`` (default 2 MiB: the best of 256 KiB..4 MiB measured with the
data channel), and a piece is forwarded as soon as it is reduced,
so sending, receiving and adding overlap. The reduction order of every element is fixed by
(n, segment), so results are bitwise identical run to run and on every rank.
Every direct collective (broadcast, gather, scatter, all_to_all, barrier and the small
reductions) is one call of ``TcpRoute._exchange``.
"""
from __future__ import annotations

import os

import numpy as np

from .call import Call, parts_of, reduce_in_rank_order
from .tcp_p2p import P2P

RING_MIN_BYTES = int(os.environ.get("ZGRAD_RING_MIN_BYTES", 1 << 20))
PIECE_BYTES = int(os.environ.get("ZGRAD_RING_PIECE_BYTES", 2 << 20))
_AG = 1 << 20   # step tags of the all-gather phase


def bounds(numel: int, n: int) -> list[tuple[int, int]]:
    """Split [0, numel) into n nearly equal contiguous segments."""
    q, r = divmod(numel, n)
    out, lo = [], 0
    for i in range(n):
        hi = lo + q + (1 if i < r else 0)
        out.append((lo, hi))
        lo = hi
    return out


def _pieces(lo: int, hi: int, itemsize: int) -> list[tuple[int, int]]:
    step = max(1, PIECE_BYTES // itemsize)
    if hi <= lo:
        return [(lo, lo)]
    return [(a, min(a + step, hi)) for a in range(lo, hi, step)]


def _tag(step: int, piece: int) -> int:
    return (step << 24) | piece


class TcpRoute(P2P):
    """Every collective over one PeerMesh (group ranks 0..n-1), ring or direct, and the
    point-to-point messages of the group (see Note [Point-to-point])."""

    @property
    def n(self) -> int:
        return self.mesh.size

    @property
    def me(self) -> int:
        return self.mesh.rank

    def _exchange(self, call: Call, deadline: float, sends: dict, recvs: dict) -> dict:
        """The direct exchange: send sends[peer] (an array, or None for an empty message) to
        every peer in `sends`, then receive from every peer in `recvs`, in rank order, and
        wait until our sends have left. recvs[peer] is the destination array, or (count, dtype)
        for a reusable scratch buffer, or None for an empty message. Returns what arrived."""
        mesh, w = self.mesh, call.wire()
        for peer, payload in sends.items():
            mesh.send(peer, w, 0, payload)
        got, order = {}, sorted(recvs)
        for i, peer in enumerate(order):
            spec, waiting = recvs[peer], order[i:]
            if spec is None:
                got[peer] = self._recv(peer, w, 0, deadline, waiting)
            elif isinstance(spec, np.ndarray):
                got[peer] = self._recv(peer, w, 0, deadline, waiting, spec.dtype, spec.size,
                                       out=spec)
            else:
                got[peer] = self._recv(peer, w, 0, deadline, waiting, spec[1], spec[0],
                                       scratch=("part", peer))
        mesh.flush(w, deadline)
        return got

    def _others(self) -> list[int]:
        return [p for p in range(self.n) if p != self.me]

    # -- the ring --------------------------------------------------------------------------

    def _ring_reduce_scatter(self, call, x: np.ndarray, segs, ufunc, deadline):
        """In place on flat x: afterwards x[segs[r]] on rank r holds the reduction over ranks."""
        mesh, w, n, r = self.mesh, call.wire(), self.n, self.me
        right, left = (r + 1) % n, (r - 1) % n
        for p, (a, b) in enumerate(_pieces(*segs[(r - 1) % n], x.itemsize)):
            mesh.send(right, w, _tag(0, p), x[a:b])
        scratch = mesh.scratch("piece", min(x.size, max(1, PIECE_BYTES // x.itemsize)), x.dtype)
        for k in range(n - 1):
            for p, (a, b) in enumerate(_pieces(*segs[(r - k - 2) % n], x.itemsize)):
                buf = self._recv(left, w, _tag(k, p), deadline, dtype=x.dtype, count=b - a,
                                 out=scratch[:b - a])
                # the order of every element's reduction is fixed by (n, segment)
                ufunc(buf, x[a:b], out=x[a:b])
                if k < n - 2:
                    mesh.send(right, w, _tag(k + 1, p), x[a:b])

    def _ring_all_gather(self, call, x: np.ndarray, segs, deadline):
        """In place on flat x: rank r contributes x[segs[r]]; afterwards every rank has all."""
        mesh, w, n, r = self.mesh, call.wire(), self.n, self.me
        right, left = (r + 1) % n, (r - 1) % n
        for p, (a, b) in enumerate(_pieces(*segs[r], x.itemsize)):
            mesh.send(right, w, _tag(_AG, p), x[a:b])
        for k in range(n - 1):
            for p, (a, b) in enumerate(_pieces(*segs[(r - k - 1) % n], x.itemsize)):
                self._recv(left, w, _tag(_AG + k, p), deadline, dtype=x.dtype, count=b - a,
                           out=x[a:b])
                if k < n - 2:
                    mesh.send(right, w, _tag(_AG + k + 1, p), x[a:b])

    # -- collectives -----------------------------------------------------------------------

    def all_reduce(self, call: Call, x: np.ndarray, ufunc, deadline: float):
        """In place on flat x: the reduction of x over all members, the same bits on every rank."""
        n = self.n
        if n == 1:
            return
        if x.nbytes * (n - 1) <= RING_MIN_BYTES or x.size < n:
            got = self._exchange(call, deadline, {p: x for p in self._others()},
                                 {p: (x.size, x.dtype) for p in self._others()})
            got[self.me] = x
            out = self.mesh.scratch("acc", x.size, x.dtype)
            x[...] = reduce_in_rank_order(ufunc, [got[p] for p in range(n)], out)
            return
        segs = bounds(x.size, n)
        self._ring_reduce_scatter(call, x, segs, ufunc, deadline)
        self._ring_all_gather(call, x, segs, deadline)
        self.mesh.flush(call.wire(), deadline)

    def reduce(self, call: Call, x: np.ndarray, ufunc, root: int, deadline: float):
        """x on `root` = the reduction (x elsewhere is scratch): all_reduce's fast paths, and
        the root's result has all_reduce's bits."""
        self.all_reduce(call, x, ufunc, deadline)

    def reduce_scatter(self, call: Call, ins: list, out: np.ndarray, ufunc, deadline):
        """out on rank r = the reduction over ranks of their ins[r] (n flat arrays)."""
        n, me, m = self.n, self.me, out.size
        if n == 1:
            out[...] = ins[0]
        elif m * out.itemsize * n < RING_MIN_BYTES * n:
            got = self._exchange(call, deadline, {p: ins[p] for p in self._others()},
                                 {p: (m, out.dtype) for p in self._others()})
            got[me] = ins[me]
            reduce_in_rank_order(ufunc, [got[p] for p in range(n)], out)
        else:
            x = self.mesh.scratch("rs", n * m, out.dtype)   # the ring works in place
            for p in range(n):
                x[p * m:(p + 1) * m] = ins[p]
            self._ring_reduce_scatter(call, x, bounds(x.size, n), ufunc, deadline)
            out[...] = x[me * m:(me + 1) * m]
            self.mesh.flush(call.wire(), deadline)

    def all_gather(self, call: Call, x: np.ndarray, outs: list, deadline: float):
        """outs[r] = the x of rank r (outs: n flat arrays of x.size, or one of n * x.size)."""
        n, me, m = self.n, self.me, x.size
        flat = outs if isinstance(outs, np.ndarray) else None
        outs = parts_of(outs, n, m)
        outs[me][...] = x
        if n == 1:
            return
        if x.nbytes * n < RING_MIN_BYTES * n:
            self._exchange(call, deadline, {p: x for p in self._others()},
                           {p: outs[p] for p in self._others()})
            return
        # the ring passes segments of one array: the output's own when it is one
        buf = flat if flat is not None else self.mesh.scratch("ag", n * m, x.dtype)
        if flat is None:
            buf[me * m:(me + 1) * m] = x
        self._ring_all_gather(call, buf, bounds(buf.size, n), deadline)
        self.mesh.flush(call.wire(), deadline)
        if flat is None:
            for p in self._others():
                outs[p][...] = buf[p * m:(p + 1) * m]

    def broadcast(self, call: Call, x: np.ndarray, root: int, deadline: float):
        """In place on flat x: every rank gets root's x."""
        if self.me == root:
            self._exchange(call, deadline, {p: x for p in self._others()}, {})
        else:
            self._exchange(call, deadline, {}, {root: x})

    def gather(self, call: Call, x: np.ndarray, outs: list | None, root: int, deadline):
        """outs[r] (flat arrays, on root only) = x of rank r."""
        if self.me != root:
            self._exchange(call, deadline, {root: x}, {})
            return
        outs[root][...] = x
        self._exchange(call, deadline, {}, {p: outs[p] for p in self._others()})

    def scatter(self, call: Call, x: np.ndarray, ins: list | None, root: int, deadline):
        """x (flat) on rank r = ins[r] from root."""
        if self.me != root:
            self._exchange(call, deadline, {}, {root: x})
            return
        x[...] = ins[root]
        self._exchange(call, deadline, {p: ins[p] for p in self._others()}, {})

    def all_to_all(self, call: Call, ins: list, outs: list, deadline: float):
        """outs[p] on rank r = ins[r] of rank p (flat arrays; sizes as agreed by the caller)."""
        outs[self.me][...] = ins[self.me]
        self._exchange(call, deadline, {p: ins[p] for p in self._others()},
                       {p: outs[p] for p in self._others()})

    def barrier(self, call: Call, deadline: float):
        """Return once every member has entered the barrier."""
        self._exchange(call, deadline, dict.fromkeys(self._others()),
                       dict.fromkeys(self._others()))
