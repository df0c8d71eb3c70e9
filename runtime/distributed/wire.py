"""Wire format, job secret and addresses shared by the store and the peer mesh.

Note [Framing]
~~~~~~~~~~~~~~
Every message on every zgrad socket is a ZeroMQ multipart message

    [header, mac, payload?]

- ``header`` is msgpack (a map of str keys to plain values). Nothing on a socket is ever
  unpickled: a message from the network can carry data, never code.
- ``mac`` is HMAC-SHA256 over the header bytes with the job secret (see Note [Job secret]).
  The header names the sender, a per-(sender, receiver) message counter (replays and lost
  messages are caught), and the exact byte size of the payload, so a payload frame cannot
  be swapped for one of another size. Payload bytes are MAC'd too for small messages
  (< ZERO_COPY_MIN_BYTES) and for every message when ``ZGRAD_AUTH_PAYLOAD=1``; by default large
  tensor payloads are not, because SHA-256 over 64 MiB costs more than sending it. A MITM on the
  TCP stream could then alter tensor bytes (never run code); set ZGRAD_AUTH_PAYLOAD=1 on
  untrusted networks.
- ``payload`` (at most one frame) is the raw bytes of a C-contiguous array. Large payloads
  are sent zero-copy (``copy=False`` with a tracker: the sender waits for ZeroMQ to release
  the buffer before the collective returns, so the caller may reuse its tensor), and received
  with ``copy=False`` and read through ``numpy.frombuffer`` without another copy.
A message whose MAC does not verify is dropped and logged with the peer's address.

Note [Job secret]
~~~~~~~~~~~~~~~~~
The key is ``ZGRAD_SECRET`` (the launcher generates one per job). Without it:
- on loopback (MASTER_ADDR is 127.x / ::1 / localhost) rank 0 writes a fresh random secret to
  ``$XDG_RUNTIME_DIR/zgrad/`` (or ``/tmp/zgrad-<uid>/``, a 0700 directory owned by the user)
  as ``job-<port>.secret`` (mode 0600) *before* it starts the store; other ranks of the same
  user read it. A stale file from an earlier job on the same port makes the store refuse the
  first request; the client re-reads the file and retries until the rendezvous timeout.
  Rank 0 removes the file once every rank has joined. So only processes of the same user on
  this host can join: a PyTorch-style script that sets
  only RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT works unchanged.
- on any other address the job refuses to start and says how to set a secret.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import socket
import stat
import time

import msgpack
import zmq

log = logging.getLogger("runtime.distributed")

SECRET_ENV = "ZGRAD_SECRET"
ZERO_COPY_MIN_BYTES = 64 * 1024

_ctx: zmq.Context | None = None
_ctx_pid: int | None = None


def context() -> zmq.Context:
    """This process's ZeroMQ context (a fresh one after fork: contexts do not survive fork)."""
    global _ctx, _ctx_pid
    if _ctx is None or _ctx_pid != os.getpid():
        # two I/O threads: sending and receiving a large ring piece proceed in parallel
        _ctx = zmq.Context(io_threads=int(os.environ.get("ZGRAD_ZMQ_IO_THREADS", "2")))
        _ctx_pid = os.getpid()
    return _ctx


def packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# ---------------------------------------------------------------------------------------------
# addresses


def resolve_ip(host: str) -> str:
    """The IP address of `host` (an IP stays as it is)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except OSError as e:
        raise ValueError(f"init_process_group: cannot resolve MASTER_ADDR {host!r} ({e}). "
                         "Set MASTER_ADDR to an IP address or a resolvable host name.") from e


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(resolve_ip(host)).is_loopback


def local_ip_towards(host: str, port: int) -> str:
    """The local interface address this host uses to reach host:port (no packet is sent)."""
    ip = resolve_ip(host)
    if ipaddress.ip_address(ip).is_loopback:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, port))
        return s.getsockname()[0]


# ---------------------------------------------------------------------------------------------
# secret (see Note [Job secret])


def _secret_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "zgrad") if base and os.path.isdir(base) else \
        os.path.join("/tmp", f"zgrad-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RuntimeError(f"init_process_group: {path} must be a directory owned by uid "
                           f"{os.getuid()} with mode 0700 (it holds job secrets); remove it or "
                           f"set {SECRET_ENV}.")
    return path


def secret_file(port: int) -> str:
    return os.path.join(_secret_dir(), f"job-{port}.secret")


def write_local_secret(port: int) -> bytes:
    """Rank 0 on loopback: a fresh random secret, written atomically with mode 0600."""
    key = secrets.token_hex(32).encode()
    path = secret_file(port)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return key


def read_local_secret(port: int, deadline: float) -> bytes:
    """Other ranks on loopback: wait (until `deadline`) for rank 0's secret file."""
    path = secret_file(port)
    while True:
        try:
            st = os.stat(path)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise RuntimeError(f"init_process_group: {path} is not private to this user; "
                                   f"remove it or set {SECRET_ENV}.")
            with open(path, "rb") as f:
                key = f.read()
            if key:
                return key
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"init_process_group: waited for rank 0 to write the job secret to "
                               f"{path}; rank 0 may not have started. Or set {SECRET_ENV} on "
                               "every rank.")
        time.sleep(0.02)


