"""init_process_group, groups, and the collectives with PyTorch's names and semantics.

Collectives take zgrad Tensors (the result is written in place into ``t.array``) or raw numpy /
CuPy arrays. Ranks passed as ``src``/``dst`` are global ranks, as in PyTorch.
"""
from __future__ import annotations

import atexit
import datetime
import os
import time
import threading

from . import wire
from .call import Call
from .process_group import ProcessGroup
from .rendezvous import master, rendezvous
from .shm_comm import ShmComm
from .store import StoreClient, StoreServer
from .tcp_algorithms import TcpRoute
from .transport import PeerMesh

DEFAULT_TIMEOUT_S = float(os.environ.get("ZGRAD_TIMEOUT_S", "300"))


class GroupMember:
    """As torch.distributed.GroupMember: WORLD (the default group) and NON_GROUP_MEMBER."""
    WORLD = None
    NON_GROUP_MEMBER = object()


class _State:
    def __init__(self):
        self.rank = -1
        self.world_size = -1
        self.backend = None
        self.store: StoreClient | None = None
        self.server: StoreServer | None = None
        self.auth: wire.Auth | None = None
        self.infos: list[dict] = []
        self.world: ProcessGroup | None = None
        self.groups: list = []
        self.next_gid = 0
        self.bind_host = "127.0.0.1"
        self.secret_port: int | None = None     # the secret file rank 0 wrote...
        self.secret_key = b""                     # ...and what it holds
        self.timeout_s = DEFAULT_TIMEOUT_S
        self.machine = ""
        self.pid = os.getpid()
        self.device_id = None                     # init_process_group(device_id=): NCCL's GPU


_state: _State | None = None
_init_lock = threading.Lock()


def _timeout_s(timeout) -> float:
    if timeout is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    if isinstance(timeout, (int, float)) and timeout > 0:
        return float(timeout)
    raise ValueError(f"init_process_group: timeout must be a datetime.timedelta or seconds > 0, "
                     f"got {timeout!r}")


def _env_int(name: str, given: int, what: str) -> int:
    if given is not None and given >= 0:
        return int(given)
    v = os.environ.get(name)
    if v is None:
        raise ValueError(f"init_process_group: {what} not given and ${name} is not set. Pass "
                         f"{what}= or launch with zgrad run / torchrun-style variables.")
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"init_process_group: ${name} must be an int, got {v!r}") from None


def is_available() -> bool:
    return True


def is_initialized() -> bool:
    """True between init_process_group and destroy_process_group."""
    return _state is not None


def _require(what: str) -> _State:
    if _state is None:
        raise RuntimeError(f"{what}: the default process group is not initialised. Call "
                           "runtime.distributed.init_process_group() first.")
    return _state


def init_process_group(backend: str = "auto", init_method: str | None = None, timeout=None,
                       world_size: int = -1, rank: int = -1, store=None, group_name: str = "",
                       pg_options=None, device_id=None):
    """Join the job: rendezvous through rank 0's store and build the default group.

    Args:
        backend: "zmq" (CPU arrays; CuPy arrays staged through host memory), "nccl" (CuPy
            arrays, through CuPy's NCCL) or "auto" (zmq, plus NCCL for CuPy arrays when a GPU
            and CuPy are present). "gloo" is accepted as another name for "zmq", so
            PyTorch scripts run unchanged.
        init_method: "env://" (default: MASTER_ADDR, MASTER_PORT) or "tcp://host:port".
        timeout: datetime.timedelta or seconds; the deadline of every wait (default
            $ZGRAD_TIMEOUT_S or 300 s).
        world_size, rank: default to $WORLD_SIZE and $RANK.
        device_id: the GPU (int or tensor.device) of this rank's NCCL communicators; default
            $ZGRAD_DEVICE (set by zgrad run), else LOCAL_RANK mod the device count.
    """
    global _state
    with _init_lock:
        if _state is not None:
            raise RuntimeError("init_process_group: already initialised; call "
                               "destroy_process_group() first.")
        if backend not in ("auto", "zmq", "nccl", "gloo"):
            raise ValueError(f"init_process_group: backend must be 'zmq', 'nccl' or 'auto', "
                             f"got {backend!r}")
        if store is not None:
            raise ValueError("init_process_group: store= is not supported; zgrad always uses "
                             "its own authenticated store at MASTER_ADDR:MASTER_PORT.")
        st = _State()
        st.timeout_s = _timeout_s(timeout)
        st.rank = _env_int("RANK", rank, "rank")
        st.world_size = _env_int("WORLD_SIZE", world_size, "world_size")
        if not 0 <= st.rank < st.world_size:
            raise ValueError(f"init_process_group: expected 0 <= rank < world_size, got rank "
                             f"{st.rank}, world_size {st.world_size}")
        host, port = master(init_method)
        try:
            rendezvous(st, host, port)
            st.backend = "zmq" if backend == "gloo" else backend
            _state = st
            st.world = _new_group(st, list(range(st.world_size)), st.timeout_s)
            if st.backend in ("nccl", "auto"):
                from .nccl import attach_nccl
                attach_nccl(st, st.world, required=st.backend == "nccl", device_id=device_id)
                st.device_id = device_id
        except BaseException:
            _teardown(st, wait_peers=False)
            _state = None
            raise
        atexit.register(_atexit)


