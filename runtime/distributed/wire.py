"""Wire format, job secret and addresses shared by the store and the peer mesh.

Note [Framing]
~~~~~~~~~~~~~~
Every message on every zgrad socket is a ZeroMQ multipart message

    [header, mac, payload frames...]

- ``header`` is msgpack (a map of str keys to plain values). Nothing on a socket is ever
  unpickled: a message from the network can carry data, never code.
- ``mac`` is HMAC-SHA256 with the job secret (see Note [Job secret]) over a *context* and the
  header bytes (see Note [Wire MAC]). The header names the sender, a per-(sender, receiver)
  message counter (replays and lost messages are caught), and the exact byte size of the
  payload, so payload frames cannot be swapped for ones of another size. Payload bytes are
  MAC'd too for small messages (< ZERO_COPY_MIN_BYTES) and for every message when
  ``ZGRAD_AUTH_PAYLOAD=1``; by default large tensor payloads are not, because SHA-256 over
  64 MiB costs more than sending it. A MITM on the TCP stream could then alter tensor bytes
  (never run code); set ZGRAD_AUTH_PAYLOAD=1 on untrusted networks.
- the payload is the raw bytes of a C-contiguous array, cut into frames of at most
  ``FRAME_MAX_BYTES`` (see Note [Unauthenticated bytes]). Large frames are sent zero-copy
  (``copy=False`` with a tracker: the sender waits for ZeroMQ to release the buffer before
  the collective returns, so the caller may reuse its tensor), and received with
  ``copy=False``; a one-frame payload is read through ``numpy.frombuffer`` without a copy.

Note [Wire MAC]
~~~~~~~~~~~~~~~
A MAC proves "someone with the job secret signed this header", not "for this job, this group
and this receiver": with the header alone, a frame captured in one group (or one job sharing
ZGRAD_SECRET) verifies in another, where counters restart at 0. So the MAC covers
``context || header`` where the context is never sent, and each side builds it from what it
knows itself:

    peer mesh   b"zgrad-msg|" job | group | dst     job: a random id rank 0 draws at
                                                    rendezvous; group: the group's name
                                                    (its id); dst: the receiver's rank
    store       b"zgrad-store-req|" sid             sid: a random id drawn by the server
                b"zgrad-store-rep|" sid | cid       cid: a random id drawn by the client
    data hello  b"zgrad-data|" job | group | the listener's address | src, dst | nonce

and the header carries the sender and its counter (mesh: per (sender, receiver), starting
at 0; store: per client, increasing). A frame replayed into another job, group or receiver
fails the MAC; one replayed into the same link fails the counter check. The store's hello
(how a client learns ``sid``) is signed with ``b"zgrad-store-hello"`` and its answer with the
client's ``cid``; it changes no state, so a replayed hello only earns a reply the replayer
cannot use. The receiver verifies before it decodes anything (Note [Unauthenticated bytes]).

Note [Unauthenticated bytes]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Anyone who can reach a port can send bytes before we know whether they hold the secret, so
what a stranger can make a rank hold is bounded:
- the mesh's ZeroMQ sockets admit a connection only once it logged in with a password
  derived from the job secret (Note [Connection gate]): a peer without the secret is
  dropped at the handshake and never gets a frame into a queue, also in a group whose
  collectives run on shared memory and never read the mesh. The data channel checks its
  hello the same way (Note [Data channel]).
- every receiving socket (mesh PULL, store ROUTER) sets ``ZMQ_MAXMSGSIZE``: ZeroMQ drops the
  connection of a peer that announces a larger frame, during the handshake too, before it
  allocates it. Our own payloads are cut into frames of at most ``FRAME_MAX_BYTES``
  (4 MiB; store values are limited to ``STORE_MAX_BYTES``), so the limit never bites a member.
- the store (which has no gate: a rank with a stale secret file must be told so, see
  Note [Job secret]) is read continuously by its thread; a request that fails the MAC is
  dropped when read, before it is decoded or queued. Every refusal (a gate's, the store's,
  a signed mesh frame in the wrong context, Note [Wire MAC]) is counted per peer address;
  the first from a peer is logged at once, the total when the socket closes (``Refusals``):
  one line per peer, not one per message.
- no receive high-water mark: libzmq 4.3 asserts (kills the process) when a connection whose
  input stopped at a finite ZMQ_RCVHWM dies or misses heartbeats (zeromq/libzmq#3937,
  #4229), which a stranger can cause at will; and a stopped input stalls our heartbeats.
Not bounded: the store's queue while a stranger out-sends its thread, and a never-ending
multipart message to the store (ZeroMQ holds a message's frames until the last one).

Note [Job secret]
~~~~~~~~~~~~~~~~~
The key is ``ZGRAD_SECRET`` (the launcher generates one per job). Without it:
- on loopback (MASTER_ADDR is 127.x / ::1 / localhost) rank 0 draws a fresh random secret,
  binds the store's port, and only then writes the secret to ``$XDG_RUNTIME_DIR/zgrad/`` (or
  ``/tmp/zgrad-<uid>/``, a 0700 directory owned by the user) as ``job-<port>.secret`` (mode
  0600): a second job started on a port in use fails before it touches the first job's
  file. Other ranks of the same user read it. A stale file from an earlier job on the same
  port makes the store refuse the first request; the client re-reads the file and retries
  until the rendezvous timeout. Rank 0 removes the file once every rank has joined, and only
  if it still holds this job's secret (it never removes a file it did not write). So only
  processes of the same user on this host can join: a PyTorch-style script that sets only
  RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT works unchanged.
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
# see Note [Unauthenticated bytes]
FRAME_MAX_BYTES = 4 << 20             # payload frames of the mesh (a ring piece is one frame)
STORE_MAX_BYTES = 512 * 1024          # a store request or reply frame

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


def new_secret() -> bytes:
    """A fresh random job secret (rank 0 on loopback, see Note [Job secret])."""
    return secrets.token_hex(32).encode()


def write_local_secret(port: int, key: bytes) -> str:
    """Rank 0 on loopback, once it holds the store's port: publish `key` for the other ranks,
    atomically with mode 0600. Returns the path (see remove_local_secret)."""
    path = secret_file(port)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


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


def remove_local_secret(port: int, key: bytes):
    """Remove the secret file of `port` if it still holds `key`: a file another job wrote
    (after this one released the port) is theirs."""
    path = secret_file(port)
    try:
        with open(path, "rb") as f:
            if not hmac.compare_digest(f.read(), key):
                return
        os.unlink(path)
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
    """HMAC-SHA256 signing with the job secret (see Note [Framing] and Note [Wire MAC])."""

    def __init__(self, key: bytes, job: bytes = b""):
        self.key = key
        self.job = job              # this job's random id, bound into every mesh MAC
        self.payload_always = os.environ.get("ZGRAD_AUTH_PAYLOAD", "0") == "1"

    def for_job(self, job: bytes) -> "Auth":
        """The same secret, bound to job id `job`."""
        return Auth(self.key, job)

    def _covers(self, parts) -> bool:
        return bool(parts) and (self.payload_always
                                or sum(memoryview(p).nbytes for p in parts) < ZERO_COPY_MIN_BYTES)

    def sign(self, header: bytes, payload=None, ctx: bytes = b"") -> bytes:
        """MAC of ctx || header (|| payload frames, when covered). `payload`: a buffer, a
        list of buffers or None."""
        parts = _parts(payload)
        if self._covers(parts):
            h = hmac.new(self.key, ctx + header, "sha256")
            for p in parts:
                h.update(memoryview(p).cast("B"))
            return h.digest()
        return hmac.digest(self.key, ctx + header, "sha256")

    def verify(self, header: bytes, mac: bytes, payload=None, ctx: bytes = b"") -> bool:
        return hmac.compare_digest(self.sign(header, payload, ctx), mac)


def _parts(payload) -> list:
    if payload is None:
        return []
    return payload if isinstance(payload, list) else [payload]


def limit_socket(sock: zmq.Socket, max_bytes: int):
    """Bound the frames a receiving socket takes (Note [Unauthenticated bytes]); call before
    bind: ZeroMQ copies the options into the listener."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.RCVHWM, 0)     # see the Note: a finite one crashes libzmq 4.3


