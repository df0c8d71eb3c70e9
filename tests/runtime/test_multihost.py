"""Several hosts for real: ranks in two network namespaces joined by a veth pair, so the
cross-host path (leaders' ring over TCP between 10.x addresses, shm within each "host") runs
over a real link; then the link is cut mid-job and every rank must end with a clear error.

Needs root and `ip netns` (skips with the reason otherwise). Creates only its own namespaces
and removes them in `finally`.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKER = textwrap.dedent("""
    import os, sys, time, hashlib
    sys.path.insert(0, {root!r})
    import numpy as np
    import runtime.distributed as dist
    mode = sys.argv[1]
    dist.init_process_group(timeout=float(os.environ.get("T", "20")))
    rank, ws = dist.get_rank(), dist.get_world_size()
    if mode == "check":
        digest = hashlib.sha256()
        for n in (0, 5, 1001, 300_001, 2_000_003):
            x = np.random.default_rng([rank, n]).normal(size=n).astype(np.float32)
            want = sum(np.random.default_rng([r, n]).normal(size=n).astype(np.float32)
                       for r in range(ws)) if n else x
            dist.all_reduce(x)
            np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)
            y = np.random.default_rng([rank, n]).normal(size=n).astype(np.float32)
            dist.all_reduce(y)
            assert x.tobytes() == y.tobytes(), "not reproducible"
            digest.update(x.tobytes())
        b = np.full(7, rank, np.int64)
        dist.broadcast(b, src=ws - 1)
        assert (b == ws - 1).all()
        outs = [np.empty(3, np.int64) for _ in range(ws)]
        dist.all_gather(outs, np.full(3, rank, np.int64))
        assert [int(o[0]) for o in outs] == list(range(ws))
        dist.barrier()
        print("OK", digest.hexdigest(), flush=True)
        dist.destroy_process_group()
    else:  # "cut": all_reduce in a loop until the link goes down
        x = np.ones(1 << 18, np.float32)
        i = 0
        try:
            while True:
                dist.all_reduce(x)
                x[:] = 1
                i += 1
                if i == 20:
                    print("READY", flush=True)
        except Exception as e:
            print("ERROR", type(e).__name__, e, flush=True)
            sys.exit(3)
""")


def _sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_hosts():
    """Two namespaces a and b with 10.213.<k>.1 and .2 on a veth pair."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (ip netns)")
    if shutil.which("ip") is None:
        pytest.skip("needs the `ip` tool (iproute2)")
    k = os.getpid() % 200 + 20
    a, b = f"zgt{os.getpid()}a", f"zgt{os.getpid()}b"
    va, vb = f"zva{os.getpid() % 100000}", f"zvb{os.getpid() % 100000}"
    made = []
    try:
        for ns in (a, b):
            _sh("ip", "netns", "add", ns)
            made.append(ns)
        _sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        _sh("ip", "link", "set", va, "netns", a)
        _sh("ip", "link", "set", vb, "netns", b)
        for ns, dev, ip in ((a, va, f"10.213.{k}.1/24"), (b, vb, f"10.213.{k}.2/24")):
            _sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as e:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        err = getattr(e, "stderr", "") or str(e)
        pytest.skip(f"cannot create network namespaces here: {err.strip()}")
    try:
        yield {"ns": (a, b), "dev": (va, vb), "ip": (f"10.213.{k}.1", f"10.213.{k}.2")}
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _launch(env_hosts, net, mode, tmp_path, timeout_s):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=ROOT))
    port = 29000 + os.getpid() % 1000
    procs = []
    for rank, host in enumerate(env_hosts):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(len(env_hosts)),
                   LOCAL_RANK=str(env_hosts[:rank].count(host)),
                   MASTER_ADDR=net["ip"][0], MASTER_PORT=str(port),
                   ZGRAD_SECRET="netns-test-secret", ZGRAD_HOST_ID=f"host-{host}",
                   ZGRAD_HEARTBEAT_TIMEOUT_S="2", T=str(timeout_s), PYTHONUNBUFFERED="1")
        env.pop("ZGRAD_JOB_ID", None)
        procs.append(subprocess.Popen(["ip", "netns", "exec", net["ns"][host], sys.executable,
                                       str(script), mode], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs, timeout_s):
    outs = []
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            out = "HUNG\n" + out
        outs.append((p.returncode, out))
    return outs


def test_cross_host_ring_over_real_tcp(two_hosts, tmp_path):
    # hosts a, a, b, b: shm inside each namespace, the leaders' ring over the veth link
    procs = _launch([0, 0, 1, 1], two_hosts, "check", tmp_path, 30)
    outs = _finish(procs, 90)
    for rc, out in outs:
        assert rc == 0 and "OK" in out, out
    digests = {out.split("OK", 1)[1].split()[0] for _, out in outs}
    assert len(digests) == 1, "ranks disagree bitwise"


def test_link_cut_mid_job_ends_in_clear_error(two_hosts, tmp_path):
    procs = _launch([0, 1], two_hosts, "cut", tmp_path, 8)
    try:
        first = procs[0].stdout.readline()
        assert "READY" in first, first + procs[0].stdout.read()
        _sh("ip", "-n", two_hosts["ns"][0], "link", "set", two_hosts["dev"][0], "down")
        # the bound: a rank still running after 40 s is killed and reported as HUNG below
        outs = _finish(procs, 40)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, out in outs:
        assert "HUNG" not in out, out
        assert rc == 3 and "ERROR" in out, out
        assert ("dropped" in out or "timed out" in out or "lost" in out), out
