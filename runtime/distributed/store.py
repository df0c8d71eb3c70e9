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
under ``g<id>/ep/<rank>`` (see Note [Peer mesh]).

Requests and replies are bound to this store and this client (see Note [Wire MAC]): a client
first says hello and learns the server's random ``sid``; every request then carries the
client's random ``cid`` and a counter ``n`` that must grow, and is signed with ``sid`` in the
context, so a request replayed from another job's store or within this one is refused. The
client checks a reply's MAC before it decodes it. A request that fails its MAC is dropped and
counted (Note [Unauthenticated bytes]: the store reads its socket all the time, so what
a stranger sends is dropped as fast as it comes) and answered with the bare ``REFUSED`` frame: the
client cannot verify that (the store does not know our secret), so it reads it as "what
listens there does not share our secret", never as the store's word on anything else.
"""
from __future__ import annotations

import secrets
import threading
import time

import zmq

from . import wire

REFUSED = b"zgrad-store-refused"     # the only unsigned frame the server sends
_HELLO_CTX = b"zgrad-store-hello"


def _req_ctx(sid: bytes) -> bytes:
    return b"zgrad-store-req|" + sid


def _rep_ctx(sid: bytes, cid: bytes) -> bytes:
    return b"zgrad-store-rep|" + sid + b"|" + cid


class StoreServer:
    """The store, served by a daemon thread in rank 0."""

    def __init__(self, host: str, port: int, auth: wire.Auth):
        self.auth = auth
        self.sid = secrets.token_bytes(16)
        self.sock = wire.context().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 1000)
        wire.limit_socket(self.sock, wire.STORE_MAX_BYTES)
        try:
            self.sock.bind(f"tcp://{wire.resolve_ip(host)}:{port}")
        except zmq.ZMQError as e:
            self.sock.close(0)
            raise RuntimeError(f"init_process_group: rank 0 cannot host the store at "
                               f"{host}:{port} ({e}). Another process holds that port: another "
                               "job on the same MASTER_PORT, or, under torchrun, something on "
                               "MASTER_PORT + 1. Pick a free MASTER_PORT, or set "
                               "ZGRAD_STORE_PORT.") from e
        self.data: dict[str, bytes] = {}
        self.waiters: list[tuple[bytes, bytes, int, list[str]]] = []
        self.last_n: dict[bytes, int] = {}      # cid -> the highest counter served
        self.refusals = wire.Refusals("store")
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="zgrad-store", daemon=True)
        self.thread.start()

    def _reply(self, ident: bytes, cid: bytes, header: dict):
        h = wire.packb(header)
        self.sock.send_multipart([ident, h, self.auth.sign(h, None, _rep_ctx(self.sid, cid))])

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
        self.refusals.report()
        self.sock.close(linger=200)

    def _refuse(self, frames, why: str):
        self.refusals.refuse(wire.peer_address(frames[1] if len(frames) > 1 else frames[0]), why)
        self.sock.send_multipart([frames[0].bytes, REFUSED])

    def _handle(self, frames):
        """Verify, then decode (Note [Wire MAC]), then serve one request."""
        if len(frames) not in (3, 4):
            return self._refuse(frames, f"a malformed request ({len(frames) - 1} frames)")
        ident, h, mac = frames[0].bytes, frames[1].bytes, frames[2].bytes
        value = frames[3].bytes if len(frames) == 4 else None
        if self.auth.verify(h, mac, value, _req_ctx(self.sid)):
            hello = False
        elif value is None and self.auth.verify(h, mac, None, _HELLO_CTX):
            hello = True
        else:
            return self._refuse(frames, "its HMAC does not match the job secret and this store")
        try:
            req = wire.unpackb(h)
            cid, n, op = bytes(req["cid"]), int(req["n"]), req["op"]
        except Exception:
            return self._refuse(frames, "a signed but malformed request")
        if hello:
            h = wire.packb({"sid": self.sid, "n": n})
            self.sock.send_multipart([ident, h, self.auth.sign(h, None, _HELLO_CTX + cid)])
            return
        if n <= self.last_n.get(cid, 0):
            return self._refuse(frames, f"a replayed request (counter {n} already served)")
        self.last_n[cid] = n
        self._serve_op(ident, cid, n, op, req, value)

    def _serve_op(self, ident, cid, n, op, req, value):
        if op == "set":
            self.data[req["key"]] = value or b""
            self._reply(ident, cid, {"n": n, "ok": True})
            self._wake()
        elif op == "add":
            v = int.from_bytes(self.data.get(req["key"], b"\0" * 8), "little", signed=True)
            v += int(req["delta"])
            self.data[req["key"]] = v.to_bytes(8, "little", signed=True)
            self._reply(ident, cid, {"n": n, "value": v})
            self._wake()
        elif op == "check":
            self._reply(ident, cid, {"n": n, "present": [k in self.data for k in req["keys"]]})
        elif op == "get":
            self.waiters.append((ident, cid, n, list(req["keys"])))
            self._wake()
        elif op == "delete":
            self.data.pop(req["key"], None)
            self._reply(ident, cid, {"n": n, "ok": True})
        else:
            self._reply(ident, cid, {"n": n, "err": f"unknown op {op!r}"})

    def _wake(self):
        still = []
        for ident, cid, n, keys in self.waiters:
            if all(k in self.data for k in keys):
                self._reply(ident, cid, {"n": n, "values": [self.data[k] for k in keys]})
            else:
                still.append((ident, cid, n, keys))
        self.waiters = still

    def close(self):
        self._stop.set()
        self.thread.join(timeout=5)


class StoreAuthError(RuntimeError):
    """What listens at the store's address refused us: its job secret is not ours."""


