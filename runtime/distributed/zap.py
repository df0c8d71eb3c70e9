"""The connection gate of the mesh's ZeroMQ sockets: only holders of the job secret connect.

Note [Connection gate]
~~~~~~~~~~~~~~~~~~~~~~
A mesh PULL socket is a ZeroMQ PLAIN server with ``ZMQ_ZAP_ENFORCE_DOMAIN``: every
connection must pass a ZAP check (ZeroMQ's authentication protocol, answered by one daemon
thread per process and ZeroMQ context, on ``inproc://zeromq.zap.01``) before ZeroMQ queues
a single frame from it. Our PUSH sockets log in with a password derived from the job secret
(HMAC-SHA256(secret, "zgrad-zap-password")); a connection with anything else is refused at
the handshake and counted per peer address in the socket's ``Refusals`` (see Note
[Unauthenticated bytes]). Each server socket has its own ZAP domain (a random id), so the
handler knows which socket, and so which secret and which log, a request is for.

Why PLAIN and not CURVE: CURVE (libzmq's bundled crypto here) encrypts every message at
about 90 MB/s and added ~8 us per message, while the gate only has to decide who may
connect; the password travels in clear, which gives an eavesdropper on the path nothing it
could not already do by injecting into the TCP stream, and every message is still MAC'd
(Note [Wire MAC]).
"""
from __future__ import annotations

import atexit
import hmac
import os
import secrets
import threading

import zmq

from . import wire

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_USER = b"zgrad"


def password(key: bytes) -> bytes:
    """The PLAIN password of a job with secret `key`."""
    return hmac.new(key, b"zgrad-zap-password", "sha256").hexdigest().encode()


class _Handler:
    """Answers ZAP requests for the server sockets of one ZeroMQ context."""

    def __init__(self, ctx: zmq.Context):
        self.domains: dict[bytes, tuple[bytes, wire.Refusals]] = {}
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(_ZAP_ENDPOINT)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="zgrad-zap", daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            if not self.sock.poll(100):
                continue
            req = self.sock.recv_multipart()
            # version, request id, domain, address, identity, mechanism, credentials...
            version, rid, domain, addr, _identity, mechanism = req[:6]
            creds = req[6:]
            entry = self.domains.get(domain)
            ok = (entry is not None and mechanism == b"PLAIN" and len(creds) == 2
                  and creds[0] == _USER and hmac.compare_digest(creds[1], entry[0]))
            if not ok and entry is not None:
                entry[1].refuse(addr.decode(errors="replace"),
                                "its ZeroMQ login does not match the job secret", "connection")
            self.sock.send_multipart([version, rid, b"200" if ok else b"400",
                                      b"OK" if ok else b"denied", b"", b""])

    def stop(self):
        self._stop.set()
        self.thread.join(1)
        self.sock.close(0)


_handler: _Handler | None = None
_handler_pid: int | None = None
_lock = threading.Lock()


def _current() -> _Handler:
    global _handler, _handler_pid
    with _lock:
        if _handler is None or _handler_pid != os.getpid():   # a fresh one after fork
            _handler, _handler_pid = _Handler(wire.context()), os.getpid()
        return _handler


@atexit.register
def _stop_handler():
    # before interpreter teardown: a REP socket left open would block the context's term()
    if _handler is not None and _handler_pid == os.getpid():
        _handler.stop()


def gate_server(sock: zmq.Socket, key: bytes, refusals: wire.Refusals) -> bytes:
    """Make `sock` (before bind) accept only connections that log in with `key`'s password;
    refusals are counted in `refusals`. Returns the socket's domain (see release)."""
    domain = b"zgrad-" + secrets.token_hex(8).encode()
    _current().domains[domain] = (password(key), refusals)
    sock.setsockopt(zmq.PLAIN_SERVER, 1)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)     # no handler: refuse, never accept
    return domain


def gate_client(sock: zmq.Socket, key: bytes):
    """Make `sock` (before connect) log in with `key`'s password."""
    sock.setsockopt(zmq.PLAIN_USERNAME, _USER)
    sock.setsockopt(zmq.PLAIN_PASSWORD, password(key))


def release(domain: bytes):
    """Forget a closed server socket's domain."""
    if _handler is not None and _handler_pid == os.getpid():
        _handler.domains.pop(domain, None)
