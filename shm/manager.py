"""The per-job shm manager: counts holders of every segment and unlinks it at zero.

Protocol and reasoning: Note [Shm lifetime] in shm/segment.py. This file is run as a script
(``python -I -S manager.py JOB ROOT_PID ADDRESS GRACE_S LOGFILE``) and imports only the standard
library, so it starts fast and does not depend on sys.path. An ADDRESS starting with '@' is a
Linux abstract socket.

Lines from a client (its n-th line has seq n):
  H cid pid                 hello (first line)
  O name / R name           hold / release one reference
  U name                    the name was unlinked by a client: forget it
  F name [name ...]         one handle to each name is in flight (token = (cid, seq))
  C cid seq [name=0|1 ...]  claim token (cid, seq); name=1: this client now holds name
  P                         ping: answer "P" once everything before it is processed
  S                         stats: one line "segments=N flights=N clients=N pid=N"
"""
from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time

try:
    import _posixshmem
except ImportError:  # pragma: no cover
    _posixshmem = None


def _unlink(name: str) -> None:
    try:
        if _posixshmem is not None:
            _posixshmem.shm_unlink("/" + name)
        else:  # pragma: no cover
            os.unlink("/dev/shm/" + name)
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (also used by runtime.distributed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


def _same_user(sock) -> bool:
    """True if the peer runs as our uid (Linux SO_PEERCRED; elsewhere the path's mode guards)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


class _Client:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.cid = None
        self.seq = 0
        self.holds: dict[str, int] = {}


class Manager:
    def __init__(self, lsock, job, root_pid, grace_s, log):
        self.lsock, self.job, self.root_pid, self.grace_s = lsock, job, root_pid, grace_s
        self.logf = open(log, "a", buffering=1) if log else None
        self.count: dict[str, int] = {}
        self.flights: dict[tuple, list[str]] = {}      # token -> names
        self.flights_of: dict[str, set] = {}          # sender cid -> its live tokens
        self.expiry: dict[tuple, float] = {}          # token of a dead sender -> deadline
        self.progress: dict[str, int] = {}            # cid -> last seq read
        self.closed: set[str] = set()
        # sender cid -> [(seq, token, names)]: claims read before the sender's F (they come on
        # different connections). Each claimed name is counted once more until then, or a
        # release read meanwhile could unlink a segment whose creator's hold and flight are
        # still unread in its socket (Note [Shm lifetime]: early claims).
        self.waiting: dict[str, list] = {}
        self.clients: dict[socket.socket, _Client] = {}
        self.sel = selectors.DefaultSelector()
        self.stop = False
        # Segments of this job that exist before we serve anyone were counted by a manager
        # that died (SIGKILL): their holders are unknown until they announce them. They are
        # adopted: counted again once a client announces a hold, and unlinked when the job
        # ends, so a dead manager leaks nothing (a release sent to us for a name we never
        # counted is otherwise lost).
        self.orphans: set[str] = set(_job_segments(job))
        if self.orphans:
            self.log(f"adopted {len(self.orphans)} segments of a previous manager")

    def log(self, msg):
        if self.logf:
            self.logf.write(f"{time.strftime('%H:%M:%S')} shm-manager[{self.job}]: {msg}\n")

    # -- counting ---------------------------------------------------------------------------
    def incr(self, name, n=1):
        self.count[name] = self.count.get(name, 0) + n
        if self.orphans:
            self.orphans.discard(name)

    def decr(self, name):
        c = self.count.get(name)
        if c is None:
            return
        if c <= 1:
            del self.count[name]
            _unlink(name)
            self.log(f"unlinked {name}")
        else:
            self.count[name] = c - 1

    def consume(self, token):
        names = self.flights.pop(token, None)
        self.expiry.pop(token, None)
        s = self.flights_of.get(token[0])
        if s is not None:
            s.discard(token)
        for n in names or ():
            self.decr(n)

    def consume_early(self, token, names):
        """Consume a claim that was read before its flight, and drop its interim counts."""
        self.consume(token)
        for n in names:
            self.decr(n)

    # -- messages ---------------------------------------------------------------------------
    def handle(self, cl: _Client, line: str):
        cl.seq += 1
        parts = line.split()
        op, args = (parts[0], parts[1:]) if parts else ("", [])
        if op == "H":
            cl.cid = args[0]
        elif op == "O":
            cl.holds[args[0]] = cl.holds.get(args[0], 0) + 1
            self.incr(args[0])
        elif op == "R":
            name = args[0]
            if cl.holds.get(name, 0) > 0:
                cl.holds[name] -= 1
                if not cl.holds[name]:
                    del cl.holds[name]
                self.decr(name)
        elif op == "U":
            self.count.pop(args[0], None)
        elif op == "F":
            token = (cl.cid, cl.seq)
            self.flights[token] = list(args)
            self.flights_of.setdefault(cl.cid, set()).add(token)
            for n in args:
                self.incr(n)
        elif op == "C":
            sender, seq = args[0], int(args[1])
            names = []
            for entry in args[2:]:
                name, _, new = entry.rpartition("=")
                names.append(name)
                if new == "1":
                    cl.holds[name] = cl.holds.get(name, 0) + 1
                    self.incr(name)
            if sender in self.closed or self.progress.get(sender, 0) >= seq:
                self.consume((sender, seq))
            else:  # the sender's F has not been read yet: consume it once it is
                for name in names:
                    self.incr(name)
                self.waiting.setdefault(sender, []).append((seq, (sender, seq), names))
        elif op == "P":
            cl.sock.sendall(b"P\n")
        elif op == "S":
            msg = (f"segments={len(self.count)} flights={len(self.flights)} "
                   f"clients={len(self.clients)} pid={os.getpid()}\n")
            cl.sock.sendall(msg.encode())
        else:
            self.log(f"ignored bad line {line!r}")
        if cl.cid is not None:
            self.progress[cl.cid] = cl.seq
            waits = self.waiting.get(cl.cid)
            if waits:
                ready = [w for w in waits if w[0] <= cl.seq]
                self.waiting[cl.cid] = [w for w in waits if w[0] > cl.seq]
                for _, token, names in ready:
                    self.consume_early(token, names)

    def drop(self, cl: _Client):
        self.sel.unregister(cl.sock)
        cl.sock.close()
        del self.clients[cl.sock]
        for name, n in cl.holds.items():
            for _ in range(n):
                self.decr(name)
        if cl.cid is not None:
            self.closed.add(cl.cid)
            for _, token, names in self.waiting.pop(cl.cid, []):
                self.consume_early(token, names)
            deadline = time.monotonic() + self.grace_s
            for token in self.flights_of.pop(cl.cid, ()):
                self.expiry[token] = deadline
        self.log(f"client {cl.cid} left; {len(self.clients)} connected")

    def read(self, cl: _Client):
        try:
            data = cl.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            if cl.buf:
                self.handle(cl, cl.buf.decode(errors="replace"))
            self.drop(cl)
            return
        cl.buf += data
        *lines, cl.buf = cl.buf.split(b"\n")
        for line in lines:
            line = line.decode(errors="replace")
            try:
                self.handle(cl, line)
            except Exception as e:  # a bad line must not take the job's bookkeeping down
                self.log(f"bad line {line!r} from {cl.cid}: {type(e).__name__}: {e}")

    # -- loop -------------------------------------------------------------------------------
    def serve(self):
        self.sel.register(self.lsock, selectors.EVENT_READ)
        idle_since = None
        while not self.stop:
            for key, _ in self.sel.select(timeout=0.2):
                if key.fileobj is self.lsock:
                    try:
                        sock, _ = self.lsock.accept()
                    except OSError:
                        continue
                    sock.setblocking(True)
                    if not _same_user(sock):  # abstract sockets have no file permissions
                        self.log("refused a connection from another user")
                        sock.close()
                        continue
                    self.clients[sock] = _Client(sock)
                    self.sel.register(sock, selectors.EVENT_READ)
                else:
                    self.read(self.clients[key.fileobj])
            now = time.monotonic()
            for token in [t for t, d in self.expiry.items() if d <= now]:
                self.log(f"handle {token} unclaimed {self.grace_s}s after its sender left")
                self.consume(token)
            if self.clients:
                idle_since = None
                continue
            root_dead = not pid_alive(self.root_pid)
            if (self.flights or self.orphans) and not root_dead:
                continue   # handles in flight or adopted orphans: wait for the job's end
            idle_since = idle_since or now
            # a short linger when the job is still alive avoids restarting between users
            if root_dead or now - idle_since > 1.0:
                if not self.sel.select(timeout=0):  # nobody knocking: safe to go
                    break
        self.shutdown()

    def shutdown(self):
        self.sel.close()
        self.lsock.close()
        names = list(self.count)
        if not pid_alive(self.root_pid):   # the job is over: adopted orphans go too
            names += sorted(self.orphans)
        for name in names:
            _unlink(name)
        self.log(f"exit; unlinked {len(names)} remaining segments")
        self.count.clear()


def _job_segments(job: str) -> list[str]:
    """Names of this job's segments now in /dev/shm."""
    prefix = f"zgrad_{job}_"
    try:
        return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    except OSError:
        return []


def main(argv):
    job, root_pid, address, grace_s = argv[:4]
    log = argv[4] if len(argv) > 4 else ""
    addr = "\0" + address[1:] if address.startswith("@") else address
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lsock.bind(addr)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise
        if addr.startswith("\0"):
            return 0  # another manager of this job is running: use it
        try:  # a path socket may be stale
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(addr)
            probe.close()
            return 0
        except OSError:
            os.unlink(addr)
            lsock.bind(addr)
    if not addr.startswith("\0"):
        os.chmod(addr, 0o600)  # only our user may connect
    lsock.listen(512)
    if os.fork() > 0:
        os._exit(0)  # the starter's subprocess.run returns; we are reparented, no zombie
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # let go of the starter's pipes (it waits for their EOF)
        os.dup2(devnull, fd)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    mgr = Manager(lsock, job, int(root_pid), float(grace_s), log)

    def _term(signum, frame):
        mgr.stop = True

    signal.signal(signal.SIGTERM, _term)
    mgr.log(f"listening, root pid {root_pid}")
    try:
        mgr.serve()
    finally:
        if not addr.startswith("\0"):
            try:
                os.unlink(addr)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
