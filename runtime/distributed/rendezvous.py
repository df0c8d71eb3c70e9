"""Rendezvous: where the store lives, the job secret, and joining the job (see Note
[Rendezvous] in store.py and Note [Job secret] in wire.py)."""
from __future__ import annotations

import os
import secrets
import socket
import time
from urllib.parse import urlparse

from . import wire
from .store import StoreAuthError, StoreClient, StoreServer


def machine_id() -> str:
    """This machine's identity (host name and boot id): ranks on it can check pids."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return socket.gethostname() + "/" + f.read().strip()
    except OSError:
        return socket.gethostname()


# torchrun's agent keeps its own TCPStore on MASTER_PORT (its workers share it)
_TORCHRUN_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                  "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "GROUP_RANK")


def master(init_method):
    """(host, port) of zgrad's store: MASTER_ADDR:MASTER_PORT, or the port beside it under
    torchrun (``ZGRAD_STORE_PORT`` overrides both), or what tcp:// names."""
    if init_method in (None, "env://"):
        host = os.environ.get("MASTER_ADDR")
        port = os.environ.get("MASTER_PORT")
        if not host or not port:
            raise ValueError("init_process_group: init_method='env://' needs $MASTER_ADDR and "
                             "$MASTER_PORT (e.g. 127.0.0.1 and a free port) on every rank.")
        return host, _store_port(_port_env("MASTER_PORT", port))
    u = urlparse(init_method)
    if u.scheme != "tcp" or not u.hostname or not u.port:
        raise ValueError(f"init_process_group: init_method must be 'env://' or "
                         f"'tcp://host:port', got {init_method!r}")
    return u.hostname, u.port


def _port_env(name: str, value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise ValueError(f"init_process_group: ${name} must be a TCP port (1..65535), got "
                         f"{value!r}")
    return port


def _store_port(master_port: int) -> int:
    """Every rank derives the same port without talking: under torchrun (detected by its
    environment) MASTER_PORT belongs to torchrun's own store, so zgrad takes the next one."""
    if os.environ.get("ZGRAD_STORE_PORT"):
        return _port_env("ZGRAD_STORE_PORT", os.environ["ZGRAD_STORE_PORT"])
    if any(v in os.environ for v in _TORCHRUN_VARS):
        return master_port + 1 if master_port < 65535 else master_port - 1
    return master_port


def rendezvous(st, host: str, port: int):
    """See Note [Rendezvous] and Note [Job secret]."""
    deadline = time.monotonic() + st.timeout_s
    loopback = wire.is_loopback(host)
    wire.require_secret_for(host, "init_process_group")
    st.bind_host = "127.0.0.1" if loopback else \
        os.environ.get("ZGRAD_BIND_ADDR") or wire.local_ip_towards(host, port)
    wire.require_secret_for(st.bind_host, "init_process_group")
    key = wire.env_secret()
    if st.rank == 0:
        own = key is None
        key = wire.new_secret() if own else key
        st.auth = wire.Auth(key)
        st.server = StoreServer(host, port, st.auth)   # the port first: see Note [Job secret]
        if own:
            wire.write_local_secret(port, key)
            st.secret_port, st.secret_key = port, key
    else:
        st.auth = wire.Auth(key if key is not None else wire.read_local_secret(port, deadline))
    st.machine = machine_id()
    _join(st, host, port, deadline)
    st.store.timeout_s = st.timeout_s
    keys = [f"init/{r}" for r in range(st.world_size)] + ["init/job"]
    vals = st.store.multi_get(keys, max(0.1, deadline - time.monotonic()),
                              what=f"init_process_group (rank {st.rank})")
    st.infos = [wire.unpackb(v) for v in vals[:-1]]
    st.auth = st.auth.for_job(vals[-1])     # every mesh MAC names this job (Note [Wire MAC])
    if st.secret_port is not None:
        # every rank has read the secret and been let in: the file has done its job (removing
        # it now also means a rank 0 killed later leaves nothing behind)
        wire.remove_local_secret(st.secret_port, st.secret_key)
        st.secret_port = None
    sizes = {i["ws"] for i in st.infos}
    if len(sizes) != 1:
        raise ValueError(f"init_process_group: ranks disagree on world_size: "
                         f"{[i['ws'] for i in st.infos]} (by rank)")


def _join(st, host: str, port: int, deadline: float):
    """Register this rank in the store (retrying while a stale secret file is replaced)."""
    info = {"host": os.environ.get("ZGRAD_HOST_ID") or socket.gethostname(), "pid": os.getpid(),
            "machine": st.machine, "ws": st.world_size}
    while True:
        st.store = StoreClient(host, port, st.auth, max(1.0, deadline - time.monotonic()))
        try:
            if st.store.add(f"init/joined/{st.rank}", 1) != 1:
                raise RuntimeError(f"init_process_group: rank {st.rank} joined twice; every "
                                   "process needs a distinct RANK.")
            st.store.set(f"init/{st.rank}", wire.packb(info))
            if st.rank == 0:
                st.store.set("init/job", secrets.token_bytes(16))
            return
        except StoreAuthError:
            st.store.close()
            st.store = None
            if wire.env_secret() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)   # a stale secret file: rank 0 is replacing it
            st.auth = wire.Auth(wire.read_local_secret(port, deadline))
