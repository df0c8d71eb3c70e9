"""A small key-value store over ZeroMQ, hosted by rank 0 (like torch.distributed.TCPStore).

Note [Rendezvous]
~~~~~~~~~~~~~~~~~
Rank 0 binds a ROUTER socket at MASTER_ADDR:MASTER_PORT and serves the store from a thread;
every rank (rank 0 too) talks to it through a DEALER socket. Requests and replies are
messages as in Note [Framing] (msgpack header + HMAC, the value as the payload frame). Ops:

    set(key, value)            add(key, delta) -> int       check(keys) -> [bool]
    get(keys) -> [values]      (the server parks the request until every key exists)

The client enforces every deadline itself (the server never blocks): a `get` that times out
asks `check` which keys are missing, so the error names the ranks that did not arrive.
Rendezvous (see collectives.init_process_group): each rank sets ``init/<rank>`` to its host id,
pid and world size, waits for all of them, then each group exchanges its members' endpoints
under ``g<id>/ep/<rank>`` (see Note [Peer mesh]). A request whose HMAC fails is answered with
an unsigned refusal and logged by the server; the client reports a secret mismatch.
"""
from __future__ import annotations

import itertools
import threading
import time

import zmq

from . import wire
from .wire import log


class StoreServer:
    """The store, served by a daemon thread in rank 0."""

    def __init__(self, host: str, port: int, auth: wire.Auth):
        self.auth = auth
        self.sock = wire.context().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        try:
            self.sock.bind(f"tcp://{wire.resolve_ip(host)}:{port}")
        except zmq.ZMQError as e:
            self.sock.close(0)
            raise RuntimeError(f"init_process_group: rank 0 cannot host the store at "
                               f"{host}:{port} ({e}). Is another job using MASTER_PORT={port}? "
                               "Pick a free port.") from e
        self.data: dict[str, bytes] = {}
        self.waiters: list[tuple[bytes, int, list[str]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="zgrad-store", daemon=True)
        self.thread.start()

    def _reply(self, ident: bytes, header: dict, value: bytes | None = None):
        h = wire.packb(header)
        frames = [ident, h, self.auth.sign(h, value)] + ([value] if value is not None else [])
        self.sock.send_multipart(frames)

    def _serve(self):
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(frames)
        self.sock.close(linger=200)

    def _handle(self, frames):
        ident = frames[0].bytes
        h = frames[1].bytes if len(frames) > 1 else b""
        mac = frames[2].bytes if len(frames) > 2 else b""
        value = frames[3].bytes if len(frames) > 3 else None
        if len(frames) not in (3, 4) or not self.auth.verify(h, mac, value):
            log.warning("store: refused a request from %s: its HMAC does not match the job "
                        "secret (a peer without %s, or a stray connection)",
                        wire.peer_address(frames[1] if len(frames) > 1 else frames[0]),
                        wire.SECRET_ENV)
            self.sock.send_multipart([ident, wire.packb({"err": "auth"}), b""])
            return
        req = wire.unpackb(h)
        op, rid = req.get("op"), req.get("rid")
        if op == "set":
            self.data[req["key"]] = value or b""
            self._reply(ident, {"rid": rid, "ok": True})
            self._wake()
        elif op == "add":
            n = int.from_bytes(self.data.get(req["key"], b"\0" * 8), "little", signed=True)
            n += int(req["delta"])
            self.data[req["key"]] = n.to_bytes(8, "little", signed=True)
            self._reply(ident, {"rid": rid, "value": n})
            self._wake()
        elif op == "check":
            self._reply(ident, {"rid": rid, "present": [k in self.data for k in req["keys"]]})
        elif op == "get":
            self.waiters.append((ident, rid, list(req["keys"])))
            self._wake()
        elif op == "delete":
            self.data.pop(req["key"], None)
            self._reply(ident, {"rid": rid, "ok": True})
        else:
            self._reply(ident, {"rid": rid, "err": f"unknown op {op!r}"})

    def _wake(self):
        still = []
        for ident, rid, keys in self.waiters:
            if all(k in self.data for k in keys):
                vals = [self.data[k] for k in keys]
                self._reply(ident, {"rid": rid, "values": vals})
            else:
                still.append((ident, rid, keys))
        self.waiters = still

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)


class StoreAuthError(RuntimeError):
    """The store refused our request: our secret is not the job's."""


class StoreClient:
    """A thread-safe client of the store (one per process)."""

    def __init__(self, host: str, port: int, auth: wire.Auth, timeout_s: float):
        self.addr = f"tcp://{wire.resolve_ip(host)}:{port}"
        self.auth = auth
        self.timeout_s = timeout_s
        self.sock = wire.context().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(self.addr)
        self._lock = threading.Lock()
        self._rid = itertools.count()

    def _request(self, header: dict, value: bytes | None = None, timeout_s: float | None = None):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        with self._lock:
            rid = next(self._rid)
            wire_header = dict(header, rid=rid)
            h = wire.packb(wire_header)
            frames = [h, self.auth.sign(h, value)] + ([value] if value is not None else [])
            self.sock.send_multipart(frames)
            deadline = time.monotonic() + timeout_s
            while True:
                left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
                if not self.sock.poll(left_ms):
                    raise TimeoutError(f"store: no answer to {header.get('op')} "
                                       f"{header.get('key') or header.get('keys')} from {self.addr} "
                                       f"within {timeout_s:.1f}s")
                frames = self.sock.recv_multipart()
                if len(frames) >= 1 and wire.unpackb(frames[0]).get("err") == "auth":
                    raise StoreAuthError(
                        f"store at {self.addr} refused this rank: its job secret differs. Set the "
                        f"same {wire.SECRET_ENV} on every rank (or none, on one host).")
                if len(frames) != 2 or not self.auth.verify(frames[0], frames[1]):
                    log.warning("store client: dropped an unauthenticated reply from %s",
                                self.addr)
                    continue
                rep = wire.unpackb(frames[0])
                if rep.get("rid") != rid:
                    continue  # a late answer to a request that timed out
                if "err" in rep:
                    raise RuntimeError(f"store: {rep['err']}")
                return rep

    def set(self, key: str, value: bytes):
        self._request({"op": "set", "key": key}, bytes(value))

    def add(self, key: str, delta: int = 1) -> int:
        return self._request({"op": "add", "key": key, "delta": int(delta)})["value"]

    def check(self, keys: list[str]) -> list[bool]:
        return self._request({"op": "check", "keys": list(keys)})["present"]

    def delete_key(self, key: str):
        self._request({"op": "delete", "key": key})

    def get(self, key: str, timeout_s: float | None = None) -> bytes:
        return self.multi_get([key], timeout_s)[0]

    def multi_get(self, keys: list[str], timeout_s: float | None = None,
                  what: str = "store.get") -> list[bytes]:
        """Values of all `keys`, waiting until every one exists; TimeoutError names the missing."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            return self._request({"op": "get", "keys": list(keys)}, timeout_s=timeout_s)["values"]
        except TimeoutError:
            try:
                present = self.check(keys)
            except TimeoutError:
                raise TimeoutError(f"{what}: the store at {self.addr} (hosted by rank 0) did not "
                                   f"answer within {timeout_s:.1f}s; rank 0 may have died or "
                                   "not started (see its log).") from None
            missing = [k for k, p in zip(keys, present) if not p]
            raise TimeoutError(f"{what}: waited {timeout_s:.1f}s; still missing {missing}. Those "
                               "ranks did not arrive: they may have crashed, or not called it "
                               "(see their logs); or raise the timeout.") from None

    def close(self):
        with self._lock:
            self.sock.close(linger=200)
