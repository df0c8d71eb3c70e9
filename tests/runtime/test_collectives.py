"""Every collective and reduce op against numpy, in real processes, on every path:
one host (shared memory), every rank its own "host" (TCP ring/direct), and mixed layouts
(shm within a host, then TCP between hosts). Many checks share one spawned job per case to
keep the suite fast on two cores."""
import functools
import hashlib
import os
import time

import numpy as np
import pytest

from tests.helpers import shm_listing, spawn_ranks


def spawn(fn, ws, *args, timeout_s=90, **kw):
    """spawn_ranks, checking leaks of *our* segments only (tag "dist"): other suites running
    at the same time on this machine create and drop their own."""
    before = {n for n in shm_listing() if "dist" in n}
    out = spawn_ranks(fn, ws, *args, timeout_s=timeout_s, check_shm=False, **kw)
    deadline = time.monotonic() + 5
    while {n for n in shm_listing() if "dist" in n} - before:
        assert time.monotonic() < deadline, f"leaked: {sorted(shm_listing() - before)}"
        time.sleep(0.05)
    return out

DTYPES = [np.float32, np.float64, np.int64]
# 0 (empty), 1, odd and not divisible by 2/3/4, and sizes above the ring threshold
SIZES = [0, 1, 7, 1001, 300_001]
OPS = ["SUM", "AVG", "MAX", "MIN", "PRODUCT"]


def _input(rank, dtype, n, op, salt=0):
    rng = np.random.default_rng([rank, n, salt, np.dtype(dtype).num])
    if np.dtype(dtype).kind == "i":
        lo, hi = (1, 4) if op == "PRODUCT" else (-1000, 1000)
        return rng.integers(lo, hi, size=n).astype(dtype)
    if op == "PRODUCT":
        return rng.uniform(0.5, 1.5, size=n).astype(dtype)
    return rng.normal(size=n).astype(dtype)


def _expected(op, parts):
    stack = np.stack(parts)
    if op == "SUM":
        return stack.sum(0)
    if op == "AVG":
        return stack.sum(0) / len(parts)
    if op == "MAX":
        return stack.max(0)
    if op == "MIN":
        return stack.min(0)
    return np.prod(stack, axis=0)


def _close(got, want, what):
    if got.dtype.kind == "i":
        assert np.array_equal(got, want), what
    else:
        tol = 1e-5 if got.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def _layout(rank, layout):
    if layout == "tcp":
        os.environ["ZGRAD_HOST_ID"] = f"host{rank}"
    elif layout == "mixed":
        os.environ["ZGRAD_HOST_ID"] = f"host{rank // 2}"


