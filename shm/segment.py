"""POSIX shared-memory segments: names, creation with a space check, mapping, the per-process cache.

Note [Shm lifetime]
~~~~~~~~~~~~~~~~~~~
A segment is a file in /dev/shm named ``zgrad_<jobid>_<pid>_<n>_<rand>[_<tag>]``. It must exist
(have a name) while any process holds it and vanish when the last one lets go, whatever dies.
No process can unlink its own segments when it is SIGKILLed, so the *counting* lives outside
every worker, in one small manager process per job (``shm/manager.py``):

* The first process of a job that touches shared memory starts the manager (a double-forked,
  setsid'd ``python -I -S shm/manager.py``, so it survives a SIGKILL of its starter and of its
  process group). It listens on a unix socket whose address is derived from the job id (an
  abstract socket on Linux), so every process of the job finds it with no configuration, and
  two processes racing to start it end up with one (bind is atomic).
* Each process keeps ONE connection (``shm/_client.py``) and sends one-line messages, fire and
  forget (no round trip on the hot path):
    ``O name``  I hold `name` (sent *before* shm_open(O_CREAT), so a crash between the two
                cannot leak a segment the manager never heard of);
    ``R name``  I let go of `name` (sent when the process's last array/Segment on it is
                garbage collected, i.e. when its mmap is unmapped);
    ``F name``  a handle to `name` was pickled: it is *in flight* (one reference);
    ``C cid seq name=new ...`` I unpickled the handle sent as message `seq` of client `cid`.
  The manager keeps count[name] = holders + handles in flight, and unlinks at 0.
* The send/receive race: the sender may drop its array right after ``queue.put``. Its ``F``
  goes out before its ``R`` on the same ordered stream, so the count never reaches 0 while a
  handle is in flight. The receiver's ``C`` travels on *its* stream and may overtake the
  sender's ``F``; so a claim adds the receiver's hold at once but consumes the flight only
  after the manager has read the sender's stream up to `seq` (claims wait, keyed by sender).
  Until then the waiting claim counts each of its names once more: the receiver's ``R`` may
  also overtake the sender's unread ``O``/``F`` (the count would touch 0 and the name be
  unlinked under a handle still in flight: found by benchmarks/soak.py at 1,000 small shared
  tensors a second, when a 1 MiB arena lives for a few tensors only).
* Death: the kernel closes a dead process's socket, SIGKILL included; the manager reads what was
  buffered, then drops every hold of that connection. Handles a dead sender left in flight are
  kept for ``ZGRAD_SHM_FLIGHT_GRACE_S`` seconds (default 30), so "put a result and exit" works,
  then released. A handle pickled but never unpickled (a queue dropped with messages in it)
  likewise holds its segment until its sender exits (+ grace); a ForkingPickler dump that fails
  part-way cancels the flights it made (shm/reductions.py). ``os.fork`` is covered by at-fork hooks: the parent puts all its live
  mappings in flight before the fork, the child claims them after it, so a parent that drops an
  array right after ``Process.start()`` cannot pull the segment from under the child (and the
  child's fresh connection announces nothing else: it holds exactly what it claimed).
* End of job: when no client is connected and either no handle is in flight or the job's root
  process (``ZGRAD_JOB_ROOT_PID``: set by whoever generates the job id; a launcher that sets
  ZGRAD_JOB_ID should set it to its own pid) is dead, the manager unlinks every name it still
  knows and exits (after a 1 s linger while the root lives, to avoid restarts). So nothing stays in /dev/shm after a normal exit, a SIGKILLed child or a SIGKILLed
  parent. If the manager itself is SIGKILLed, ``shm.sweep(job_id)`` / ``python -m shm sweep``
  removes a job's leftovers by name (and clients reconnect to a fresh manager).
* Descriptors: shm_open -> ftruncate/posix_fallocate -> mmap -> close(fd). A mapped segment
  costs no descriptor, so 10,000 tensors in flight cost 10,000 mappings (the kernel allows
  ~65k) and no fds; small arrays are packed into 1 MiB arenas (``shm/arrays.py``) so they
  cost far fewer.
* In one process all arrays and Segments on a name share one mapping (cached weakly by name);
  closing a Segment never unmaps memory an array still uses. The munmap runs in the cache's
  weakref callback, when no thread can reach the mapping any more (see _ShmMap).
"""
from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import re
import secrets
import sys
import threading
import weakref

try:
    import _posixshmem  # CPython's shm_open/shm_unlink (Linux, macOS)
except ImportError:  # pragma: no cover - platforms without POSIX shm
    _posixshmem = None

SHM_DIR = "/dev/shm"
_JOB_ENV = "ZGRAD_JOB_ID"
_ROOT_ENV = "ZGRAD_JOB_ROOT_PID"
_NAME_RE = re.compile(r"^zgrad_[A-Za-z0-9-]+_[0-9]+_[0-9]+_[0-9a-f]+(_[A-Za-z0-9-]+)?$")
_TAG_RE = re.compile(r"^[A-Za-z0-9-]{0,32}$")


class OutOfSharedMemoryError(MemoryError):
    """A shared segment does not fit in /dev/shm (instead of the SIGBUS a short tmpfs gives)."""