class StoreError(RuntimeError):
    """The store's address answered with something we cannot trust or use."""


class StoreClient:
    """A thread-safe client of the store (one per process)."""

    def __init__(self, host: str, port: int, auth: wire.Auth, timeout_s: float):
        self.addr = f"tcp://{wire.resolve_ip(host)}:{port}"
        self.auth = auth
        self.timeout_s = timeout_s
        self.sock = wire.context().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 500)
        wire.limit_socket(self.sock, wire.STORE_MAX_BYTES)
        self.sock.connect(self.addr)
        self._lock = threading.Lock()
        self.cid = secrets.token_bytes(16)
        self.sid: bytes | None = None
        self._n = 0

    def _request(self, header: dict, value: bytes | None = None, timeout_s: float | None = None):
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if value is not None and len(value) > wire.STORE_MAX_BYTES - 1024:
            raise ValueError(f"store: a value of {len(value)} bytes for {header.get('key')!r}; "
                             f"the store takes at most {wire.STORE_MAX_BYTES - 1024} bytes")
        with self._lock:
            deadline = time.monotonic() + timeout_s
            what = (header, timeout_s)
            if self.sid is None:
                self.sid = self._exchange({"op": "hello"}, None, _HELLO_CTX,
                                          _HELLO_CTX + self.cid, deadline, what)["sid"]
            return self._exchange(header, value, _req_ctx(self.sid),
                                  _rep_ctx(self.sid, self.cid), deadline, what)

    def _exchange(self, header, value, req_ctx, rep_ctx, deadline, what):
        """Send one signed request; return its verified, decoded reply."""
        self._n += 1
        n = self._n
        h = wire.packb(dict(header, cid=self.cid, n=n))
        frames = [h, self.auth.sign(h, value, req_ctx)] + ([value] if value is not None else [])
        self.sock.send_multipart(frames)
        while True:
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not self.sock.poll(left_ms):
                req, timeout_s = what
                raise TimeoutError(f"store: no answer to {req.get('op')} "
                                   f"{req.get('key') or req.get('keys')} from {self.addr} "
                                   f"within {timeout_s:.1f}s")
            rep = self._verified(self.sock.recv_multipart(), rep_ctx)
            if rep.get("n") != n:
                continue  # a late answer to a request that timed out
            if "err" in rep:
                raise StoreError(f"store at {self.addr}: {rep['err']}")
            return rep

    def _verified(self, frames: list[bytes], ctx: bytes) -> dict:
        """The decoded reply, once its MAC verified (Note [Wire MAC]); else a clear error."""
        if frames == [REFUSED]:
            raise StoreAuthError(
                f"store at {self.addr} refused this rank: its job secret differs (or another "
                f"program listens there). Set the same {wire.SECRET_ENV} on every rank (or "
                "none, on one host), and check that MASTER_PORT belongs to this job.")
        if len(frames) != 2 or not self.auth.verify(frames[0], frames[1], None, ctx):
            raise StoreError(
                f"store: the answer from {self.addr} ({len(frames)} frames) is not signed with "
                "this job's secret for this request. Is something other than this job's rank 0 "
                "listening on MASTER_PORT? Pick a free port.")
        try:
            rep = wire.unpackb(frames[0])
        except Exception as e:
            raise StoreError(f"store: a signed answer from {self.addr} does not decode "
                             f"({type(e).__name__}); rank 0 runs another zgrad version?") from e
        if not isinstance(rep, dict):
            raise StoreError(f"store: a signed answer from {self.addr} is not a map")
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
