"""The CPU side of the GPU check (benchmarks/gpu_check.sh): the `gpu` marker selects exactly the
tests that carry requires_cupy, and bench_gpu.py's logic (columns, loss traces, the graph
recipe's control flow) runs without a GPU."""
import contextlib
import json
import os
import subprocess
import sys
import types

import pytest

from tests.helpers import load_example, requires_cupy

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@requires_cupy
def test_probe_decorated():  # found by test_gpu_marker_follows_requires_cupy
    pass


@pytest.mark.parametrize("on_gpu", [False, pytest.param(True, marks=requires_cupy)])
def test_probe_param(on_gpu):
    pass


@requires_cupy
def test_probe_sees_a_gpu():  # on a GPU, or on tests/fakecuda under --fake-gpu
    from tensor import backend
    assert backend.cuda_is_available()
    assert float(backend.to_numpy((backend.cupy.arange(3) * 2).sum())) == 6.0


@requires_cupy
@pytest.mark.real_gpu_only("probe of the marker")
def test_probe_real_gpu_only():
    pass


def test_fake_gpu_option_runs_the_gpu_tests_on_the_fake():
    # pytest --fake-gpu (tests/conftest.py): the GPU subset runs, on tests/fakecuda, but for
    # the real_gpu_only tests, which skip with their reason
    env = {k: v for k, v in os.environ.items() if k != "ZGRAD_FAKE_GPU"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                        "--fake-gpu", "-m", "gpu", "tests/test_gpu_check.py"],
                       cwd=_ROOT, env=dict(env, PYTHONPATH=_ROOT), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "3 passed, 1 skipped" in r.stdout, r.stdout + r.stderr
    assert "real GPU only: probe of the marker" in r.stdout, r.stdout


def test_gpu_marker_follows_requires_cupy(request):
    items = {i.name: i for i in request.session.items}
    probes = ["test_probe_decorated", "test_probe_param[True]", "test_probe_param[False]"]
    if not all(p in items for p in probes):
        pytest.skip("the probe tests were deselected in this run")
    assert items["test_probe_decorated"].get_closest_marker("gpu") is not None
    assert items["test_probe_param[True]"].get_closest_marker("gpu") is not None
    assert items["test_probe_param[False]"].get_closest_marker("gpu") is None
    assert request.node.get_closest_marker("gpu") is None


def test_gpu_marker_on_a_module_level_pytestmark():
    # tests/shm/test_cuda_ipc.py says `pytestmark = requires_cupy`: -m gpu selects all of it
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        "--collect-only", "-m", "gpu", "tests/shm/test_cuda_ipc.py"],
                       cwd=_ROOT, env=dict(os.environ, PYTHONPATH=_ROOT), capture_output=True,
                       text=True, timeout=120)
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert len(ids) >= 3 and all(i.startswith("tests/shm/test_cuda_ipc.py::") for i in ids), \
        r.stdout + r.stderr
    assert "deselected" not in r.stdout, r.stdout


def _bench_gpu():
    return load_example("bench_gpu", "benchmarks")


def test_bench_gpu_smoke_on_cpu(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", [
        "bench_gpu.py", "--device", "cpu", "--smoke", "--one-process", "--models", "mlp",
        "--bandwidth-mib", "1",
        "--json", str(out), "--log", str(tmp_path / "bench.log")])
    _bench_gpu().main()
    assert "z eager" in capsys.readouterr().out
    res = json.loads(out.read_text())
    cells = res["models"]["mlp"]["cells"]
    assert cells["z graph"] == {"na": "n/a (cpu)"} and cells["t graph"] == {"na": "n/a (cpu)"}
    for col in ("z eager", "z amp", "t eager", "t amp"):
        assert cells[col]["ms"] > 0 and len(cells[col]["losses"]) == 5, (col, cells[col])
    # from the same weights the two libraries compute the same losses
    assert cells["z eager"]["loss_diff"] < 1e-5 and cells["z amp"]["loss_diff"] < 1e-2
    assert "z eager/t eager" in res["models"]["mlp"]["ratios"]
    assert res["bandwidth"]["z a*x+b"]["GBps"] > 0
    assert "mlp: z eager / t eager < 1.5" in res["goals"]


def test_graph_column_follows_torchs_capture_recipe():
    """With a stand-in `cuda` namespace (capture runs the step once, replay counts) and an Adam
    that refuses capturable= (as a library without it): 3 warm-up steps, each refused option
    named in the note and the column run without it, replay returns the static loss."""
    import tensor
    bench = _bench_gpu()
    replays = []

    class Graph:
        def replay(self):
            replays.append(1)

    def adam(params, lr, capturable=None, **opts):
        if capturable is not None:
            raise TypeError("Adam() got an unexpected keyword argument 'capturable'")
        return tensor.optim.Adam(params, lr=lr, **opts)

    cuda = types.SimpleNamespace(CUDAGraph=Graph, graph=lambda g: contextlib.nullcontext())
    lib = types.SimpleNamespace(__name__="fake", cuda=cuda, nn=tensor.nn,
                                optim=types.SimpleNamespace(Adam=adam))
    b = bench.Bench.__new__(bench.Bench)
    tensor.manual_seed(0)
    model = bench.mlp(tensor.nn, (6, 5, 3))
    x, y = tensor.randn(4, 6), tensor.tensor([0, 1, 2, 1])
    step, losses, note = b.graph_column(lib, model, list(model.parameters()), x, y, None)
    assert len(losses) == bench.GRAPH_WARMUP and losses[-1] < losses[0]
    assert "Adam(fused=True, capturable=True) refused" in note
    assert "Adam(capturable=True) refused" in note and "current stream" in note
    loss = step()
    assert replays == [1] and float(loss) > 0
