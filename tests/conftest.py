import os
import sys

import pytest

# Tests import the packages from the checkout even without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Note [Fake GPU runs]
# ~~~~~~~~~~~~~~~~~~~~
# `pytest --fake-gpu -m gpu ...` is a developer mode: the GPU tests (those carrying
# tests.helpers.requires_cupy) are not skipped but run on tests/fakecuda, the strict CPU
# stand-in for CuPy, to find bad API use, wrong expectations and CUDA-only typos before a
# hardware run. Each GPU test gets fakecuda.install(monkeypatch, fused=True, import_cupy=True)
# (the fused paths run, as they do on a GPU by default; `import cupy` in the test finds the
# fake) and ZGRAD_FAKE_GPU=1 in its environment: ranks that tests.helpers.spawn_ranks starts
# with the "spawn" method install the fake themselves from it (forked ranks inherit it), and
# so do new Python processes (the launcher's workers) through tests/fakecuda/site, which the
# fixture puts first on PYTHONPATH (a test that sets PYTHONPATH must keep what it had). A
# test the fake cannot stand in for carries `pytest.mark.real_gpu_only("why")` and is skipped
# in this mode only. Without the option nothing changes: GPU tests skip without CuPy and a GPU.


def pytest_addoption(parser):
    parser.addoption("--fake-gpu", action="store_true", default=False,
                     help="run the GPU tests (-m gpu) on tests/fakecuda, a CPU stand-in for "
                          "CuPy; tests marked real_gpu_only are skipped (see tests/conftest.py)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "real_gpu_only(reason): a GPU test the fake CuPy cannot stand in for; "
                   "skipped under --fake-gpu only")


def pytest_collection_modifyitems(config, items):
    """Every test that carries tests.helpers.requires_cupy also gets the `gpu` marker, so
    `pytest -m gpu` runs exactly the GPU subset (benchmarks/gpu_check.sh) and `-m "not gpu"`
    the rest. It works for all the ways the skip is applied: `@requires_cupy` on a function or
    class, `pytestmark = requires_cupy` (or a list holding it) on a module, and
    `pytest.param(..., marks=requires_cupy)`; pytest hands every one of them to the item as the
    same skipif Mark, which compares equal to requires_cupy.mark.

    Under --fake-gpu that skip is taken off the GPU tests (from every node that holds it: the
    item, its class, its module) and real_gpu_only ones are skipped with their reason."""
    helpers = sys.modules.get("tests.helpers")
    if helpers is None:  # no collected module imported it, so no test carries the skip
        return
    gpu_skip = helpers.requires_cupy.mark
    gpu = [item for item in items if any(m == gpu_skip for m in item.iter_markers("skipif"))]
    for item in gpu:
        item.add_marker("gpu")
    if not config.getoption("fake_gpu"):
        return
    for item in gpu:  # all found first: a module's mark goes with its first item
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers if m != gpu_skip]
        only = item.get_closest_marker("real_gpu_only")
        if only is not None:
            why = only.args[0] if only.args else only.kwargs.get("reason", "")
            item.add_marker(pytest.mark.skip(reason=f"real GPU only: {why}"))


@pytest.fixture(autouse=True)
def _fake_gpu(request):
    """Under --fake-gpu, a GPU test runs with tests/fakecuda installed (Note [Fake GPU runs]);
    otherwise it does nothing (and asks for no other fixture)."""
    if not (request.config.getoption("fake_gpu") and
            request.node.get_closest_marker("gpu") is not None):
        return None
    from tests import fakecuda
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.setenv("ZGRAD_FAKE_GPU", "1")
    site = os.path.join(os.path.dirname(os.path.abspath(fakecuda.__file__)), "site")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(   # new processes: site/sitecustomize.py
        [site, os.path.dirname(os.path.dirname(site))] + os.environ.get("PYTHONPATH", "")
        .split(os.pathsep)).rstrip(os.pathsep))
    return fakecuda.install(monkeypatch, fused=True, import_cupy=True)
