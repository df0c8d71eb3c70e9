"""Pickling shared arrays by handle under multiprocessing's ForkingPickler.

Only ForkingPickler (queues, pipes, spawn arguments, Pool tasks) sends handles: a plain
``pickle.dumps`` of a shared array still copies its bytes, because a handle means nothing on disk
or on another host. Each pickled handle is one reference *in flight* until the receiver claims
it (see Note [Shm lifetime] in segment.py), so the sender may drop its array right after
``queue.put``.

A handle pickled and never unpickled (a message dropped with its queue) holds its segment until
the sender exits, plus ``ZGRAD_SHM_FLIGHT_GRACE_S`` (30 s), or until the job ends. Send a
handle once: the second unpickling of the same bytes works only while someone else still holds
the segment.
"""
from __future__ import annotations

import threading
from multiprocessing.reduction import ForkingPickler

import numpy as np

from . import _client
from . import arrays as _arrays


def _rebuild_ndarray(name, offset, shape, dtype, strides, token, writeable):
    return _arrays.from_handle(name, offset, shape, dtype, strides, claim=token,
                               writeable=writeable)


def reduce_ndarray(a: np.ndarray):
    """ForkingPickler reducer: a handle for a shared array, numpy's own pickle otherwise."""
    m = _arrays._find_map(a)
    if m is None:
        return a.__reduce_ex__(4)
    name, offset, shape, dtype, strides = _arrays.handle(a)
    token = _client.flight(name)
    frames = getattr(_dumping, "frames", None)
    if frames:
        frames[-1].append(token)
    return _rebuild_ndarray, (name, offset, shape, dtype, strides, token,
                              bool(a.flags.writeable))


# Tokens put in flight by the dump in progress (per thread, nested dumps stacked): if the dump
# fails (an unpicklable function after the arrays, say), nobody will ever receive them, so they
# are cancelled at once instead of holding their segments until this process exits.
_dumping = threading.local()
_plain_dump = ForkingPickler.dump


def _dump_cancelling_on_error(self, obj):
    frames = getattr(_dumping, "frames", None)
    if frames is None:
        frames = _dumping.frames = []
    frames.append([])
    try:
        return _plain_dump(self, obj)
    except BaseException:
        for token in frames[-1]:
            _client.claim(token, None, new=False)  # a claim by nobody: the flight ends
        raise
    finally:
        frames.pop()


_installed = False


def init_reductions() -> None:
    """Register the reducers (idempotent); done when ``shm`` is imported."""
    global _installed
    if _installed:
        return
    ForkingPickler.register(np.ndarray, reduce_ndarray)
    ForkingPickler.dump = _dump_cancelling_on_error
    from . import cuda_ipc

    cuda_ipc.init_reductions()
    _installed = True