def _shm_available() -> bool:
    if os.environ.get("ZGRAD_DIST_SHM", "1") == "0":
        return False
    try:
        import shm
        return hasattr(shm, "Segment")
    except ImportError:
        return False


def _new_group(st: _State, ranks: list[int], timeout_s: float):
    """Build group `ranks` (every rank of the world calls this, in the same order)."""
    gid = st.next_gid
    st.next_gid += 1
    if st.rank not in ranks:
        return GroupMember.NON_GROUP_MEMBER
    pg = ProcessGroup(gid, ranks, st.rank, timeout_s)
    try:
        # setup waits (store, first barrier) use the job timeout; timeout_s bounds collectives
        _connect_group(st, pg, gid, ranks, max(timeout_s, st.timeout_s))
    except BaseException:
        pg.shutdown()
        raise
    st.groups.append(pg)
    return pg


def _connect_group(st, pg: ProcessGroup, gid: int, ranks: list[int], timeout_s: float):
    n, me, pre = len(ranks), pg.group_rank, f"g{gid}"
    what = f"new_group {gid} (rank {st.rank})"
    infos = [st.infos[r] for r in ranks]
    pids = {i: infos[i]["pid"] for i in range(n) if infos[i]["machine"] == st.machine}
    pg.mesh = PeerMesh(n, me, ranks, st.auth, st.bind_host, f"group {gid}")
    st.store.set(f"{pre}/ep/{me}", pg.mesh.published.encode())
    eps = st.store.multi_get([f"{pre}/ep/{i}" for i in range(n)], timeout_s, what)
    pg.mesh.connect([e.decode() for e in eps], pids, timeout_s)
    hosts = [i["host"] for i in infos]
    order = list(dict.fromkeys(hosts))
    pg.single_host = len(order) == 1
    local = [i for i in range(n) if hosts[i] == hosts[me]]
    leaders = [hosts.index(h) for h in order]
    pg.is_leader = me == local[0]
    shm_ok = _shm_available()
    if shm_ok and len(local) > 1:
        pg.local = _attach_shm(st, pg, f"{pre}/shm/{hosts[me]}", local, ranks, infos, timeout_s)
    deadline = time.monotonic() + timeout_s
    call = Call(-1, "barrier")
    pg.hierarchical = shm_ok and not pg.single_host and any(hosts.count(h) > 1 for h in order)
    if pg.hierarchical and pg.is_leader:
        lm = PeerMesh(len(leaders), leaders.index(me), [ranks[i] for i in leaders], st.auth,
                      st.bind_host, f"group {gid} leaders")
        st.store.set(f"{pre}/lep/{leaders.index(me)}", lm.published.encode())
        leps = st.store.multi_get([f"{pre}/lep/{j}" for j in range(len(leaders))],
                                  timeout_s, what)
        lm.connect([e.decode() for e in leps],
                   {j: pids[i] for j, i in enumerate(leaders) if i in pids}, timeout_s)
        pg.leader_mesh = lm
        TcpRoute(lm).barrier(call, deadline)
    pg.tcp.barrier(call, deadline)   # every link is up and authenticated


def _attach_shm(st, pg, key: str, local: list[int], ranks, infos, timeout_s) -> ShmComm:
    import shm
    lr = local.index(pg.group_rank)
    nloc = len(local)
    pids = [infos[i]["pid"] for i in local]
    granks = [ranks[i] for i in local]
    what = f"new_group {pg.gid} shared memory (rank {st.rank})"
    if lr == 0:
        seg = shm.Segment.create(ShmComm.segment_bytes(nloc), tag=f"dist{pg.gid}")
        try:
            st.store.set(key, seg.name.encode())
            st.store.multi_get([f"{key}/att/{k}" for k in range(1, nloc)], timeout_s, what)
        finally:
            seg.unlink()   # see Note [Shm reduce]: the name goes once all have attached
    else:
        name = st.store.get(key, timeout_s).decode()
        seg = shm.Segment.attach(name)
        st.store.set(f"{key}/att/{lr}", b"1")
    return ShmComm(seg, nloc, lr, granks, pids)