def _all_collectives(rank, ws, layout):
    _layout(rank, layout)
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    assert dist.is_initialized() and dist.get_rank() == rank and dist.get_world_size() == ws
    pg = dist.api._state.world                 # the route every collective takes here
    route = type(pg._route("all_gather")).__name__
    assert route == {"shm": "ShmComm" if ws > 1 else "TcpRoute", "tcp": "TcpRoute",
                     "mixed": "_Hierarchical"}[layout], route
    digests = []
    for dtype in DTYPES:
        for n in SIZES:
            for op in OPS:
                if op == "AVG" and np.dtype(dtype).kind == "i":
                    with pytest.raises(TypeError, match="AVG needs a floating-point"):
                        dist.all_reduce(_input(rank, dtype, n, op), op=dist.ReduceOp.AVG)
                    continue
                if n == 300_001 and op not in ("SUM", "MAX"):
                    continue
                x = _input(rank, dtype, n, op)
                x2 = x.copy()
                dist.all_reduce(x, op=getattr(dist.ReduceOp, op))
                want = _expected(op, [_input(r, dtype, n, op) for r in range(ws)])
                _close(x, want, f"all_reduce {op} {np.dtype(dtype)} n={n}")
                dist.all_reduce(x2, op=getattr(dist.ReduceOp, op))
                assert x.tobytes() == x2.tobytes(), "all_reduce is not bitwise reproducible"
                digests.append(hashlib.sha256(x.tobytes()).hexdigest())
        # 2-d, the other collectives
        n = 5 * ws + 3
        parts = [_input(r, dtype, n, "SUM", 1).reshape(-1, 1) for r in range(ws)]
        mine = parts[rank].copy()

        b = mine.copy()
        dist.broadcast(b, src=ws - 1)
        assert np.array_equal(b, parts[ws - 1])

        for op in OPS:
            if op == "AVG" and np.dtype(dtype).kind == "i":
                continue
            ins = [_input(rk, dtype, n, op, 3).reshape(-1, 1) for rk in range(ws)]
            r = ins[rank].copy()
            dist.reduce(r, dst=ws - 1, op=getattr(dist.ReduceOp, op))
            if rank == ws - 1:
                _close(r, _expected(op, ins), f"reduce {op}")
            else:
                assert np.array_equal(r, ins[rank]), "reduce changed a non-root tensor"
            big = _input(rank, dtype, ws * n, op, 4)
            out = np.empty(n, dtype)
            dist.reduce_scatter_tensor(out, big, op=getattr(dist.ReduceOp, op))
            full = _expected(op, [_input(rk, dtype, ws * n, op, 4) for rk in range(ws)])
            _close(out, full[rank * n:(rank + 1) * n], f"reduce_scatter_tensor {op}")

        outs = [np.empty_like(mine) for _ in range(ws)]
        dist.all_gather(outs, mine)
        for a, p in zip(outs, parts):
            assert np.array_equal(a, p)

        cat = np.empty((ws * n, 1), dtype)
        dist.all_gather_into_tensor(cat, mine)
        assert np.array_equal(cat, np.concatenate(parts))

        # reduce_scatter_tensor above the ring threshold, input left untouched
        big = _input(rank, dtype, ws * 140_000, "SUM", 2)
        keep = big.copy()
        out = np.empty(140_000, dtype)
        dist.reduce_scatter_tensor(out, big)
        assert np.array_equal(big, keep)
        full = _expected("SUM", [_input(rk, dtype, ws * 140_000, "SUM", 2) for rk in range(ws)])
        _close(out, full[rank * 140_000:(rank + 1) * 140_000], "reduce_scatter_tensor (ring)")
        if np.dtype(dtype).itemsize == 8:       # ring-sized all_gather (8-byte dtypes)
            cat = np.empty(ws * 140_000, dtype)
            dist.all_gather_into_tensor(cat, _input(rank, dtype, 140_000, "SUM", 5))
            assert np.array_equal(cat, np.concatenate(
                [_input(rk, dtype, 140_000, "SUM", 5) for rk in range(ws)]))
        cat = np.empty((ws, 3), dtype)          # the stacked output form
        dist.all_gather_into_tensor(cat, np.full(3, rank, dtype))
        assert np.array_equal(cat, np.repeat(np.arange(ws, dtype=dtype)[:, None], 3, 1))

        g = [np.empty_like(mine) for _ in range(ws)] if rank == 1 % ws else None
        dist.gather(mine, g, dst=1 % ws)
        if g is not None:
            for a, p in zip(g, parts):
                assert np.array_equal(a, p)

        s = np.empty_like(mine)
        dist.scatter(s, parts if rank == 0 else None, src=0)
        assert np.array_equal(s, parts[rank])

        # all_to_all_single with uneven splits: rank i sends (i + p) % 3 + 1 rows to rank p
        rows = lambda i, p: (i + p) % 3 + 1  # noqa: E731
        send = np.concatenate([np.full((rows(rank, p), 2), 100 * rank + p, dtype)
                               for p in range(ws)])
        recv = np.empty((sum(rows(p, rank) for p in range(ws)), 2), dtype)
        dist.all_to_all_single(recv, send, [rows(p, rank) for p in range(ws)],
                               [rows(rank, p) for p in range(ws)])
        want = np.concatenate([np.full((rows(p, rank), 2), 100 * p + rank, dtype)
                               for p in range(ws)])
        assert np.array_equal(recv, want)

        # the list forms: reduce_scatter and all_to_all (pair sizes differ)
        ins = [_input(rank, dtype, 4 + p, "SUM", 6)[:3] for p in range(ws)]
        out = np.empty(3, dtype)
        dist.reduce_scatter(out, ins)
        _close(out, _expected("SUM", [_input(k, dtype, 4 + rank, "SUM", 6)[:3]
                                      for k in range(ws)]), "reduce_scatter")
        outs = [np.empty(rows(p, rank), dtype) for p in range(ws)]
        dist.all_to_all(outs, [np.full(rows(rank, p), 100 * rank + p, dtype)
                               for p in range(ws)])
        assert all(np.array_equal(o, np.full(rows(p, rank), 100 * p + rank, dtype))
                   for p, o in enumerate(outs))
    dist.barrier()
    objs = [None]
    if rank == 0:
        objs = [{"lr": 0.1, "names": ["a", "b"], "w": np.arange(3.0), "n": np.int64(7)}]
    dist.broadcast_object_list(objs, src=0)
    assert objs[0]["names"] == ["a", "b"] and objs[0]["w"].tolist() == [0.0, 1.0, 2.0]
    assert objs[0]["n"] == 7
    gathered = [None] * ws
    dist.all_gather_object(gathered, {"rank": rank, "pad": "x" * rank})
    assert [o["rank"] for o in gathered] == list(range(ws))
    dist.destroy_process_group()
    assert not dist.is_initialized()
    return digests


