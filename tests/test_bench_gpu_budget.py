"""bench_gpu.py's time budget and its two timing phases (Note [Two timing phases]), on the CPU:
the defaults fit gpu_check.sh's bench section, and a graph that faults (a sticky CUDA error,
simulated on the fake CuPy) leaves the eager columns their numbers."""
import argparse
import sys

import pytest

from tests.helpers import load_example



def _bench_gpu():
    return load_example("bench_gpu", "benchmarks")


def test_part_limits_fit_the_budget():
    b = _bench_gpu()
    # the default budget (--budget-s 165) leaves gpu_check.sh's `timeout 180` room to spare
    parts = ["mlp", "transformer", "cnn", "bandwidth"]
    end, now, cap = 165.0, 0.0, 90.0
    spent = []
    for i in range(len(parts)):  # each part runs to its kill: the worst case
        limit, deadline = b.part_limits(end, now, len(parts) - i, cap)
        assert limit > 0 and now < deadline < now + limit
        if i < len(parts) - 1:   # every later part still gets its reserve
            assert end - (now + limit) >= b.RESERVE_S * (len(parts) - 1 - i) - 1e-9
        spent.append(limit)
        now += limit
    assert now <= end and spent[0] == min(cap, end - 3 * b.RESERVE_S)
    assert b.part_limits(end, end - 5, 1, cap) == (0.0, None)   # nothing useful left


def test_a_faulting_graph_leaves_the_eager_columns_their_numbers(monkeypatch, capsys):
    from tests import fakecuda
    fakecuda.install(monkeypatch, fused=True)
    monkeypatch.setitem(sys.modules, "torch", None)   # the torch columns say "did not import"
    import tensor
    b = _bench_gpu()
    broken = []
    real_graph_column = b.Bench.graph_column

    def graph_column(self, *a):
        replay, losses, note = real_graph_column(self, *a)
        calls = []

        def faulting():
            calls.append(1)
            if len(calls) > b.TRACE - b.GRAPH_WARMUP:   # after its trace: in phase 2's timing
                broken.append(1)
                raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access")
            return replay()
        return faulting, losses, note

    real_sync = tensor.cuda.synchronize

    def sync(device=None):   # sticky: every later sync fails, as every later launch would
        if broken:
            raise RuntimeError("cudaErrorIllegalAddress (sticky)")
        real_sync(device)

    monkeypatch.setattr(b.Bench, "graph_column", graph_column)
    monkeypatch.setattr(tensor.cuda, "synchronize", sync)
    args = argparse.Namespace(device="cuda", smoke=True, repeats=2, steps=1, log=None, json=None,
                              deadline=None, bandwidth_mib=0, no_goals=True)
    res = b.run_here(args, b.specs(True), ["mlp"])
    cells = res["models"]["mlp"]["cells"]
    assert broken and cells["z graph"]["error"].startswith("error: RuntimeError")
    for col in ("z eager", "z fused", "z amp"):   # phase 1's numbers stand
        assert cells[col]["ms"] > 0 and len(cells[col]["all_ms"]) >= args.repeats, cells[col]
        assert "later timing failed" in cells[col]["note"], cells[col]
    assert "torch did not import" in cells["t eager"]["error"]
    out = capsys.readouterr().out
    assert "z eager" in out and "z graph  error:" in out


def test_the_deadline_cuts_repeats_but_keeps_one(monkeypatch):
    pytest.importorskip("torch")
    b = _bench_gpu()
    args = argparse.Namespace(device="cpu", smoke=True, repeats=4, steps=1, log=None,
                              json=None, deadline=None, bandwidth_mib=1, no_goals=True)
    asked = []

    def late(self):   # the deadline passes right after the first column is built
        asked.append(1)
        return len(asked) > 1
    monkeypatch.setattr(b.Bench, "late", late)
    res = b.run_here(args, b.specs(True), ["mlp"])
    cells = res["models"]["mlp"]["cells"]
    assert [c for c, v in cells.items() if "ms" in v] == ["z eager"]
    assert len(cells["z eager"]["all_ms"]) == 1 and "repeats cut" in cells["z eager"]["note"]
    assert "not run" in cells["t eager"]["error"] and cells["z graph"] == {"na": "n/a (cpu)"}
    # the bandwidth rows: one timed round (after the warm-up round), then the deadline
    assert len(res["bandwidth"]) == 7 and all(v["ms"] > 0 for v in res["bandwidth"].values())


def test_a_part_past_its_deadline_reports_instead_of_crashing():
    pytest.importorskip("torch")
    b = _bench_gpu()
    args = argparse.Namespace(device="cpu", smoke=True, repeats=2, steps=1, log=None,
                              json=None, deadline=0.0, bandwidth_mib=0, no_goals=True)
    cells = b.run_here(args, b.specs(True), ["mlp"])["models"]["mlp"]["cells"]
    assert all("not run" in cells[c]["error"] for c in cells if "graph" not in c), cells


def test_a_torch_without_cuda_leaves_the_zgrad_columns_their_numbers(monkeypatch):
    """torch imports but sees no GPU (here: the CPU build, with the fake CuPy as zgrad's GPU):
    its columns say so, and zgrad's are timed (torch.cuda.synchronize() in every sync() failed
    them all)."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    from tests import fakecuda
    fakecuda.install(monkeypatch, fused=True)
    b = _bench_gpu()
    args = argparse.Namespace(device="cuda", smoke=True, repeats=1, steps=1, log=None,
                              json=None, deadline=None, bandwidth_mib=0, no_goals=True)
    cells = b.run_here(args, b.specs(True), ["mlp"])["models"]["mlp"]["cells"]
    for col in ("z eager", "z fused", "z amp", "z graph"):
        assert cells[col]["ms"] > 0, cells[col]
    assert "sees no CUDA device" in cells["t eager"]["error"]