def new_group(ranks=None, timeout=None, backend=None, pg_options=None, use_local_synchronization=False):
    """A sub-group of `ranks` (global ranks); every rank of the job must call it, in the same
    order, as in PyTorch. Ranks outside it get GroupMember.NON_GROUP_MEMBER."""
    st = _require("new_group")
    ranks = list(range(st.world_size)) if ranks is None else sorted(int(r) for r in ranks)
    if len(set(ranks)) != len(ranks) or any(not 0 <= r < st.world_size for r in ranks):
        raise ValueError(f"new_group: ranks must be distinct and in [0, {st.world_size}), "
                         f"got {ranks}")
    timeout_s = _timeout_s(timeout) if timeout is not None else st.timeout_s
    pg = _new_group(st, ranks, timeout_s)
    if pg is not GroupMember.NON_GROUP_MEMBER and st.backend in ("nccl", "auto"):
        from .nccl import attach_nccl
        attach_nccl(st, pg, required=st.backend == "nccl", device_id=st.device_id)
    return pg


def _teardown(st: _State, wait_peers: bool):
    for pg in st.groups:
        pg.shutdown()
    if st.store is not None:
        if wait_peers:
            # rank 0 keeps the store up until every rank is done with it (bounded)
            try:
                st.store.timeout_s = min(st.timeout_s, 5.0)
                st.store.set(f"exit/{st.rank}", b"1")
                if st.server is not None:
                    _wait_exits(st)
            except (TimeoutError, RuntimeError):
                pass
        st.store.close()
    if st.server is not None:
        st.server.close()
    if st.secret_port is not None:
        wire.remove_local_secret(st.secret_port, st.secret_key)


def _wait_exits(st: _State):
    """Rank 0 keeps the store up until every live rank has left (bounded by 10 s)."""
    from shm import pid_alive
    keys = [f"exit/{r}" for r in range(st.world_size)]
    end = time.monotonic() + min(st.timeout_s, 10.0)
    while time.monotonic() < end:
        present = st.store.check(keys)
        waiting = [r for r in range(st.world_size) if not present[r] and not (
            st.infos[r]["machine"] == st.machine and not pid_alive(st.infos[r]["pid"]))]
        if not waiting:
            return
        time.sleep(0.02)


def destroy_process_group(group=None):
    """Tear down `group`, or everything (the default) and leave the job."""
    global _state
    st = _state
    if st is None:
        return
    if group is not None and group is not st.world:
        if group in st.groups:
            group.shutdown()
            st.groups.remove(group)
        return
    _state = None
    _teardown(st, wait_peers=True)


def _atexit():
    # a forked child (a data loader worker) inherits _state but owns none of it
    if _state is not None and _state.pid == os.getpid():
        destroy_process_group()


# ---------------------------------------------------------------------------------------------
# queries


def _group(group, what: str):
    st = _require(what)
    if group is None or group is GroupMember.WORLD:
        return st.world
    if group is GroupMember.NON_GROUP_MEMBER:
        return None
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"{what}: group must be a ProcessGroup from new_group(), got "
                        f"{type(group).__name__}")
    return group


def get_rank(group=None) -> int:
    """This process's rank in `group` (the world by default); -1 if not a member."""
    pg = _group(group, "get_rank")
    return -1 if pg is None else pg.rank()


def get_world_size(group=None) -> int:
    """The number of ranks in `group` (the world by default); -1 if not a member."""
    pg = _group(group, "get_world_size")
    return -1 if pg is None else pg.size()


def get_backend(group=None) -> str:
    return _require("get_backend").backend


def get_process_group_ranks(group) -> list[int]:
    pg = _group(group, "get_process_group_ranks")
    return [] if pg is None else list(pg.ranks)


def get_global_rank(group, group_rank: int) -> int:
    return _group(group, "get_global_rank").ranks[group_rank]


def get_group_rank(group, global_rank: int) -> int:
    pg = _group(group, "get_group_rank")
    return pg.ranks.index(global_rank) if global_rank in pg.ranks else -1
