"""runtime.profiler: per-op forward and backward times by name; nothing left patched after."""
import sys
import types

import numpy as np

import tensor
import tensor.nn as nn
import tensor.nn.functional as F
from runtime.profiler import profile, record_function


def _wrappers_left():
    """Every op wrapper still reachable from a module namespace or from Tensor."""
    left = [f"{m.__name__}.{k}" for m in list(sys.modules.values())
            if isinstance(m, types.ModuleType) for k, v in list(vars(m).items())
            if type(v) is types.FunctionType
            and v.__qualname__.startswith("Profiler.")]
    left += [k for k, v in vars(tensor.Tensor).items()
             if getattr(v, "__qualname__", "").startswith("Profiler.")]
    for v in vars(tensor.Tensor).values():
        for cell in getattr(v, "__closure__", None) or ():
            try:
                c = cell.cell_contents
                if isinstance(c, types.FunctionType) and c.__qualname__.startswith("Profiler."):
                    left.append(f"cell of {v}")
            except ValueError:
                pass
    return left


def _step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    model.zero_grad()
    loss.backward()
    return loss


def test_profile_times_forward_ops_and_backward_nodes_by_name():
    tensor.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = tensor.randn(32, 8)
    y = tensor.tensor(np.arange(32) % 3)
    with profile() as prof:
        for _ in range(3):
            with record_function("step"):
                _step(model, x, y)
            _ = 1.0 + x          # a reflected operator, through a closure cell
    stats = {(s.name, s.kind): s for s in prof.key_averages()}
    assert stats[("linear", "forward")].count == 6
    assert stats[("LinearBackward0", "backward")].count == 6
    assert stats[("ReluBackward0", "backward")].count == 3
    assert stats[("step", "user")].count == 3
    assert stats[("add", "forward")].count == 3
    ce = stats[("F.cross_entropy", "forward")]
    assert ce.count == 3 and 0 <= ce.self_s <= ce.total_s
    assert stats[("step", "user")].total_s >= sum(
        s.self_s for s in stats.values() if s.kind == "backward")
    assert len(prof.table(row_limit=5).splitlines()) == 5 + 4   # header, rules, summary
    table = prof.table(sort_by="count", row_limit=100)
    assert all(name in table for name in ("LinearBackward0", "F.cross_entropy", "step"))
    assert _wrappers_left() == []


def test_profiled_results_equal_unprofiled_and_nothing_stays_patched():
    tensor.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = tensor.randn(6, 4), tensor.tensor(np.array([0, 1, 0, 1, 1, 0]))
    _step(model, x, y)
    plain = [p.grad.numpy().copy() for p in model.parameters()]
    with profile():
        _step(model, x, y)
        assert _wrappers_left() != []
    assert all(np.array_equal(a, p.grad.numpy()) for a, p in zip(plain, model.parameters()))
    assert _wrappers_left() == []
    with record_function("outside"):   # no active profiler: a no-op
        pass
