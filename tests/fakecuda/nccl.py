"""``cupy.cuda.nccl`` of the fake: a communicator of one rank. Every collective is a copy,
grouped send/recv to self pair up; ``calls`` records (collective, op) for the tests."""
from __future__ import annotations

import types

from . import runtime

_NBYTES = {}


class NcclCommunicator:
    def __init__(self, ndev, uid, rank):
        assert ndev == 1 and rank == 0 and isinstance(uid, bytes) and len(uid) == 128
        self.sends: list = []
        self.calls: list = []

    def _copy(self, dst, src, count, t):
        if dst != src:
            runtime.memcpy(dst, src, count * _NBYTES[t])   # a graph node in a capture

    def allReduce(self, s, r, count, t, op, stream):
        self.calls.append(("allReduce", op))
        self._copy(r, s, count, t)

    def bcast(self, p, count, t, root, stream):
        assert root == 0
        self.calls.append(("bcast",))

    def reduce(self, s, r, count, t, op, root, stream):
        self.calls.append(("reduce", op))
        self._copy(r, s, count, t)

    def allGather(self, s, r, count, t, stream):
        self.calls.append(("allGather",))
        self._copy(r, s, count, t)

    def reduceScatter(self, s, r, count, t, op, stream):
        self.calls.append(("reduceScatter", op))
        self._copy(r, s, count, t)

    def send(self, p, count, t, peer, stream):
        assert peer == 0
        self.sends.append((p, count, t))

    def recv(self, p, count, t, peer, stream):
        sp, sc, st = self.sends.pop(0)
        assert (sc, st) == (count, t), "send/recv sizes differ"
        self._copy(p, sp, count, t)

    def check_async_error(self):
        pass

    def destroy(self):
        pass

    def abort(self):
        pass


def _make_module():
    m = types.ModuleType("cupy.cuda.nccl")
    for k, (name, size) in enumerate([("FLOAT16", 2), ("FLOAT32", 4), ("FLOAT64", 8),
                                      ("BFLOAT16", 2), ("INT8", 1), ("UINT8", 1),
                                      ("INT32", 4), ("UINT32", 4), ("INT64", 8),
                                      ("UINT64", 8)]):
        setattr(m, "NCCL_" + name, k)
        _NBYTES[k] = size
    for k, op in enumerate(["SUM", "PROD", "MAX", "MIN", "AVG"]):
        setattr(m, "NCCL_" + op, 100 + k)
    m.NcclCommunicator = NcclCommunicator
    m.get_unique_id = lambda: bytes(range(128))
    m.get_version = lambda: 22703
    m.groups = [0]

    def group_start():
        m.groups[0] += 1

    def group_end():
        m.groups[0] -= 1
    m.groupStart, m.groupEnd = group_start, group_end
    return m


nccl = _make_module()
