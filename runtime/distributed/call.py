"""The call descriptor every route receives, and the rank-order reduction every route uses.

A ``Call`` is built in one place (``ProcessGroup._launch``) when a collective is launched:
its sequence number is taken under the group's lock, so it is the launch order, which is the
order the communication thread runs it. Routes compare it across ranks (the TCP headers carry
``call.wire()``; the shared-memory lines carry ``call.encode()``), so ranks that call
different collectives, ops, dtypes or shapes get a ``DesyncError`` naming both calls.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Call:
    """One launched collective (or point-to-point message): what every rank must agree on.

    shape is the shape every rank passes (None where ranks legitimately differ, as the inputs
    of all_to_all_single); root is a group rank (broadcast, reduce, gather, scatter); tag is
    set for point-to-point messages only.
    """
    seq: int
    name: str
    op: str | None = None
    dtype: str | None = None
    shape: tuple | None = None
    root: int | None = None
    tag: int | None = None

    @property
    def numel(self) -> int:
        return -1 if self.shape is None else int(np.prod(self.shape, dtype=np.int64))

    def wire(self) -> list:
        """The msgpack form in TCP headers: [seq, name, op, dtype, shape, root]."""
        op = self.op if self.tag is None else f"tag={self.tag}"
        return [self.seq, self.name, op, self.dtype,
                None if self.shape is None else list(self.shape), self.root]

    def signature(self) -> int:
        """A 63-bit digest of everything but seq: name, op, dtype, the whole shape, numel, root."""
        text = repr((self.name, self.op, self.dtype, self.shape, self.numel, self.root,
                     self.tag)).encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1

    def __str__(self) -> str:
        """'all_reduce(SUM, float32, shape=[3, 4]) #7'."""
        args = [a for a in (self.op, self.dtype) if a]
        if self.tag is not None:
            args.insert(0, f"tag={self.tag}")
        if self.shape is not None:
            args.append(f"shape={list(self.shape)}")
        if self.root is not None:
            args.append(f"root={self.root}")
        return f"{self.name}({', '.join(args)}) #{self.seq}"


def reduce_in_rank_order(ufunc, parts: list, out: np.ndarray) -> np.ndarray:
    """out = parts[0] op parts[1] op ... op parts[n-1], left to right.

    Every route reduces with this one order, so a result has the same bits on every rank, in
    every run, and on every route. out may alias any part (an in-place reduce_scatter_tensor
    whose output is this rank's part of its input): a later part it overlaps is copied first,
    since the first step overwrites out."""
    parts = [p.copy() if i >= 2 and np.may_share_memory(p, out) else p
             for i, p in enumerate(parts)]
    if len(parts) == 1:
        if parts[0] is not out:
            out[...] = parts[0]
        return out
    ufunc(parts[0], parts[1], out=out)
    for p in parts[2:]:
        ufunc(out, p, out=out)
    return out


def parts_of(outs, n: int, m: int) -> list:
    """outs as n flat arrays of m elements: a list as given, or a flat array cut in n."""
    if isinstance(outs, np.ndarray):
        return [outs[p * m:(p + 1) * m] for p in range(n)]
    return outs