def job_id() -> str:
    """This job's id: ``$ZGRAD_JOB_ID``, or one generated once and exported so children inherit it.

    Characters other than letters, digits and '-' are replaced by '-' (the id is part of
    segment names, where '_' separates fields).
    """
    jid = os.environ.get(_JOB_ENV)
    if not jid:
        jid = secrets.token_hex(4)
        os.environ[_JOB_ENV] = jid
        os.environ[_ROOT_ENV] = str(os.getpid())
    return re.sub(r"[^A-Za-z0-9-]", "-", jid)


def job_root_pid() -> int:
    """The pid whose death ends the job for the manager (``$ZGRAD_JOB_ROOT_PID``, else ours)."""
    job_id()
    try:
        return int(os.environ.get(_ROOT_ENV, ""))
    except ValueError:
        return os.getpid()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def shm_free_bytes() -> int | None:
    """Bytes free in /dev/shm for us, or None where there is no /dev/shm to ask."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _space_error(size_bytes: int, free: int | None) -> OutOfSharedMemoryError:
    free_s = "unknown" if free is None else _fmt_bytes(free)
    return OutOfSharedMemoryError(
        f"shm: cannot allocate {_fmt_bytes(size_bytes)} ({size_bytes} bytes) of shared memory: "
        f"{free_s} free in {SHM_DIR}. Free space there (leftovers of dead jobs: "
        f"`python -m shm list`, `python -m shm sweep --stale`), pass fewer/smaller tensors "
        f"between processes, or give the container more (docker run --shm-size=8g; "
        f"Kubernetes: an emptyDir with medium: Memory mounted at /dev/shm).")


def _shm_open(name: str, flags: int) -> int:
    if _posixshmem is not None:
        return _posixshmem.shm_open("/" + name, flags, mode=0o600)
    return os.open(os.path.join(SHM_DIR, name), flags, 0o600)  # pragma: no cover


def _shm_unlink(name: str) -> bool:
    """Remove `name`; False if it was already gone."""
    try:
        if _posixshmem is not None:
            _posixshmem.shm_unlink("/" + name)
        else:  # pragma: no cover
            os.unlink(os.path.join(SHM_DIR, name))
        return True
    except FileNotFoundError:
        return False


# Python's mmap.mmap keeps a dup() of the file descriptor for its whole life (until 3.13's
# trackfd=False), which is one fd per mapped segment: 10,000 tensors would hit the fd limit. So
# segments are mapped with libc's mmap and closed at once; the memory is exposed as a ctypes
# char array whose deallocation (after every array and memoryview on it is gone) unmaps it.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _ShmMap:
    """Marker base: one process's mapping of one segment (instances are ctypes char arrays).

    Arrays on it keep it (and so the mapping) alive; it has `.name` and `.addr`.
    """

    name: str
    addr: int
    # No __del__: a __del__ runs while weakrefs still resolve, and munmap (a ctypes call that
    # drops the GIL) would let another thread fetch the dying map from the cache and use the
    # unmapped memory. The weakref callback in _register unmaps once no one can reach it.


_map_types: dict[int, type] = {}


def _map_type(size: int) -> type:
    t = _map_types.get(size)
    if t is None:
        t = _map_types[size] = type("_ShmMapOf%d" % size, (ctypes.c_char * size, _ShmMap), {})
    return t


# name -> weakref to the live _ShmMap of this process (see Note [Shm lifetime]).
_maps: dict[str, weakref.ref] = {}
_maps_lock = threading.Lock()
_counter = itertools.count()


def _register(m: _ShmMap) -> None:
    from . import _client

    name, addr, size = m.name, m.addr, ctypes.sizeof(m)

    def _gone(ref, name=name):
        _libc.munmap(addr, size)
        if _maps.get(name) is ref:
            _maps.pop(name, None)
        _client.release(name)

    _maps[name] = weakref.ref(m, _gone)


def _map_fd(fd: int, name: str, size: int) -> _ShmMap:
    addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"shm: mmap of segment {name} ({size} bytes) failed: "
                           f"{os.strerror(err)}")
    m = _map_type(size).from_address(addr)
    m.name, m.addr = name, addr
    return m


def live_map(name: str) -> _ShmMap | None:
    ref = _maps.get(name)
    return ref() if ref is not None else None


def live_names() -> list[str]:
    """Names this process maps right now."""
    return [n for n, r in list(_maps.items()) if r() is not None]


def new_name(tag: str = "") -> str:
    if not _TAG_RE.match(tag):
        raise ValueError(f"shm.Segment.create: tag must be up to 32 letters, digits or '-', "
                         f"got {tag!r}")
    name = f"zgrad_{job_id()}_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"
    return f"{name}_{tag}" if tag else name


def create_map(size_bytes: int, tag: str = "") -> _ShmMap:
    """Create, size and map a new segment; registered with the manager before it exists."""
    from . import _client

    if not isinstance(size_bytes, int) or isinstance(size_bytes, bool) or size_bytes <= 0:
        raise ValueError(f"shm.Segment.create: size_bytes must be an int > 0, got {size_bytes!r}")
    free = shm_free_bytes()
    if free is not None and size_bytes > free:
        raise _space_error(size_bytes, free)
    name = new_name(tag)
    _client.hold(name)  # announce first: see Note [Shm lifetime]
    try:
        fd = _shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR)
    except BaseException:
        _client.release(name)
        raise
    try:
        try:
            if hasattr(os, "posix_fallocate"):
                # reserves the pages now: a short tmpfs fails here, not with SIGBUS later
                os.posix_fallocate(fd, 0, size_bytes)
            else:  # pragma: no cover - macOS
                os.ftruncate(fd, size_bytes)
        except OSError as e:
            raise _space_error(size_bytes, shm_free_bytes()) from e
        m = _map_fd(fd, name, size_bytes)
    except BaseException:
        _shm_unlink(name)
        _client.release(name)
        raise
    finally:
        os.close(fd)
    with _maps_lock:
        _register(m)
    return m


def attach_map(name: str, claim=None) -> _ShmMap:
    """Map `name` (reusing this process's mapping). `claim`: (cid, seq) of a handle in flight."""
    from . import _client

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"shm.Segment.attach: expected a zgrad segment name like "
                         f"'zgrad_<jobid>_<pid>_<n>_<hex>', got {name!r}")
    with _maps_lock:
        m = live_map(name)
        if m is not None:
            if claim is not None:
                _client.claim(claim, name, new=False)
            return m
        try:
            fd = _shm_open(name, os.O_RDWR)
        except FileNotFoundError:
            if claim is not None:
                _client.claim(claim, None, new=False)
            raise FileNotFoundError(
                f"shm: segment {name!r} no longer exists in {SHM_DIR}: every process that held "
                "it let go (or its job ended) before this process attached. Keep the sender's "
                "array alive until the receiver has it, and send a handle once.") from None
        try:
            size = os.fstat(fd).st_size
            m = _map_fd(fd, name, size)
        finally:
            os.close(fd)
        if claim is not None:
            _client.claim(claim, name, new=True)
        else:
            _client.hold(name)
        _register(m)
        return m


