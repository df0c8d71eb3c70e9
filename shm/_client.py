"""This process's one connection to the job's shm manager (see Note [Shm lifetime] in segment.py).

Messages are one line each and fire-and-forget; a line's sequence number is its 1-based index on
the connection (the manager counts the same way), which is how a claim names the flight it
consumes. Weakref callbacks (an mmap going away) may run inside a send on the same thread, so
they never block: they queue the release and the lock holder flushes it.
"""
from __future__ import annotations

import collections
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time

from . import segment as _seg

_MANAGER_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manager.py")
_GRACE_ENV = "ZGRAD_SHM_FLIGHT_GRACE_S"
_CONNECT_TIMEOUT_S = 30.0


class _Conn:
    def __init__(self):
        self.lock = threading.Lock()
        # a raw fd, not a socket object: the connection must stay open until the process is
        # gone (feeder threads still pickle during interpreter exit), and a socket object left
        # open at exit warns (ResourceWarning); the kernel closes the fd when we die
        self.fd = -1
        self.reconnecting = False  # set once connected: a later connect is to a new manager
        self.cid = ""
        self.seq = 0
        self.pending: collections.deque[str] = collections.deque()


_conn = _Conn()
_fork_token: list = []  # (cid, seq, names) put in flight by the parent in before-fork


def _start_manager(job: str, addr: str) -> None:
    grace = os.environ.get(_GRACE_ENV, "30")
    log = os.environ.get("ZGRAD_SHM_LOG", "")
    cmd = [sys.executable, "-I", "-S", _MANAGER_PY, job, str(_seg.job_root_pid()),
           addr.replace("\0", "@"), grace, log]
    # The script binds the socket, forks and its first process exits: when run() returns the
    # manager is listening, and it is nobody's child (no zombie, survives our death).
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, start_new_session=True,
                       timeout=_CONNECT_TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError(f"shm: could not start the shm manager for job {job} "
                           f"({' '.join(cmd)}): exit {r.returncode}: "
                           f"{r.stderr.decode(errors='replace').strip()}")


def _connect_locked(c: _Conn) -> None:
    job = _seg.job_id()
    addr = _seg.manager_address(job)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_CONNECT_TIMEOUT_S)
        try:
            sock.connect(addr)
        except (ConnectionRefusedError, FileNotFoundError):
            _start_manager(job, addr)
            sock.connect(addr)
        sock.setblocking(True)
    except BaseException:
        sock.close()
        raise
    c.fd, c.seq = sock.detach(), 0
    c.cid = f"{os.getpid()}-{secrets.token_hex(4)}"
    lines = [f"H {c.cid} {os.getpid()}\n"]
    if c.reconnecting:  # a fresh manager (the old one died) must learn what we hold
        lines += [f"O {n}\n" for n in _seg.live_names()]
    c.reconnecting = True
    _send_raw_locked(c, lines)


def _send_raw_locked(c: _Conn, lines: list[str]) -> int:
    view = memoryview("".join(lines).encode())
    while view:
        view = view[os.write(c.fd, view):]
    c.seq += len(lines)
    return c.seq


def _send_locked(c: _Conn, lines: list[str]) -> int:
    """Send lines (after any queued releases); returns the seq of the last one.

    A fork child's first connection announces nothing: its inherited mappings are claimed
    from the parent's fork flight (_after_fork_child)."""
    while c.pending:
        lines.insert(0, c.pending.pop())
    for attempt in (0, 1):
        try:
            if c.fd < 0:
                _connect_locked(c)
            return _send_raw_locked(c, lines)
        except OSError:
            if c.fd >= 0:
                os.close(c.fd)
            c.fd = -1
            if attempt:
                raise
    raise AssertionError("unreachable")


def _send(lines: list[str]) -> tuple[str, int]:
    c = _conn
    with c.lock:
        seq = _send_locked(c, lines)
        cid = c.cid
    _drain()
    return cid, seq


def _drain() -> None:
    """Flush releases queued while the lock was busy (never blocks)."""
    c = _conn
    while c.pending and c.lock.acquire(blocking=False):
        try:
            if c.pending:
                try:
                    _send_locked(c, [])
                except OSError:
                    pass  # the manager is gone; its death already dropped our holds
        finally:
            c.lock.release()


def hold(name: str) -> None:
    _send([f"O {name}\n"])


def release(name: str) -> None:
    """Called from weakref callbacks: queue, then flush if nobody holds the lock."""
    _conn.pending.append(f"R {name}\n")
    _drain()


def forget(name: str) -> None:
    _send([f"U {name}\n"])


def flight(name: str) -> tuple[str, int]:
    """Put one handle to `name` in flight; returns its token (cid, seq)."""
    return _send([f"F {name}\n"])


def claim(token, name: str | None, new: bool) -> None:
    cid, seq = token
    entry = f" {name}={int(new)}" if name else ""
    _send([f"C {cid} {seq}{entry}\n"])


def request(cmd: str, timeout_s: float = 10.0) -> str:
    """Send a request line ('P' ping, 'S' stats) and return the manager's one-line answer."""
    c = _conn
    with c.lock:
        _send_locked(c, [cmd + "\n"])
        buf = b""
        deadline = time.monotonic() + timeout_s
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([c.fd], [], [], left)[0]:
                raise TimeoutError(f"shm: the manager did not answer {cmd!r} in {timeout_s}s")
            chunk = os.read(c.fd, 65536)
            if not chunk:
                raise ConnectionError("shm: the manager closed the connection")
            buf += chunk
    return buf.decode().strip()


def stats(timeout_s: float = 10.0) -> dict[str, int]:
    """The manager's counts: segments it tracks, handles in flight, clients, and its pid."""
    return {k: int(v) for k, v in (kv.split("=") for kv in request("S", timeout_s).split())}


def sync(timeout_s: float = 10.0) -> None:
    """Wait until the manager has processed everything this process sent."""
    request("P", timeout_s)


# ------------------------------------------------------------------------------------------
# fork: see Note [Shm lifetime]


def _before_fork():
    c = _conn
    c.lock.acquire()
    _fork_token.clear()
    names = _seg.live_names()
    if names:
        try:
            seq = _send_locked(c, [f"F {' '.join(names)}\n"])
            _fork_token.append((c.cid, seq, names))
        except OSError:
            pass


def _after_fork_parent():
    _conn.lock.release()
    _drain()


def _after_fork_child():
    global _conn
    old = _conn
    if old.fd >= 0:
        os.close(old.fd)  # our copy only: the parent's connection stays open
    _conn = _Conn()
    _seg._maps_lock = threading.Lock()  # another parent thread may have held it at fork
    from . import arrays

    arrays._reset_after_fork()
    if _fork_token:
        cid, seq, names = _fork_token[0]
        _fork_token.clear()
        entries = " ".join(f"{n}={int(_seg.live_map(n) is not None)}" for n in names)
        try:
            with _conn.lock:
                _send_locked(_conn, [f"C {cid} {seq} {entries}\n"])
        except OSError as e:  # pragma: no cover
            print(f"shm: child {os.getpid()} could not reach the shm manager: {e}",
                  file=sys.stderr)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                    after_in_child=_after_fork_child)