def send_msg(sock: zmq.Socket, auth: Auth, header: dict, payload=None, track: bool = False,
             flags: int = 0, ctx: bytes = b""):
    """Send [header, mac, payload frames...]; returns the MessageTrackers of zero-copy frames
    (a list, empty when none)."""
    h = packb(header)
    if payload is None:
        sock.send_multipart([h, auth.sign(h, None, ctx)], flags=flags)
        return []
    buf = memoryview(payload).cast("B")
    frames = [buf[i:i + FRAME_MAX_BYTES] for i in range(0, buf.nbytes, FRAME_MAX_BYTES)] or [buf]
    sock.send(h, flags | zmq.SNDMORE)
    sock.send(auth.sign(h, frames, ctx), flags | zmq.SNDMORE)
    trackers = []
    for i, f in enumerate(frames):
        big = f.nbytes >= ZERO_COPY_MIN_BYTES
        more = zmq.SNDMORE if i < len(frames) - 1 else 0
        res = sock.send(f, flags | more, copy=not big, track=big and track)
        if big and track:
            trackers.append(res)
    return trackers


def peer_address(frame) -> str:
    try:
        return frame.get("Peer-Address")
    except Exception:
        return "<unknown address>"


class Refusals:
    """Counts refused messages per peer address; logs a peer's first refusal at once and its
    total at close (see Note [Unauthenticated bytes])."""

    def __init__(self, what: str):
        self.what = what
        self.counts: dict[str, tuple[int, str]] = {}   # addr -> (refusals, what was refused)

    def refuse(self, addr: str, why: str, kind: str = "message"):
        n = self.counts.get(addr, (0, kind))[0] + 1
        self.counts[addr] = (n, kind)
        if n == 1:
            log.warning("%s: refused a %s from %s: %s (a peer without %s, or a stray "
                        "connection); further refusals from %s are counted, the total is "
                        "logged when this socket closes", self.what, kind, addr, why,
                        SECRET_ENV, addr)

    def report(self):
        """Log one line per peer refused more than once, with the count."""
        for addr, (n, kind) in self.counts.items():
            if n > 1:
                log.warning("%s: refused %d %ss in all from %s", self.what, n, kind, addr)
        self.counts.clear()


def recv_msg(sock: zmq.Socket, auth: Auth, refusals: Refusals, ctx: bytes = b""):
    """Receive one message (non-blocking); returns (header, payload), payload a memoryview
    (one frame), a list of memoryviews (several) or None; or None when the message was
    refused (MAC first, then the header is decoded: Note [Wire MAC])."""
    frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
    if len(frames) < 2:
        refusals.refuse(peer_address(frames[0]), f"a malformed message ({len(frames)} frames)")
        return None
    h, mac = frames[0].bytes, frames[1].bytes
    parts = [f.buffer for f in frames[2:]]
    if not auth.verify(h, mac, parts, ctx):
        refusals.refuse(peer_address(frames[0]), "its HMAC does not match the job secret")
        return None
    try:
        header = unpackb(h)
    except Exception:
        refusals.refuse(peer_address(frames[0]), "a signed but undecodable header")
        return None
    nbytes = sum(p.nbytes for p in parts)
    if parts and header.get("nb") != nbytes:
        refusals.refuse(peer_address(frames[0]),
                        f"its payload is {nbytes} bytes, its header says {header.get('nb')}")
        return None
    payload = None if not parts else parts[0] if len(parts) == 1 else parts
    return header, payload
