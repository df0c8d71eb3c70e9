"""DDP's gradient buckets in shared memory, for a group whose ranks all share one host.

Note [DDP shared buckets]
~~~~~~~~~~~~~~~~~~~~~~~~~
The group's first rank creates one ``shm.Segment`` holding, in two sets, every rank's buckets
(bucket k of rank r in set s at a fixed offset); the others attach, and the name is unlinked
once all have it (the memory goes with the last process, as in Note [Shm reduce]). A rank's
bucket arrays are views into it: gradients are copied (or, with ``gradient_as_bucket_view``,
accumulated) straight into memory every peer can read, so averaging copies nothing in. The
reduction runs on the group's communication thread (Note [Communication thread]) as an
all_reduce, with its desync check and deadline, so it interleaves with other collectives.

Up to ``ONE_BARRIER_MAX_RANKS`` (3) ranks, buckets other than the last take one barrier: the
step's gradients are in set s; after barrier A (all inputs written) every rank reduces the
whole bucket over all ranks, in rank order 0..n-1, into its own bucket of set 1 - s, which
holds the result and becomes the input set of the next step (``.grad`` follows it). Why no
second barrier: rank r writes set 1 - s of bucket k (now) and set s (next step, output) only
after passing barrier A of this step or the next, which every peer reaches only after it has
finished reading those arrays in the step before (reductions run in order on each rank's one
thread); and its main thread writes next step's gradients into set 1 - s only after this
reduction finished. These reductions overlap backward, where a barrier's wait costs more
than reading the whole bucket.

The last bucket (its reduction is the tail of backward, with every rank waiting idle), and
every bucket when there are more ranks (reading all peers' buckets costs n^2 reads over the
host), take three barriers, in place in set s, splitting the work over the ranks: barrier A;
rank r reduces its slice r over all ranks (rank order) into its own bucket; barrier B; it
copies every other slice q from rank q's bucket; barrier C (no rank writes its bucket again
while a peer reads it).
Either way each element is summed in one fixed order, so every rank gets the same bits.

Before barrier A the communication thread sleeps (50 us naps) until every peer has *launched*
the bucket (a per-rank launch count in the segment, bumped by the main thread after writing
the bucket): the barrier's spin would otherwise take a core from backward while a slower peer
catches up (measured: +17% samples/s for 2 ranks on 2 cores). It is only a hint; the barrier
still synchronises, and names a dead or late peer.
"""
from __future__ import annotations

import os
import time

import numpy as np

from shm import pid_alive

from .collectives import all_reduce
from .objects import all_gather_object, broadcast_object_list
from .call import reduce_in_rank_order
from .work import UFUNC as _UFUNC

_ALIGN = 64
ONE_BARRIER_MAX_RANKS = 3   # ZGRAD_DDP_ONE_BARRIER_MAX_RANKS overrides it (read at construction)


def usable(pg, arrays: list) -> bool:
    """Whether `pg` can keep DDP's buckets of these (numpy) arrays in shared memory."""
    if os.environ.get("ZGRAD_DDP_SHM", "1") == "0":
        return False
    return (pg.size() > 1 and getattr(pg, "single_host", False) and
            getattr(pg, "local", None) is not None and
            all(isinstance(a, np.ndarray) for a in arrays))