@pytest.mark.parametrize("ws,layout", [(1, "shm"), (2, "shm"), (3, "shm"), (4, "shm"),
                                       (2, "tcp"), (3, "tcp"), (4, "tcp"),
                                       (3, "mixed"), (4, "mixed")])
def test_every_collective_matches_numpy(ws, layout):
    digests = spawn(_all_collectives, ws, layout)
    # the same bits on every rank
    assert all(d == digests[0] for d in digests)


def _tensor_inputs(rank, ws):
    import tensor
    import runtime.distributed as dist
    dist.init_process_group(timeout=30)
    t = tensor.tensor([1.0, 2.0, 3.0]) * (rank + 1)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    before = t.array
    dist.broadcast(t, src=0)
    assert t.array is before          # written in place into t.array
    with pytest.raises(TypeError, match="zgrad Tensor or a numpy"):
        dist.all_reduce([1.0, 2.0])
    with pytest.raises(ValueError, match="ReduceOp"):
        dist.all_reduce(np.zeros(2), op="MEAN")
    with pytest.raises(ValueError, match="not a member"):
        dist.broadcast(np.zeros(2), src=ws + 3)
    out = t.tolist()
    dist.destroy_process_group()
    return out


def test_tensors_in_place_and_bad_arguments():
    pytest.importorskip("tensor")
    res = spawn(_tensor_inputs, 2, timeout_s=30)
    assert res[0] == res[1] == [3.0, 6.0, 9.0]


# --------------------------------------------------------------------------------------------
# every collective's shared-memory route, with slots of 1 KiB so that a few hundred elements
# cross many chunks, both slot sets and every collective's barrier protocol


def _rank_order(ufunc, parts):
    return functools.reduce(lambda a, b: ufunc(a, b), parts)


