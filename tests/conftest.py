import os
import sys

# Tests import the packages from the checkout even without an install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_collection_modifyitems(config, items):
    """Every test that carries tests.helpers.requires_cupy also gets the `gpu` marker, so
    `pytest -m gpu` runs exactly the GPU subset (benchmarks/gpu_check.sh) and `-m "not gpu"`
    the rest. It works for all the ways the skip is applied: `@requires_cupy` on a function or
    class, `pytestmark = requires_cupy` (or a list holding it) on a module, and
    `pytest.param(..., marks=requires_cupy)`; pytest hands every one of them to the item as the
    same skipif Mark, which compares equal to requires_cupy.mark."""
    helpers = sys.modules.get("tests.helpers")
    if helpers is None:  # no collected module imported it, so no test carries the skip
        return
    gpu_skip = helpers.requires_cupy.mark
    for item in items:
        if any(m == gpu_skip for m in item.iter_markers("skipif")):
            item.add_marker("gpu")
