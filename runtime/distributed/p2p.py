"""Point-to-point, as torch.distributed: send, recv, isend, irecv, P2POp, batch_isend_irecv.

Ranks are global ranks (``group_dst``/``group_src``/``group_peer`` take group ranks), tags
match a send to the receive with the same tag, and ``recv(t)`` without ``src`` takes a
message from any rank and returns that rank. How messages travel and match: Note
[Point-to-point] (the group's TCP mesh, also between ranks on one host).
"""
from __future__ import annotations

from .api import _group
from .collectives import as_array


def _peer(pg, rank, group_rank, what: str, arg: str, any_ok: bool = False):
    """The group rank of the peer named by a global `rank` or a `group_rank`."""
    if rank is not None and group_rank is not None:
        raise ValueError(f"{what}: pass {arg} or group_{arg}, not both")
    if group_rank is not None:
        if not 0 <= group_rank < pg.size():
            raise ValueError(f"{what}: group_{arg}={group_rank} is not in [0, {pg.size()})")
        peer = int(group_rank)
    elif rank is None:
        if any_ok:
            return None
        raise ValueError(f"{what}: {arg} is required")
    elif rank not in pg.ranks:
        raise ValueError(f"{what}: {arg}={rank} is not a member of the group (ranks {pg.ranks})")
    else:
        peer = pg.ranks.index(rank)
    if peer == pg.rank():
        raise ValueError(f"{what}: {arg}={pg.ranks[peer]} is this rank; a rank cannot send to "
                         "or receive from itself")
    return peer


def _tag(tag, what: str) -> int:
    if not isinstance(tag, int) or isinstance(tag, bool) or not 0 <= tag < 1 << 31:
        raise ValueError(f"{what}: tag must be an int in [0, 2**31), got {tag!r}")
    return tag


def isend(tensor, dst: int | None = None, group=None, tag: int = 0, group_dst=None):
    """Send `tensor` to rank `dst` without waiting; returns a Work that finishes once
    `tensor` may be changed again (do not write to it before)."""
    pg = _group(group, "isend")
    if pg is None:
        return None
    x = as_array(tensor, "isend")
    return pg.send(x, _peer(pg, dst, group_dst, "isend", "dst"), _tag(tag, "isend"))


def irecv(tensor, src: int | None = None, group=None, tag: int = 0, group_src=None):
    """Receive into `tensor` from rank `src` (None: any rank) without waiting; returns a
    Work whose result() is the sender's rank."""
    pg = _group(group, "irecv")
    if pg is None:
        return None
    x = as_array(tensor, "irecv", written=True)
    return pg.recv(x, _peer(pg, src, group_src, "irecv", "src", any_ok=True),
                   _tag(tag, "irecv"))


def send(tensor, dst: int | None = None, group=None, tag: int = 0, group_dst=None) -> None:
    """Send `tensor` to rank `dst`; returns once `tensor` may be changed again."""
    work = isend(tensor, dst, group, tag, group_dst)
    if work is not None:
        work.wait()


def recv(tensor, src: int | None = None, group=None, tag: int = 0, group_src=None) -> int:
    """Receive into `tensor` from rank `src` (None: any rank); returns the sender's rank
    (-1 outside the group)."""
    work = irecv(tensor, src, group, tag, group_src)
    return -1 if work is None else work.result()


class P2POp:
    """One operation for batch_isend_irecv: ``P2POp(dist.isend, tensor, peer)``."""

    def __init__(self, op, tensor, peer: int | None = None, group=None, tag: int = 0,
                 group_peer: int | None = None):
        if op not in (isend, irecv):
            raise ValueError("P2POp: op must be runtime.distributed.isend or irecv, got "
                             f"{getattr(op, '__name__', op)!r}")
        if peer is None and group_peer is None:
            raise ValueError("P2POp: peer (or group_peer) is required")
        self.op, self.tensor, self.peer, self.group = op, tensor, peer, group
        self.tag, self.group_peer = tag, group_peer

    def __repr__(self):
        return f"P2POp({self.op.__name__}, peer={self.peer}, tag={self.tag})"


def batch_isend_irecv(p2p_op_list: list) -> list:
    """Launch every P2POp of the list (in order) and return their Works."""
    if not p2p_op_list or not all(isinstance(p, P2POp) for p in p2p_op_list):
        raise ValueError("batch_isend_irecv: expected a non-empty list of P2POp, got "
                         f"{p2p_op_list!r:.80}")
    pgs = {id(_group(p.group, "batch_isend_irecv")) for p in p2p_op_list}
    pg = _group(p2p_op_list[0].group, "batch_isend_irecv")
    if len(pgs) == 1 and pg is not None:
        # on GPUs one NCCL group call, so two ranks that both send first cannot deadlock
        ops = []
        for p in p2p_op_list:
            send = p.op is isend
            what = "isend" if send else "irecv"
            x = as_array(p.tensor, what, written=not send)
            ops.append(("send" if send else "recv", x,
                        _peer(pg, p.peer, p.group_peer, what, "dst" if send else "src"),
                        _tag(p.tag, what)))
        return pg.batch_p2p(ops)
    works = []
    for p in p2p_op_list:
        if p.op is isend:
            works.append(isend(p.tensor, p.peer, p.group, p.tag, p.group_peer))
        else:
            works.append(irecv(p.tensor, p.peer, p.group, p.tag, p.group_peer))
    return [w for w in works if w is not None]
