"""broadcast_object_list and all_gather_object, serialised with msgpack (never pickle).

msgpack carries None, bool, int, float, str, bytes, lists/tuples and dicts; numpy arrays and
numpy scalars travel as an ext type (dtype, shape, raw bytes), rebuilt without running code.
Anything else is refused with a TypeError that names the object and says what to send.
"""
from __future__ import annotations

import msgpack
import numpy as np

from .api import _group
from .collectives import all_gather, broadcast

_EXT_NDARRAY = 1


def _default(what: str):
    def enc(obj):
        if isinstance(obj, (np.ndarray, np.generic)):
            a = np.ascontiguousarray(obj)
            if a.dtype.hasobject:
                raise TypeError(f"{what}: cannot send a numpy array of dtype object")
            return msgpack.ExtType(_EXT_NDARRAY, msgpack.packb(
                [a.dtype.str, list(a.shape), a.tobytes(), isinstance(obj, np.generic)]))
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        raise TypeError(f"{what}: cannot serialise an object of type {type(obj).__name__} "
                        f"({obj!r:.60}); zgrad sends objects with msgpack, never pickle. Send "
                        "dicts/lists/str/int/float/bytes/None or numpy arrays (convert a Tensor "
                        "with .numpy(), a dataclass with dataclasses.asdict).")
    return enc


def _ext_hook(code, data):
    if code != _EXT_NDARRAY:
        return msgpack.ExtType(code, data)
    dtype, shape, raw, scalar = msgpack.unpackb(data, raw=False)
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise ValueError("received a numpy array of dtype object; refused")
    a = np.frombuffer(raw, dt).reshape(shape).copy()
    return a[()] if scalar else a


def dumps(obj, what: str) -> bytes:
    return msgpack.packb(obj, default=_default(what), use_bin_type=True, strict_types=False)


def loads(data: bytes):
    return msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, strict_map_key=False)


def broadcast_object_list(object_list: list, src: int = 0, group=None, device=None):
    """Replace the items of object_list on every rank by those of global rank `src`."""
    pg = _group(group, "broadcast_object_list")
    if pg is None:
        return
    is_src = pg.ranks[pg.rank()] == src
    payload = dumps(list(object_list), "broadcast_object_list") if is_src else b""
    size = np.array([len(payload)], np.int64)
    broadcast(size, src, group)
    buf = np.frombuffer(payload, np.uint8).copy() if is_src else np.empty(int(size[0]), np.uint8)
    broadcast(buf, src, group)
    if not is_src:
        objs = loads(buf.tobytes())
        if len(objs) != len(object_list):
            raise ValueError(f"broadcast_object_list: src sent {len(objs)} objects, this rank's "
                             f"list has {len(object_list)}; use lists of the same length")
        object_list[:] = objs


def all_gather_object(object_list: list, obj, group=None):
    """object_list[r] = obj of group rank r."""
    pg = _group(group, "all_gather_object")
    if pg is None:
        return
    n = pg.size()
    if len(object_list) != n:
        raise ValueError(f"all_gather_object: object_list must have world_size ({n}) items, "
                         f"got {len(object_list)}")
    payload = np.frombuffer(dumps(obj, "all_gather_object"), np.uint8)
    sizes = [np.zeros(1, np.int64) for _ in range(n)]
    all_gather(sizes, np.array([payload.size], np.int64), group)
    width = int(max(s[0] for s in sizes))
    padded = np.zeros(width, np.uint8)
    padded[:payload.size] = payload
    bufs = [np.empty(width, np.uint8) for _ in range(n)]
    all_gather(bufs, padded, group)
    for r in range(n):
        object_list[r] = loads(bufs[r][:int(sizes[r][0])].tobytes())
