"""Every collective among the members of a group that share a host, through one shared segment.

Note [Shm reduce]
~~~~~~~~~~~~~~~~~
The local leader creates one ``shm.Segment`` per group; the others attach, and the leader
unlinks the name as soon as all have attached, so the memory goes away with the last
process whatever happens (nothing can leak in /dev/shm). Layout:

    control: per rank a 512-byte line [arrival epoch, call descriptor x2 (by parity)],
             then an abort flag and an abort message
    data:    2 sets x n slots of SLOT_BYTES (``ZGRAD_SHM_SLOT_BYTES``, default 4 MiB)

Every collective walks its arrays in chunks of one slot; chunk i uses set i % 2 (the parity
runs on across calls and collectives). One barrier per chunk suffices for every collective in
which a rank only reads after the barrier what others wrote before it: a rank overwrites set s
(chunk i+2) only after the barrier of chunk i+1, which every rank reaches after it finished
reading chunk i. all_gather, gather, scatter, broadcast, reduce (the root reduces) and
reduce_scatter (each slot holds one sub-slot per destination; a rank reduces its own part)
take one barrier per chunk; all_to_all one more to publish every rank's send and receive sizes
first (so a mismatch is an error on every rank, and all agree on the number of rounds).
all_reduce of a large array takes two:
  1. copy my chunk into my slot; arrive (epoch += 1) and wait for all epochs (barrier A);
  2. reduce *my slice* of the chunk over all slots in rank order 0..n-1 (each rank reads
     n slices and writes one: memory-bandwidth bound, all ranks in parallel) into my output,
     and copy it back into my slot's slice; barrier B;
  3. copy every other rank's reduced slice from its slot into my output.
Arrays up to ``ZGRAD_SHM_SMALL_BYTES`` (64 KiB) take one barrier: after step 1 every rank
reduces the whole array over all slots in rank order (latency-bound sizes: one
synchronisation, not two). Every reduction applies the ranks in order 0..n-1
(``reduce_in_rank_order``), so results are bitwise identical run to run.

Desync check: before the first barrier of a collective each rank writes its call descriptor
(seq, collective, op, dtype, root, ndim, numel, a 63-bit digest of the whole call, and the
first dims for the message) into its line; after the barrier every rank compares all of them,
so every rank raises the same DesyncError naming both calls, and no rank reads a slot written
for another call. (Descriptors are
double-buffered by the parity of the count of descriptor barriers, not of seq: collectives that
bypass shared memory, e.g. a TCP broadcast in a mixed layout, do not advance it. A rank writes
descriptor j+2 only after passing barrier j+1, which the others reach after reading j.)
Waiting spins briefly, then yields, then sleeps 50 us; every few ms it checks the abort flag,
its deadline (TimeoutError names the ranks whose epoch is behind) and the pids of those ranks
(PeerLostError). A rank that fails sets the abort flag with its message, which the others raise.
Memory ordering: slot data is written before the epoch; on x86 (TSO) stores are not reordered
with stores, which is what makes the plain epoch store a release.
"""
from __future__ import annotations

import os
import time

import numpy as np

from shm import pid_alive

from .call import Call, parts_of, reduce_in_rank_order
from .transport import AbortedError, DesyncError, PeerLostError

SLOT_BYTES = int(os.environ.get("ZGRAD_SHM_SLOT_BYTES", 4 << 20))
SMALL_BYTES = int(os.environ.get("ZGRAD_SHM_SMALL_BYTES", 64 << 10))
_LINE = 64                     # int64s per rank line: epoch, then two descriptors
_DESC = 31                     # int64s per descriptor: 8 fields, then up to 23 dims
_DIMS = _DESC - 8
_MSG_BYTES = 4096

_NAMES = ["all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
          "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "all_to_all",
          "all_to_all_single", "barrier", "broadcast_object_list", "all_gather_object"]
_OPS = ["", "SUM", "AVG", "MAX", "MIN", "PRODUCT"]


def _encode(call: Call) -> np.ndarray:
    """[seq, name, op, dtype, root, ndim, numel, signature, dims...]: comparing the whole vector
    compares the whole call (the signature covers every dim, however many)."""
    d = np.zeros(_DESC, np.int64)
    d[0], d[1], d[2] = call.seq, _NAMES.index(call.name), _OPS.index(call.op or "")
    d[3] = np.dtype(call.dtype).num if call.dtype else -1
    d[4] = -1 if call.root is None else call.root
    d[5] = -1 if call.shape is None else len(call.shape)
    d[6], d[7] = call.numel, call.signature()
    if call.shape is not None:
        dims = list(call.shape)[:_DIMS]
        d[8:8 + len(dims)] = dims
    return d