class SharedBuckets:
    """Every rank's buckets of sizes `(numel, dtype)`, two sets of them, in one segment."""

    def __init__(self, pg, sizes: list):
        import shm
        self.pg, self.n, self.me = pg, pg.size(), pg.rank()
        offsets, off = [], 0
        for numel, dtype in sizes:
            offsets.append(off)
            off += (numel * np.dtype(dtype).itemsize + _ALIGN - 1) // _ALIGN * _ALIGN
        per_set = max(off, _ALIGN)
        nb = len(sizes)
        ctl = (nb * 8 + _ALIGN - 1) // _ALIGN * _ALIGN   # per rank: launch counts, own lines
        seg = None
        try:
            if self.me == 0:
                seg = shm.Segment.create(self.n * ctl + 2 * self.n * per_set, tag="ddp")
            info = [None if seg is None else seg.name]
            pids = [None] * self.n
            all_gather_object(pids, os.getpid(), group=pg)
            broadcast_object_list(info, src=pg.ranks[0], group=pg)
            if seg is None:
                seg = shm.Segment.attach(info[0])
            all_reduce(np.zeros(1, np.int64), group=pg)   # all attached: the name can go
        finally:
            if self.me == 0 and seg is not None:
                seg.unlink()
        self.pids = pids
        # launched[r][k]: how many times rank r has launched bucket k (see _wait_launched)
        self.launched = [seg.ndarray((nb,), np.int64, r * ctl) for r in range(self.n)]
        base = self.n * ctl
        # arrays[s][r][k]: set s, rank r, bucket k
        self.arrays = [[[seg.ndarray((numel,), dtype, base + (s * self.n + r) * per_set + o)
                         for (numel, dtype), o in zip(sizes, offsets)]
                        for r in range(self.n)] for s in range(2)]
        seg.close()   # the arrays keep the mapping alive
        self.scratch: dict = {}
        # up to 3 ranks every rank reduces the whole bucket into the other set: one barrier
        limit = int(os.environ.get("ZGRAD_DDP_ONE_BARRIER_MAX_RANKS", ONE_BARRIER_MAX_RANKS))
        self.swaps = self.n <= limit
        # per bucket: the last one's reduction is on backward's critical path (every rank
        # waits for it, idle), so there splitting the work over the ranks pays for 2 barriers
        self.swap = [self.swaps and not (k == nb - 1 and nb > 1) for k in range(nb)]

    def buffer(self, k: int, s: int = 0) -> np.ndarray:
        """This rank's bucket k in set s (zero-filled at first)."""
        return self.arrays[s][self.me][k]

    def all_reduce(self, k: int, s: int, op: str):
        """Launch the average (op "AVG") or sum of bucket k of set s over the group. Returns
        the Work; the result lands in set 1 - s if `self.swaps`, else in set s."""
        x = self.arrays[s][self.me][k]
        fn = self._reduce_swap if self.swap[k] else self._reduce_in_place
        mine = self.launched[self.me]
        mine[k] += 1     # after the bucket's data: peers may start waiting at the barrier
        count = int(mine[k])

        def run(call, deadline):
            self._wait_launched(k, count, deadline)
            fn(k, s, op, call, deadline)
        return self.pg._launch(run, True, "all_reduce", x, op=op)

    def _wait_launched(self, k: int, count: int, deadline: float):
        """Sleep (not spin) until every peer has launched bucket k `count` times.

        The barrier that follows spins, which takes the core from this rank's backward (or a
        peer's) while a slower peer catches up; a peer that launched is at most one reduction
        away from the barrier. Only a hint: a failed, dead or late peer is left to the barrier,
        which names it."""
        others = [r for r in range(self.n) if r != self.me]
        naps = 0
        while any(self.launched[r][k] < count for r in others):
            naps += 1
            if naps % 200 == 0:
                check = getattr(self.pg.local, "_check_abort", None)
                if check is not None:
                    check()   # a peer's failure (the group's abort flag) ends the wait at once
                if time.monotonic() > deadline or not all(pid_alive(self.pids[r])
                                                          for r in others):
                    return
            time.sleep(5e-5)

    def _reduce_swap(self, k, s, op, call, deadline):
        """See Note [DDP shared buckets], the one-barrier scheme."""
        bufs = [self.arrays[s][r][k] for r in range(self.n)]
        out = self.arrays[1 - s][self.me][k]
        ufunc = _UFUNC[op]
        self.pg.local._sync(call, deadline, desc=True)
        if out.size:
            reduce_in_rank_order(ufunc, bufs, out)
            if op == "AVG":
                np.divide(out, self.n, out=out)

    def _scratch(self, k: int, numel: int, dtype) -> np.ndarray:
        buf = self.scratch.get(k)
        if buf is None:
            buf = self.scratch[k] = np.empty(numel, dtype)
        return buf

    def _reduce_in_place(self, k, s, op, call, deadline):
        """See Note [DDP shared buckets], the three-barrier scheme."""
        local, n, me = self.pg.local, self.n, self.me
        bufs = [self.arrays[s][r][k] for r in range(n)]
        size = bufs[0].size
        q, rem = divmod(size, n)
        lo = [r * q + min(r, rem) for r in range(n + 1)]
        ufunc = _UFUNC[op]
        local._sync(call, deadline, desc=True)
        a, b = lo[me], lo[me + 1]
        if b > a:
            # ranks 0 and 1 sum in place; a later rank's own input must survive until its
            # turn in the rank order, so it sums into a scratch (allocated once)
            out = bufs[me][a:b] if me < 2 else self._scratch(k, b - a, bufs[0].dtype)
            ufunc(bufs[0][a:b], bufs[1][a:b], out=out)
            for r in range(2, n):
                ufunc(out, bufs[r][a:b], out=out)
            if op == "AVG":
                np.divide(out, n, out=out)
            if me >= 2:
                bufs[me][a:b] = out
        local._sync(call, deadline)
        mine = bufs[me]
        for r in range(n):
            if r != me and lo[r + 1] > lo[r]:
                mine[lo[r]:lo[r + 1]] = bufs[r][lo[r]:lo[r + 1]]
        local._sync(call, deadline)