def remove_local_secret(port: int):
    try:
        os.unlink(secret_file(port))
    except OSError:
        pass


def env_secret() -> bytes | None:
    s = os.environ.get(SECRET_ENV)
    return s.encode() if s else None


def require_secret_for(host: str, what: str):
    """A job that listens on a non-loopback address must have ZGRAD_SECRET."""
    if env_secret() is None and not is_loopback(host):
        raise RuntimeError(
            f"{what}: refusing to listen on non-loopback address {host} without a job secret. "
            f"Set the same secret on every rank, e.g. export {SECRET_ENV}=$(python3 -c "
            "'import secrets; print(secrets.token_hex(32))') (the zgrad launcher does this "
            "for you).")


class Auth:
    """HMAC-SHA256 signing with the job secret (see Note [Framing])."""

    def __init__(self, key: bytes):
        self.key = key
        self.payload_always = os.environ.get("ZGRAD_AUTH_PAYLOAD", "0") == "1"

    def _covers(self, payload) -> bool:
        return payload is not None and (self.payload_always
                                        or memoryview(payload).nbytes < ZERO_COPY_MIN_BYTES)

    def sign(self, header: bytes, payload=None) -> bytes:
        if self._covers(payload):
            h = hmac.new(self.key, header, "sha256")
            h.update(memoryview(payload).cast("B"))
            return h.digest()
        return hmac.digest(self.key, header, "sha256")

    def verify(self, header: bytes, mac: bytes, payload=None) -> bool:
        return hmac.compare_digest(self.sign(header, payload), mac)


def send_msg(sock: zmq.Socket, auth: Auth, header: dict, payload=None, track: bool = False,
             flags: int = 0):
    """Send [header, mac, payload?]; returns a MessageTracker for zero-copy payloads, else None."""
    h = packb(header)
    mac = auth.sign(h, payload)
    if payload is None:
        sock.send_multipart([h, mac], flags=flags)
        return None
    big = memoryview(payload).nbytes >= ZERO_COPY_MIN_BYTES
    sock.send(h, flags | zmq.SNDMORE)
    sock.send(mac, flags | zmq.SNDMORE)
    res = sock.send(payload, flags, copy=not big, track=big and track)
    return res if (big and track) else None


def peer_address(frame) -> str:
    try:
        return frame.get("Peer-Address")
    except Exception:
        return "<unknown address>"


def recv_msg(sock: zmq.Socket, auth: Auth, what: str):
    """Receive one message (non-blocking); returns (header, payload memoryview or None), or
    None when the MAC did not verify (the message is dropped and logged)."""
    frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    if len(frames) not in (2, 3):
        log.warning("%s: refused a malformed message (%d frames) from %s", what, len(frames),
                    peer_address(frames[0]))
        return None
    h, mac = frames[0].bytes, frames[1].bytes
    payload = frames[2].buffer if len(frames) == 3 else None
    if not auth.verify(h, mac, payload):
        log.warning("%s: refused a message from %s: its HMAC does not match the job secret "
                    "(a peer without %s, or a stray connection)", what, peer_address(frames[0]),
                    SECRET_ENV)
        return None
    try:
        header = unpackb(h)
    except Exception:
        log.warning("%s: refused a message with an undecodable header from %s", what,
                    peer_address(frames[0]))
        return None
    if payload is not None and header.get("nb") != payload.nbytes:
        log.warning("%s: refused a message from %s whose payload is %d bytes, header says %s",
                    what, peer_address(frames[0]), payload.nbytes, header.get("nb"))
        return None
    return header, payload