def _describe(d) -> str:
    """The call a rank wrote into its line, as text (the shape shortened past _DIMS dims)."""
    dtype = None
    if d[3] >= 0:
        dtype = next((t.name for t in map(np.dtype, np.typecodes["All"]) if t.num == d[3]),
                     str(d[3]))
    shape = None if d[5] < 0 else tuple(int(v) for v in d[8:8 + min(int(d[5]), _DIMS)])
    text = str(Call(int(d[0]), _NAMES[int(d[1])], _OPS[int(d[2])] or None, dtype, shape,
                    None if d[4] < 0 else int(d[4])))
    if d[5] > _DIMS:
        text = text.replace("]", f", ...] ({int(d[5])} dims, {int(d[6])} elements)", 1)
    return text


class ShmComm:
    """Every collective among the `n` members of a group on this host, over one segment."""

    def __init__(self, seg, n: int, rank: int, global_ranks: list[int], pids: list[int]):
        self.seg, self.n, self.rank = seg, n, rank
        self.global_ranks, self.pids = global_ranks, pids
        # views through seg.ndarray keep the mapping alive while they exist (never unmapped
        # under a live array), so close() cannot pull memory from under a late reader
        self.ctl = seg.ndarray((n * _LINE + 8,), np.int64, 0)
        self.flags = self.ctl[0:n * _LINE:_LINE]
        self.abort_at = n * _LINE
        self.msg = seg.ndarray((_MSG_BYTES,), np.uint8, self.ctl.nbytes)
        base = self.ctl.nbytes + _MSG_BYTES
        base = (base + 4095) // 4096 * 4096
        self.slot_bytes = (seg.size - base) // (2 * n) // 64 * 64
        self.slots = [[seg.ndarray((self.slot_bytes,), np.uint8,
                                   base + (s * n + k) * self.slot_bytes)
                       for k in range(n)] for s in range(2)]
        self.epoch = 0
        self.parity = 0
        self.ndesc = 0     # descriptor barriers so far: picks the descriptor buffer

    @staticmethod
    def segment_bytes(n: int) -> int:
        base = (n * _LINE + 8) * 8 + _MSG_BYTES
        return (base + 4095) // 4096 * 4096 + 2 * n * SLOT_BYTES

    # -- synchronisation -------------------------------------------------------------------

    def abort(self, message: str):
        raw = message.encode()[:_MSG_BYTES - 1]
        self.msg[:len(raw)] = np.frombuffer(raw, np.uint8)
        self.msg[len(raw)] = 0
        self.ctl[self.abort_at] = 1 + self.rank

    def _check_abort(self):
        who = int(self.ctl[self.abort_at])
        if who:
            raw = bytes(self.msg[:_MSG_BYTES]).split(b"\0", 1)[0].decode(errors="replace")
            raise AbortedError(f"{raw} [reported by rank {self.global_ranks[who - 1]}]")

    def _sync(self, call: Call, deadline: float, desc: bool = False):
        """Arrive and wait for every member (with the call descriptor check when `desc`)."""
        line = self.rank * _LINE
        if desc:
            self.ndesc += 1
            at = line + 1 + (self.ndesc & 1) * _DESC
            self.ctl[at:at + _DESC] = _encode(call)
        self.epoch += 1
        e = self.epoch
        self.ctl[line] = e
        flags = self.flags
        spins = 0
        while flags.min() < e:
            spins += 1
            if spins < 32:
                continue
            if spins & 63 == 0:
                self._check_abort()
                self._check_late(call, deadline, e)
            # yield the core (2 ranks may share one); after ~1 ms sleep in 50 us steps
            if spins < 1000:
                os.sched_yield()
            else:
                time.sleep(5e-5)
        # every rank arrived, so every line holds its call: each rank finds the same desync
        # itself (an abort set since is a later failure, which the next wait reports)
        if desc:
            self._check_calls(call)

    def _check_late(self, call: Call, deadline, e):
        late = [k for k in range(self.n) if self.flags[k] < e]
        for k in late:
            if not pid_alive(self.pids[k]):
                msg = (f"{call.name}: rank {self.global_ranks[k]} (pid {self.pids[k]}) died "
                       f"during {call}. See that rank's log for the cause.")
                self.abort(msg)
                raise PeerLostError(msg)
        if time.monotonic() > deadline:
            msg = (f"{call.name}: rank {self.global_ranks[self.rank]} timed out in {call}: ranks "
                   f"{[self.global_ranks[k] for k in late]} did not arrive. They may be stuck in "
                   "other work, have crashed (see their logs), or not have called it; or raise "
                   "the timeout of init_process_group/new_group.")
            self.abort(msg)
            raise TimeoutError(msg)

    def _check_calls(self, call: Call):
        at = 1 + (self.ndesc & 1) * _DESC
        mine = _encode(call)
        for k in range(self.n):
            theirs = self.ctl[k * _LINE + at:k * _LINE + at + _DESC]
            if not np.array_equal(theirs, mine):
                raise DesyncError(
                    f"{call.name}: collectives out of step: rank "
                    f"{self.global_ranks[self.rank]} called {_describe(mine)} but rank "
                    f"{self.global_ranks[k]} called {_describe(theirs.copy())}. Every rank of a "
                    "group must call the same collectives in the same order with matching "
                    "op, dtype and shape.")

    def _next(self, dtype) -> list[np.ndarray]:
        """The slots of the next set, as `dtype` (see Note [Shm reduce]: parity runs on)."""
        slots = [s.view(dtype) for s in self.slots[self.parity]]
        self.parity ^= 1
        return slots

    def _per_slot(self, itemsize: int, parts: int = 1) -> int:
        """How many elements of `itemsize` bytes fit in a slot (or in one of `parts` sub-slots)."""
        return max(1, self.slot_bytes // parts // itemsize)

    def _chunks(self, x: np.ndarray, per: int | None = None):
        """(first, lo, hi) over x's elements in pieces of `per` elements (default: a whole
        slot's worth); one empty piece for an empty x."""
        numel = x.size
        per = per or self._per_slot(x.itemsize)
        for lo in range(0, max(numel, 1), per):
            yield lo == 0, lo, min(lo + per, numel)

    def _read_others(self, outs: list, slots: list, c0: int, c1: int):
        """outs[k][c0:c1] = the chunk member k published in its slot, for every other k."""
        for k in range(self.n):
            if k != self.rank:
                outs[k][c0:c1] = slots[k][:c1 - c0]

    # -- collectives (flat, C-contiguous numpy arrays) -------------------------------------

    def barrier(self, call: Call, deadline: float):
        self._sync(call, deadline, desc=True)

    def all_reduce(self, call: Call, x: np.ndarray, ufunc, deadline: float):
        """In place on x: the reduction over all members, the same bits on every member."""
        n, me = self.n, self.rank
        if x.nbytes <= SMALL_BYTES:
            # one barrier: every rank reduces the whole (small) array itself, same order
            slots = [s[:x.size] for s in self._next(x.dtype)]
            slots[me][:] = x
            self._sync(call, deadline, desc=True)
            if x.size:
                reduce_in_rank_order(ufunc, slots, x)
            return
        for first, c0, c1 in self._chunks(x):
            slots = self._next(x.dtype)
            L = c1 - c0
            slots[me][:L] = x[c0:c1]
            self._sync(call, deadline, desc=first)
            q, rem = divmod(L, n)
            lo = [k * q + min(k, rem) for k in range(n + 1)]
            a, b = lo[me], lo[me + 1]
            if b > a:
                out = x[c0 + a:c0 + b]
                reduce_in_rank_order(ufunc, [s[a:b] for s in slots], out)
                slots[me][a:b] = out
            self._sync(call, deadline)
            for k in range(n):
                if k != me and lo[k + 1] > lo[k]:
                    x[c0 + lo[k]:c0 + lo[k + 1]] = slots[k][lo[k]:lo[k + 1]]

    def reduce(self, call: Call, x: np.ndarray, ufunc, root: int, deadline: float):
        """x on `root` = the reduction over members, in rank order (x elsewhere unchanged)."""
        me = self.rank
        for first, c0, c1 in self._chunks(x):
            slots = self._next(x.dtype)
            # the root's slot holds its own part too, so no part aliases the output
            slots[me][:c1 - c0] = x[c0:c1]
            self._sync(call, deadline, desc=first)
            if me == root and c1 > c0:
                reduce_in_rank_order(ufunc, [s[:c1 - c0] for s in slots], x[c0:c1])
        # no trailing barrier: a set is written again two chunks on, after a barrier every
        # reader reaches once done reading (the parity runs on across calls)

    def broadcast(self, call: Call, x: np.ndarray, root: int, deadline: float):
        """In place on x: every member gets member `root`'s x."""
        for first, c0, c1 in self._chunks(x):
            slot = self._next(x.dtype)[root]
            if self.rank == root:
                slot[:c1 - c0] = x[c0:c1]
            self._sync(call, deadline, desc=first)
            if self.rank != root:
                x[c0:c1] = slot[:c1 - c0]

    def all_gather(self, call: Call, x: np.ndarray, outs: list, deadline: float):
        """outs[k] = the x of member k (outs: n flat arrays of x.size, or one of n * x.size)."""
        me = self.rank
        outs = parts_of(outs, self.n, x.size)
        outs[me][...] = x
        for first, c0, c1 in self._chunks(x):
            slots = self._next(x.dtype)
            slots[me][:c1 - c0] = x[c0:c1]
            self._sync(call, deadline, desc=first)
            self._read_others(outs, slots, c0, c1)

    def gather(self, call: Call, x: np.ndarray, outs: list | None, root: int, deadline):
        """outs[k] (on root only) = the x of member k."""
        me = self.rank
        if me == root:
            outs[me][...] = x
        for first, c0, c1 in self._chunks(x):
            slots = self._next(x.dtype)
            if me != root:
                slots[me][:c1 - c0] = x[c0:c1]
            self._sync(call, deadline, desc=first)
            if me == root:
                self._read_others(outs, slots, c0, c1)

    def scatter(self, call: Call, x: np.ndarray, ins: list | None, root: int, deadline):
        """x on member k = ins[k] of root (root writes member k's part into slot k)."""
        me = self.rank
        if me == root:
            x[...] = ins[me]
        for first, c0, c1 in self._chunks(x):
            slots = self._next(x.dtype)
            if me == root:
                for k in range(self.n):
                    if k != me:
                        slots[k][:c1 - c0] = ins[k][c0:c1]
            self._sync(call, deadline, desc=first)
            if me != root:
                x[c0:c1] = slots[me][:c1 - c0]

    def reduce_scatter(self, call: Call, ins: list, out: np.ndarray, ufunc, deadline):
        """out on member r = the reduction over members of their ins[r] (n flat arrays of
        out.size). Each slot holds one sub-slot per destination; a member publishes the parts
        of the others and reads its own from private memory (one copy less)."""
        n, me = self.n, self.rank
        per = self._per_slot(out.itemsize, n)
        for first, c0, c1 in self._chunks(out, per):
            slots, L = self._next(out.dtype), c1 - c0
            for p in range(n):
                if p != me:
                    slots[me][p * per:p * per + L] = ins[p][c0:c1]
            self._sync(call, deadline, desc=first)
            parts = [ins[me][c0:c1] if k == me else slots[k][me * per:me * per + L]
                     for k in range(n)]
            if L:
                reduce_in_rank_order(ufunc, parts, out[c0:c1])

    def all_to_all(self, call: Call, ins: list, outs: list, deadline: float):
        """outs[p] on member r = ins[r] of member p. Sizes may differ per pair: every member
        first publishes what it sends and expects, so a mismatch is a DesyncError naming the
        pair on every member, and all agree on the number of rounds."""
        n, me = self.n, self.rank
        table = self._next(np.int64)
        table[me][:n] = [a.size for a in ins]
        table[me][n:2 * n] = [a.size for a in outs]
        self._sync(call, deadline, desc=True)
        sizes = np.array([t[:2 * n] for t in table])       # sizes[k] = k's sends, receives
        for k in range(n):
            for p in range(n):
                if sizes[k, p] != sizes[p, n + k]:
                    raise DesyncError(
                        f"{call.name}: rank {self.global_ranks[k]} sends {sizes[k, p]} elements "
                        f"to rank {self.global_ranks[p]}, which expects {sizes[p, n + k]} "
                        f"({call}). Check input_split_sizes and output_split_sizes.")
        outs[me][...] = ins[me]
        dtype = ins[me].dtype
        per = self._per_slot(dtype.itemsize, n)
        off = ~np.eye(n, dtype=bool)
        rounds = int(-(-sizes[:, :n][off].max(initial=0) // per))
        for j in range(rounds):
            slots, lo = self._next(dtype), j * per
            for p in range(n):
                hi = min(lo + per, ins[p].size)
                if p != me and hi > lo:
                    slots[me][p * per:p * per + hi - lo] = ins[p][lo:hi]
            self._sync(call, deadline)
            for p in range(n):
                hi = min(lo + per, outs[p].size)
                if p != me and hi > lo:
                    outs[p][lo:hi] = slots[p][me * per:me * per + hi - lo]

    def close(self):
        self.flags = self.ctl = self.msg = self.slots = None
        self.seg.close()