def unlink_name(name: str) -> None:
    """Remove `name` now (mappings stay valid) and tell the manager to forget it."""
    from . import _client

    _shm_unlink(name)
    _client.forget(name)


def sweep(job: str | None = None) -> list[str]:
    """Unlink every /dev/shm segment of job `job` (default: this job). Returns the names removed.

    Use it for leftovers of a job whose manager was killed; in a running job it pulls the
    names from under live processes (their mappings stay valid, new attaches fail).
    """
    job = job_id() if job is None else job
    if not re.match(r"^[A-Za-z0-9-]+$", job or ""):
        raise ValueError(f"shm.sweep: expected a job id of letters, digits and '-', got {job!r}")
    prefix = f"zgrad_{job}_"
    try:
        names = sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []
    return [n for n in names if _shm_unlink(n)]


if sys.platform.startswith("linux"):
    def manager_address(job: str) -> str:
        return f"\0zgrad_{job}_shm-manager"
else:  # pragma: no cover
    def manager_address(job: str) -> str:
        import tempfile
        return os.path.join(tempfile.gettempdir(), f"zgrad_{job}_shm-manager.sock")


class Segment:
    """A named block of shared memory (like multiprocessing.shared_memory.SharedMemory).

    ``Segment.create(size_bytes, tag="")`` makes a new one, ``Segment.attach(name)`` maps an
    existing one. ``.buf`` is a writable memoryview; ``.ndarray(shape, dtype, offset)`` views
    it as an array. ``close()`` drops this object's reference: the memory is unmapped when no
    array on it is left in this process either (never under a live array). The name is removed
    when every process has let go (Note [Shm lifetime]); ``unlink()`` removes it now.
    """

    def __init__(self, m: _ShmMap):
        self._map: _ShmMap | None = m
        self.name = m.name
        self.size = ctypes.sizeof(m)
        self.buf: memoryview | None = memoryview(m).cast("B")

    @classmethod
    def create(cls, size_bytes: int, tag: str = "") -> "Segment":
        """A new zero-filled segment of `size_bytes`; OutOfSharedMemoryError if it won't fit."""
        return cls(create_map(size_bytes, tag))

    @classmethod
    def attach(cls, name: str) -> "Segment":
        """Map the existing segment `name` (some process must still hold it)."""
        return cls(attach_map(name))

    def ndarray(self, shape, dtype, offset: int = 0):
        """A numpy array on this segment's bytes (it keeps the mapping alive by itself)."""
        import numpy as np

        if self._map is None:
            raise RuntimeError(f"shm.Segment.ndarray: segment {self.name} is closed")
        return np.ndarray(shape, dtype, buffer=self._map, offset=offset)

    def close(self) -> None:
        """Drop this object's mapping reference (idempotent)."""
        if self.buf is not None:
            self.buf.release()
        self.buf, self._map = None, None

    def unlink(self) -> None:
        """Remove the name now; mappings (here and elsewhere) stay valid until closed."""
        unlink_name(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._map is None else "open"
        return f"Segment(name={self.name!r}, size={self.size}, {state})"
