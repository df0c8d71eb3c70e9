"""Collectives among the members of a group that share a host, through one shared segment.

Note [Shm reduce]
~~~~~~~~~~~~~~~~~
The local leader creates one ``shm.Segment`` per group; the others attach, and the leader
unlinks the name as soon as all have attached, so the memory goes away with the last
process whatever happens (nothing can leak in /dev/shm). Layout:

    control: per rank a 256-byte line [arrival epoch, call descriptor x2 (by seq parity)],
             then an abort flag and an abort message
    data:    2 sets x n slots of SLOT_BYTES (``ZGRAD_SHM_SLOT_BYTES``, default 4 MiB)

all_reduce of a flat array walks it in chunks of one slot; chunk i uses set i % 2 (the
parity runs on across calls):
  1. copy my chunk into my slot; arrive (epoch += 1) and wait for all epochs (barrier A);
  2. reduce *my slice* of the chunk over all slots in rank order 0..n-1 (each rank reads
     n slices and writes one: memory-bandwidth bound, all ranks in parallel) into my output,
     and copy it back into my slot's slice; barrier B;
  3. copy every other rank's reduced slice from its slot into my output.
A rank can only overwrite set s (chunk i+2) after barrier A of chunk i+1, which every rank
reaches after its step 3 of chunk i, so two barriers per chunk suffice. Arrays up to
``ZGRAD_SHM_SMALL_BYTES`` (64 KiB) take one barrier: after step 1 every rank reduces the whole
array over all slots in rank order (latency-bound sizes: one synchronisation, not two). The order of every
reduction is fixed, so results are bitwise identical run to run.

Desync check: before the first barrier of a collective each rank writes its call descriptor
(seq, collective, op, dtype, root, shape) into its line; after the barrier every rank compares
all of them, so every rank raises the same DesyncError naming both calls. (Descriptors are
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

from .transport import AbortedError, DesyncError, PeerLostError, describe

SLOT_BYTES = int(os.environ.get("ZGRAD_SHM_SLOT_BYTES", 4 << 20))
SMALL_BYTES = int(os.environ.get("ZGRAD_SHM_SMALL_BYTES", 64 << 10))
_LINE = 32                     # int64s per rank line
_DESC = 15                     # int64s per descriptor
_MSG_BYTES = 4096

_NAMES = ["all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
          "reduce_scatter_tensor", "gather", "scatter", "all_to_all_single", "barrier",
          "broadcast_object_list", "all_gather_object"]
_OPS = ["", "SUM", "AVG", "MAX", "MIN", "PRODUCT"]


def _encode(call: list) -> np.ndarray:
    seq, name, op, dtype, shape, root = call
    d = np.zeros(_DESC, np.int64)
    d[0], d[1], d[2] = seq, _NAMES.index(name), _OPS.index(op or "")
    d[3] = np.dtype(dtype).num if dtype else -1
    d[4] = -1 if root is None else root
    if shape is None:
        d[5] = -1
    else:
        d[5] = len(shape)
        d[6:6 + min(len(shape), _DESC - 6)] = list(shape)[:_DESC - 6]
    return d


def _decode(d) -> list:
    dtype = None
    if d[3] >= 0:
        dtype = next((t.name for t in map(np.dtype, np.typecodes["All"]) if t.num == d[3]),
                     str(d[3]))
    shape = None if d[5] < 0 else [int(v) for v in d[6:6 + min(int(d[5]), _DESC - 6)]]
    return [int(d[0]), _NAMES[int(d[1])], _OPS[int(d[2])] or None, dtype, shape,
            None if d[4] < 0 else int(d[4])]


class ShmComm:
    """Barriers and reductions among `n` local members over one shared segment."""

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

    def barrier(self, call: list, deadline: float, desc: bool = False):
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
        self._check_abort()
        if desc:
            self._check_calls(call)

    def _check_late(self, call, deadline, e):
        late = [k for k in range(self.n) if self.flags[k] < e]
        for k in late:
            if not pid_alive(self.pids[k]):
                msg = (f"{call[1]}: rank {self.global_ranks[k]} (pid {self.pids[k]}) died during "
                       f"{describe(call)}. See that rank's log for the cause.")
                self.abort(msg)
                raise PeerLostError(msg)
        if time.monotonic() > deadline:
            msg = (f"{call[1]}: rank {self.global_ranks[self.rank]} timed out in "
                   f"{describe(call)}: ranks {[self.global_ranks[k] for k in late]} did not "
                   "arrive. They may be stuck in other work, have crashed (see their logs), or "
                   "not have called it; or raise the timeout of init_process_group/new_group.")
            self.abort(msg)
            raise TimeoutError(msg)

    def _check_calls(self, call):
        at = 1 + (self.ndesc & 1) * _DESC
        mine = _encode(call)
        for k in range(self.n):
            theirs = self.ctl[k * _LINE + at:k * _LINE + at + _DESC]
            if not np.array_equal(theirs, mine):
                msg = (f"{call[1]}: collectives out of step: rank "
                       f"{self.global_ranks[self.rank]} called {describe(call)} but rank "
                       f"{self.global_ranks[k]} called {describe(_decode(theirs.copy()))}. "
                       "Every rank of a group must call the same collectives in the same order "
                       "with matching dtype and shape.")
                raise DesyncError(msg)

    # -- collectives -----------------------------------------------------------------------

    def all_reduce(self, call: list, x: np.ndarray, ufunc, deadline: float):
        """In place on flat contiguous x: the reduction over all members (see Note above)."""
        n, me = self.n, self.rank
        if x.nbytes <= SMALL_BYTES:
            # one barrier: every rank reduces the whole (small) array itself, same order
            slots = [s.view(x.dtype)[:x.size] for s in self.slots[self.parity]]
            self.parity ^= 1
            slots[me][:] = x
            self.barrier(call, deadline, desc=True)
            if x.size:
                ufunc(slots[0], slots[1], out=x)
                for k in range(2, n):
                    ufunc(x, slots[k], out=x)
            return
        chunk = max(1, self.slot_bytes // x.itemsize)
        first = True
        for c0 in range(0, max(x.size, 1), chunk):
            c1 = min(c0 + chunk, x.size)
            slots = [s.view(x.dtype) for s in self.slots[self.parity]]
            self.parity ^= 1
            L = c1 - c0
            slots[me][:L] = x[c0:c1]
            self.barrier(call, deadline, desc=first)
            first = False
            q, rem = divmod(L, n)
            lo = [k * q + min(k, rem) for k in range(n + 1)]
            a, b = lo[me], lo[me + 1]
            if b > a:
                out = x[c0 + a:c0 + b]
                ufunc(slots[0][a:b], slots[1][a:b], out=out)
                for k in range(2, n):
                    ufunc(out, slots[k][a:b], out=out)
                slots[me][a:b] = out
            self.barrier(call, deadline)
            for k in range(n):
                if k != me and lo[k + 1] > lo[k]:
                    x[c0 + lo[k]:c0 + lo[k + 1]] = slots[k][lo[k]:lo[k + 1]]

    def broadcast(self, call: list, x: np.ndarray, root: int, deadline: float):
        """In place on flat contiguous x: every member gets member `root`'s x."""
        chunk = max(1, self.slot_bytes // x.itemsize)
        first = True
        for c0 in range(0, max(x.size, 1), chunk):
            c1 = min(c0 + chunk, x.size)
            slot = self.slots[self.parity][root].view(x.dtype)
            self.parity ^= 1
            if self.rank == root:
                slot[:c1 - c0] = x[c0:c1]
            self.barrier(call, deadline, desc=first)
            first = False
            if self.rank != root:
                x[c0:c1] = slot[:c1 - c0]
        # no trailing barrier: the root writes this set again only two chunks on, after a
        # barrier every reader reaches once done reading (the parity runs on across calls)

    def close(self):
        self.flags = self.ctl = self.msg = self.slots = None
        self.seg.close()