def _shm_every_collective(rank, ws):
    import runtime.distributed as dist
    from runtime.distributed import shm_comm
    shm_comm.SLOT_BYTES = 1024
    shm_comm.SMALL_BYTES = 256
    dist.init_process_group(timeout=30)
    pg = dist.api._state.world
    assert pg._route("all_gather") is pg.local            # this job takes shared memory
    same = hashlib.sha256()                                 # what every rank must agree on
    for dtype in (np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_,
                  np.complex64):
        dt = np.dtype(dtype)
        rng = lambda *k: np.random.default_rng([*k, dt.num])  # noqa: E731
        data = lambda r, n, k=0: (  # noqa: E731
            rng(r, n, k).integers(1, 50, n) if dt.kind in "iu" else
            rng(r, n, k).integers(0, 2, n) if dt.kind == "b" else
            rng(r, n, k).normal(size=n)).astype(dt)
        n = 1001                                           # 1001 % 3 != 0: uneven slices
        parts = [data(r, n) for r in range(ws)]
        # all_reduce and reduce: bitwise numpy's left-to-right reduction in rank order
        ops = [("SUM", np.add), ("PRODUCT", np.multiply)]
        if dt.kind != "c":
            ops.append(("MAX", np.maximum))
        for op, ufunc in ops:
            x = parts[rank].copy()
            dist.all_reduce(x, op=getattr(dist.ReduceOp, op))
            assert x.tobytes() == _rank_order(ufunc, parts).tobytes(), (op, dt)
            same.update(x.tobytes())
            # reduce into a non-contiguous view (every other column), the rest untouched
            grid = np.zeros((n, 2), dt)
            grid[:, 0] = parts[rank]
            dist.reduce(grid[:, 0], dst=ws - 1, op=getattr(dist.ReduceOp, op))
            want = _rank_order(ufunc, parts) if rank == ws - 1 else parts[rank]
            assert grid[:, 0].tobytes() == want.tobytes() and not grid[:, 1].any(), (op, dt)
        if dt.kind in "fc":
            x = parts[rank].copy()
            dist.all_reduce(x, op=dist.ReduceOp.AVG)
            assert x.tobytes() == (_rank_order(np.add, parts) / dt.type(ws)).astype(dt).tobytes()
        # broadcast into a non-contiguous view
        grid = np.zeros((2, n), dt)
        grid[1] = parts[rank]
        dist.broadcast(grid[1, ::-1], src=1)
        assert np.array_equal(grid[1], parts[1]) and not grid[0].any()
        # all_gather: non-contiguous input and outputs; all_gather_into_tensor (stacked)
        src = np.stack([parts[rank], parts[rank]], 1)[:, 1]
        outs = [np.zeros((n, 3), dt)[:, 2] for _ in range(ws)]
        dist.all_gather(outs, src)
        assert all(np.array_equal(o, p) for o, p in zip(outs, parts))
        cat = np.zeros((ws, n), dt)
        dist.all_gather_into_tensor(cat, parts[rank])
        assert np.array_equal(cat, np.stack(parts))
        same.update(cat.tobytes())
        # gather and scatter (root 1), with a non-contiguous scatter target
        g = [np.zeros(n, dt) for _ in range(ws)] if rank == 1 else None
        dist.gather(parts[rank], g, dst=1)
        assert g is None or all(np.array_equal(a, p) for a, p in zip(g, parts))
        tgt = np.zeros((n, 2), dt)
        dist.scatter(tgt[:, 1], [p[::-1] for p in parts] if rank == 1 else None, src=1)
        assert np.array_equal(tgt[:, 1], parts[rank][::-1]) and not tgt[:, 0].any()
        # reduce_scatter (list) and reduce_scatter_tensor: rank r's part, rank order bits
        ins = [data(rank, n, 10 + p) for p in range(ws)]
        out = np.zeros(n, dt)
        dist.reduce_scatter(out, ins)
        want = _rank_order(np.add, [data(k, n, 10 + rank) for k in range(ws)])
        assert out.tobytes() == want.tobytes()
        big = np.concatenate(ins)
        out2 = np.zeros((n, 2), dt)[:, 0]
        dist.reduce_scatter_tensor(out2, big)
        assert out2.tobytes() == want.tobytes()
        inplace = big.copy()               # output aliasing this rank's part of the input
        dist.reduce_scatter_tensor(inplace[rank * n:(rank + 1) * n], inplace)
        assert inplace[rank * n:(rank + 1) * n].tobytes() == want.tobytes()
        # all_to_all (list) and all_to_all_single with uneven sizes per pair
        size = lambda i, p: 97 * ((i + 2 * p) % 3) + i  # noqa: E731
        send = [np.full(size(rank, p), 10 * rank + p, dt) for p in range(ws)]
        recv = [np.zeros(size(p, rank), dt) for p in range(ws)]
        dist.all_to_all(recv, send)
        for p in range(ws):
            assert np.array_equal(recv[p], np.full(size(p, rank), 10 * p + rank, dt)), (p, dt)
        single = np.zeros((sum(size(p, rank) for p in range(ws)), 2), dt)
        dist.all_to_all_single(single, np.stack([np.concatenate(send)] * 2, 1),
                               [size(p, rank) for p in range(ws)],
                               [size(rank, p) for p in range(ws)])
        assert np.array_equal(single[:, 1], np.concatenate(recv))
    dist.barrier()
    # all_to_all sizes that do not match are an error on every rank, naming the pair
    with pytest.raises(dist.DesyncError, match="rank 0 sends 2 elements to rank 1, which "
                                               "expects 3"):
        dist.all_to_all([np.zeros(3 if p == 0 and rank == 1 else 2) for p in range(ws)],
                        [np.zeros(2) for _ in range(ws)])
    dist.destroy_process_group()
    return same.hexdigest()


def test_every_collective_through_shared_memory_matches_numpy_bitwise():
    digests = spawn(_shm_every_collective, 3, timeout_s=120)
    assert len(set(digests)) == 1, digests
