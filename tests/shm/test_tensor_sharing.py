"""Tensors with shared storage cross process boundaries by handle (tensor's integration of shm)."""
import gc
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shm
import shm.multiprocessing as mp
from tests.helpers import assert_no_new_shm, shm_listing
from tests.shm.test_multiprocessing import _get, _join

tensor = pytest.importorskip("tensor")


@pytest.fixture(autouse=True)
def no_leaks():
    before = shm_listing()
    yield
    gc.collect()
    assert_no_new_shm(before, timeout_s=10)


def test_share_memory_and_is_shared():
    t = tensor.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    assert not t.is_shared()
    assert t.share_memory_() is t and t.is_shared() and shm.is_shared(t.array)
    assert t.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    data = t.array
    t.share_memory_()
    assert t.array is data  # already shared: no second copy
    t.grad = tensor.ones(2, 2)
    t.share_memory_()
    assert t.grad.is_shared()
    for x in (t, t.grad):
        payload = ForkingPickler.dumps(x)
        assert len(payload) < 1000  # a handle
        y = pickle.loads(payload)   # (claims the handle: an unclaimed one holds the segment)
        assert np.shares_memory(y.array, x.array) and y.requires_grad == x.requires_grad
    v = tensor.from_numpy(shm.zeros((3,)))
    assert v.is_shared()  # from_numpy keeps the shared storage


def _child_updates(q, r):
    w, w_view, g = q.get(timeout=30)
    assert w.is_shared() and w_view.is_shared() and g.is_shared()
    assert w.requires_grad and np.shares_memory(w.array, w_view.array)
    with tensor.no_grad():
        w.array += 1.0          # in place on the shared storage: the parent sees it
        g.array[:] = 5.0
    made = tensor.zeros(4).share_memory_()
    made.array[:] = 7.0
    r.put((made, float(w_view.array.sum())))
    assert q.get(timeout=30) == "parent wrote"
    r.put(made.tolist())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_tensors_views_and_grads_through_a_queue(method):
    ctx = mp.get_context(method)
    q, r = ctx.Queue(), ctx.Queue()
    w = tensor.zeros(3, 4, requires_grad=True).share_memory_()
    w.grad = tensor.zeros(3, 4)
    w.share_memory_()
    p = ctx.Process(target=_child_updates, args=(q, r))
    p.start()
    view = w.detach()[1:, ::2]
    assert view.is_shared()
    q.put((w, view, w.grad))
    made, view_sum = _get(r, p)
    assert view_sum == 4.0                       # the view saw the child's += through w
    assert (w.detach().numpy() == 1.0).all() and (w.grad.numpy() == 5.0).all()
    assert made.is_shared() and made.tolist() == [7.0] * 4
    made.array[:] = -1.0
    q.put("parent wrote")
    assert _get(r, p) == [-1.0] * 4
    _join(p)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_hogwild_example_trains_one_shared_model(method, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("tensor.nn")
    import importlib
    import os
    # importable by name, so that spawned workers can unpickle `train`
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    hogwild = importlib.import_module("hogwild_digits")
    # the workers' updates land in the parent's model: its accuracy rises from chance
    acc = hogwild.main(["--procs", "2", "--epochs", "2", "--start-method", method])
    assert acc > 0.8
