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
"""
from __future__ import annotations

import os

import numpy as np

from .transport import PeerMesh

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


def ring_reduce_scatter(mesh: PeerMesh, call, x: np.ndarray, segs, ufunc, deadline):
    """In place on flat x: afterwards x[segs[r]] on rank r holds the reduction over ranks."""
    n, r = mesh.size, mesh.rank
    right, left = (r + 1) % n, (r - 1) % n
    for p, (a, b) in enumerate(_pieces(*segs[(r - 1) % n], x.itemsize)):
        mesh.send(right, call, _tag(0, p), x[a:b])
    scratch = mesh.scratch("piece", min(x.size, max(1, PIECE_BYTES // x.itemsize)), x.dtype)
    for k in range(n - 1):
        for p, (a, b) in enumerate(_pieces(*segs[(r - k - 2) % n], x.itemsize)):
            buf = mesh.recv(left, call, _tag(k, p), deadline, dtype=x.dtype, count=b - a,
                            out=scratch[:b - a])
            ufunc(buf, x[a:b], out=x[a:b])
            if k < n - 2:
                mesh.send(right, call, _tag(k + 1, p), x[a:b])


def ring_all_gather(mesh: PeerMesh, call, x: np.ndarray, segs, deadline):
    """In place on flat x: rank r contributes x[segs[r]]; afterwards every rank has all."""
    n, r = mesh.size, mesh.rank
    right, left = (r + 1) % n, (r - 1) % n
    for p, (a, b) in enumerate(_pieces(*segs[r], x.itemsize)):
        mesh.send(right, call, _tag(_AG, p), x[a:b])
    for k in range(n - 1):
        for p, (a, b) in enumerate(_pieces(*segs[(r - k - 1) % n], x.itemsize)):
            mesh.recv(left, call, _tag(_AG + k, p), deadline, dtype=x.dtype, count=b - a,
                      out=x[a:b])
            if k < n - 2:
                mesh.send(right, call, _tag(_AG + k + 1, p), x[a:b])


def all_reduce(mesh: PeerMesh, call, x: np.ndarray, ufunc, deadline):
    """In place on flat x: the reduction of x over all members, the same bits on every rank."""
    n = mesh.size
    if n == 1:
        return
    if x.nbytes * (n - 1) <= RING_MIN_BYTES or x.size < n:
        _direct_all_reduce(mesh, call, x, ufunc, deadline)
    else:
        segs = bounds(x.size, n)
        ring_reduce_scatter(mesh, call, x, segs, ufunc, deadline)
        ring_all_gather(mesh, call, x, segs, deadline)
    mesh.flush(call, deadline)


def _direct_all_reduce(mesh, call, x, ufunc, deadline):
    me = mesh.rank
    for peer in range(mesh.size):
        if peer != me:
            mesh.send(peer, call, 0, x)
    parts = []
    for peer in range(mesh.size):
        if peer == me:
            parts.append(x)
        else:
            waiting = [q for q in range(peer, mesh.size) if q != me]
            parts.append(mesh.recv(peer, call, 0, deadline, waiting, x.dtype, x.size,
                                   scratch=("part", peer)))
    # x may still be in flight zero-copy: reduce into a scratch buffer, then copy back
    mesh.flush(call, deadline)
    out = mesh.scratch("acc", x.size, x.dtype)
    ufunc(parts[0], parts[1], out=out)
    for part in parts[2:]:
        ufunc(out, part, out=out)
    x[...] = out


def reduce_scatter(mesh: PeerMesh, call, x: np.ndarray, out: np.ndarray, ufunc, deadline):
    """out (flat, x.size // n) on rank r = reduction over ranks of segment r of flat x.
    x is used as scratch (pass a copy)."""
    n, me = mesh.size, mesh.rank
    segs = bounds(x.size, n)
    if n == 1:
        out[...] = x
        return
    if x.nbytes < RING_MIN_BYTES * n:
        for peer in range(n):
            if peer != me:
                mesh.send(peer, call, 0, x[segs[peer][0]:segs[peer][1]])
        a, b = segs[me]
        parts = []
        for peer in range(n):
            if peer == me:
                parts.append(x[a:b])
            else:
                waiting = [q for q in range(peer, n) if q != me]
                parts.append(mesh.recv(peer, call, 0, deadline, waiting, x.dtype, b - a,
                                       scratch=("part", peer)))
        ufunc(parts[0], parts[1], out=out)
        for part in parts[2:]:
            ufunc(out, part, out=out)
    else:
        ring_reduce_scatter(mesh, call, x, segs, ufunc, deadline)
        out[...] = x[segs[me][0]:segs[me][1]]
    mesh.flush(call, deadline)


def all_gather(mesh: PeerMesh, call, x: np.ndarray, deadline):
    """In place on flat x of n equal segments: rank r contributes segment r."""
    n, me = mesh.size, mesh.rank
    if n == 1:
        return
    segs = bounds(x.size, n)
    if x.nbytes < RING_MIN_BYTES * n:
        a, b = segs[me]
        for peer in range(n):
            if peer != me:
                mesh.send(peer, call, 0, x[a:b])
        for peer in range(n):
            if peer != me:
                waiting = [q for q in range(peer, n) if q != me]
                pa, pb = segs[peer]
                mesh.recv(peer, call, 0, deadline, waiting, x.dtype, pb - pa, out=x[pa:pb])
    else:
        ring_all_gather(mesh, call, x, segs, deadline)
    mesh.flush(call, deadline)


def broadcast(mesh: PeerMesh, call, x: np.ndarray, root: int, deadline):
    """In place on flat x: every rank gets root's x."""
    if mesh.size == 1:
        return
    if mesh.rank == root:
        for peer in range(mesh.size):
            if peer != root:
                mesh.send(peer, call, 0, x)
        mesh.flush(call, deadline)
    else:
        mesh.recv(root, call, 0, deadline, None, x.dtype, x.size, out=x)


def gather(mesh: PeerMesh, call, x: np.ndarray, outs: list | None, root: int, deadline):
    """outs[r] (flat arrays, on root only) = x of rank r."""
    me = mesh.rank
    if me != root:
        mesh.send(root, call, 0, x)
        mesh.flush(call, deadline)
        return
    for peer in range(mesh.size):
        if peer == me:
            outs[peer][...] = x
        else:
            waiting = [q for q in range(peer, mesh.size) if q != me]
            mesh.recv(peer, call, 0, deadline, waiting, x.dtype, outs[peer].size,
                      out=outs[peer])


def scatter(mesh: PeerMesh, call, x: np.ndarray, ins: list | None, root: int, deadline):
    """x (flat) on rank r = ins[r] from root."""
    me = mesh.rank
    if me == root:
        for peer in range(mesh.size):
            if peer != me:
                mesh.send(peer, call, 0, ins[peer])
        x[...] = ins[me]
        mesh.flush(call, deadline)
    else:
        mesh.recv(root, call, 0, deadline, None, x.dtype, x.size, out=x)


def all_to_all(mesh: PeerMesh, call, ins: list, outs: list, deadline):
    """outs[p] on rank r = ins[r] of rank p (flat arrays; sizes as agreed by the caller)."""
    me, n = mesh.rank, mesh.size
    for peer in range(n):
        if peer != me:
            mesh.send(peer, call, 0, ins[peer])
    outs[me][...] = ins[me]
    for peer in range(n):
        if peer != me:
            waiting = [q for q in range(peer, n) if q != me]
            mesh.recv(peer, call, 0, deadline, waiting, outs[peer].dtype, outs[peer].size,
                      out=outs[peer])
    mesh.flush(call, deadline)


def barrier(mesh: PeerMesh, call, deadline):
    """Return once every member has entered the barrier."""
    me, n = mesh.rank, mesh.size
    for peer in range(n):
        if peer != me:
            mesh.send(peer, call, 0)
    for peer in range(n):
        if peer != me:
            mesh.recv(peer, call, 0, deadline, [q for q in range(peer, n) if q != me])
