"""A small op profiler: wall time per forward op and per backward node, by name (zgrad's
``torch.profiler.profile(...).key_averages().table()``).

    from runtime.profiler import profile, record_function
    with profile() as prof:
        with record_function("step"):
            loss = model(x).sum(); loss.backward()
    print(prof.table(sort_by="self", row_limit=20))

Note [Profiler hooks]
~~~~~~~~~~~~~~~~~~~~~
Nothing in the tensor hot path knows about the profiler, so it costs nothing while off. While
on, it swaps every reference to an op function (the public functions of ``tensor.ops.*`` and
``tensor.nn.functional``) for a timed wrapper: in every loaded module's namespace, among
Tensor's attributes (operators and methods), and in the closure cells of Tensor's methods
(``__radd__`` is ``lambda a, b: add(b, a)`` with ``add`` in a cell). ``from_op`` is swapped
too: it wraps each recorded node's backward closure, so the engine's call to ``node.fn`` is
timed under the node's name (``MulBackward0``). Everything is put back on exit.

Times nest: an op that calls other ops (``cross_entropy`` -> ``log_softmax`` -> ...) gets
their time in its *total* but not in its *self* time, as torch.profiler reports them. Ops run
inside a backward closure count towards that backward node (they are how it computes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
import types

_perf = time.perf_counter


@dataclasses.dataclass
class OpStat:
    """Aggregated timings of one name (torch's FunctionEventAvg, wall time on the CPU)."""
    name: str
    kind: str            # "forward", "backward" or "user" (record_function)
    count: int = 0
    self_s: float = 0.0
    total_s: float = 0.0


class _State(threading.local):
    def __init__(self):
        self.stack = []         # child-time accumulators of the open ranges
        self.in_backward = 0


class Profiler:
    """Times ops while active; see Note [Profiler hooks]. Use ``profile()`` to get one."""

    def __init__(self):
        self.stats: dict = {}
        self._tls = _State()
        self._lock = threading.Lock()
        self._undo: list = []
        self.wall_s = 0.0

    # -- recording -------------------------------------------------------------------------
    def _add(self, name, kind, total_s, self_s):
        with self._lock:
            st = self.stats.get((name, kind))
            if st is None:
                st = self.stats[(name, kind)] = OpStat(name, kind)
            st.count += 1
            st.total_s += total_s
            st.self_s += self_s

    def _timed(self, fn, name, kind):
        """Call `fn`, recording its total and self time under `name`."""
        tls = self._tls

        def timed(*args, **kwargs):
            if tls.in_backward and kind == "forward":
                return fn(*args, **kwargs)
            tls.stack.append(0.0)
            if kind == "backward":
                tls.in_backward += 1
            start = _perf()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = _perf() - start
                if kind == "backward":
                    tls.in_backward -= 1
                child = tls.stack.pop()
                if tls.stack:
                    tls.stack[-1] += dt
                self._add(name, kind, dt, dt - child)
        timed.__wrapped__ = fn
        return timed

    # -- hooks -----------------------------------------------------------------------------
    def _install(self):
        import tensor  # noqa: F401  (loads every op module)
        import tensor.nn.functional  # noqa: F401  (its functions are ops too)
        from tensor import _tensor
        from tensor._tensor import Tensor
        ops = {}
        for modname, mod in list(sys.modules.items()):
            if mod is None or not (modname.startswith("tensor.ops.") or
                                   modname == "tensor.nn.functional"):
                continue
            for attr, obj in vars(mod).items():
                if isinstance(obj, types.FunctionType) and not attr.startswith("_") and \
                        obj.__module__ == modname:
                    label = ("F." + attr) if modname == "tensor.nn.functional" else attr
                    ops[id(obj)] = (obj, self._timed(obj, label, "forward"))
        orig_from_op = _tensor.from_op
        prof = self

        def from_op(y, parents, backward, name, *args, **kwargs):
            node_name = "".join(p[:1].upper() + p[1:] for p in name.split("_")) + "Backward0"
            return orig_from_op(y, parents, prof._timed(backward, node_name, "backward"), name,
                                *args, **kwargs)
        ops[id(orig_from_op)] = (orig_from_op, from_op)
        for mod in list(sys.modules.values()):
            if isinstance(mod, types.ModuleType):
                self._swap_namespace(vars(mod), ops, lambda k, v, m=mod: setattr(m, k, v))
        self._swap_namespace(dict(vars(Tensor)), ops,
                             lambda k, v: setattr(Tensor, k, v))
        for obj in vars(Tensor).values():
            if getattr(obj, "__wrapped__", None) is not None:
                continue     # one of ours (swapped in just above): its cell holds the original
            for cell in getattr(obj, "__closure__", None) or ():
                try:
                    hit = ops.get(id(cell.cell_contents))
                except ValueError:   # an empty cell
                    continue
                if hit is not None and hit[0] is cell.cell_contents:
                    cell.cell_contents = hit[1]
                    self._undo.append(lambda c=cell, o=hit[0]: setattr(c, "cell_contents", o))

    def _swap_namespace(self, ns, ops, setter):
        for key, value in list(ns.items()):
            hit = ops.get(id(value))
            if hit is not None and hit[0] is value:
                setter(key, hit[1])
                self._undo.append(lambda k=key, o=value: setter(k, o))

    def _uninstall(self):
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def __enter__(self):
        self._install()
        _active.append(self)
        self._start = _perf()
        return self

    def __exit__(self, *exc):
        self.wall_s += _perf() - self._start
        _active.remove(self)
        self._uninstall()
        return False

    # -- results ---------------------------------------------------------------------------
    def key_averages(self) -> list:
        """Every name's OpStat, the most self time first."""
        return sorted(self.stats.values(), key=lambda s: -s.self_s)

    def table(self, sort_by: str = "self", row_limit: int = 30) -> str:
        """A text table of the names with the most `sort_by` ("self", "total" or "count")."""
        key = {"self": lambda s: -s.self_s, "total": lambda s: -s.total_s,
               "count": lambda s: -s.count}[sort_by]
        rows = sorted(self.stats.values(), key=key)[:row_limit]
        ops_s = sum(s.self_s for s in self.stats.values() if s.kind != "user") or 1e-12
        head = (f"{'Name':<34}{'Kind':>9}{'Calls':>8}{'Self ms':>11}{'Self %':>8}"
                f"{'Total ms':>11}{'Avg us':>10}")
        lines = [head, "-" * len(head)]
        for s in rows:
            pct = f"{100 * s.self_s / ops_s:7.1f}%" if s.kind != "user" else f"{'':>8}"
            lines.append(f"{s.name[:33]:<34}{s.kind:>9}{s.count:>8}{1e3 * s.self_s:>11.3f}"
                         f"{pct}{1e3 * s.total_s:>11.3f}{1e6 * s.total_s / s.count:>10.1f}")
        lines.append("-" * len(head))
        lines.append(f"ops self total: {1e3 * ops_s:.3f} ms of {1e3 * self.wall_s:.3f} ms "
                     "profiled (the rest: Python between ops, data loading, optimizer loops)")
        return "\n".join(lines)


_active: list = []


def profile() -> Profiler:
    """A Profiler to use as a context manager (``with profile() as prof:``)."""
    return Profiler()


@contextlib.contextmanager
def record_function(name: str):
    """Time a block under `name` in the active profiler (a no-op when none is active)."""
    if not _active:
        yield
        return
    p = _active[-1]
    tls = p._tls
    tls.stack.append(0.0)
    start = _perf()
    try:
        yield
    finally:
        dt = _perf() - start
        child = tls.stack.pop()
        if tls.stack:
            tls.stack[-1] += dt
        p._add(name, "user", dt, dt - child)   # self: the time outside the ops it contains
