"""The autograd engine's end-of-backward callbacks (queue_callback) and tensor.futures.Future."""
import threading

import numpy as np
import pytest

import tensor
from tensor.autograd import queue_callback
from tensor.futures import Future, collect_all


def test_queued_callbacks_run_once_backward_is_done_in_order():
    w = tensor.ones(3, requires_grad=True)
    v = tensor.ones(3, requires_grad=True)
    log = []

    def hook(p):
        log.append(("hook", id(p)))
        if len(log) == 1:
            # both leaves have their .grad when the callback runs, even the later one
            queue_callback(lambda: log.append(("cb1", w.grad is not None and v.grad is not None)))
            queue_callback(lambda: (log.append("cb2"), queue_callback(lambda: log.append("cb3"))))
    w.register_post_accumulate_grad_hook(hook)
    v.register_post_accumulate_grad_hook(hook)
    ((w * 2).sum() + (v * 3).sum()).backward()
    assert [e[0] if isinstance(e, tuple) else e for e in log] == ["hook", "hook", "cb1", "cb2",
                                                                   "cb3"]
    assert log[2] == ("cb1", True)


def test_queue_callback_outside_backward_is_an_error():
    with pytest.raises(RuntimeError, match="no backward pass is running"):
        queue_callback(lambda: None)


def test_a_failed_backward_drops_its_callbacks():
    w = tensor.ones(2, requires_grad=True)
    ran = []

    def hook(p):
        queue_callback(lambda: ran.append(1))
        raise ValueError("boom")
    w.register_post_accumulate_grad_hook(hook)
    with pytest.raises(ValueError):
        (w * 2).sum().backward()
    assert ran == []
    queue_ok = []
    u = tensor.ones(2, requires_grad=True)
    u.register_post_accumulate_grad_hook(lambda p: queue_callback(lambda: queue_ok.append(1)))
    (u * 2).sum().backward()
    assert queue_ok == [1]


def test_future_then_wait_value_and_errors():
    f = Future()
    g = f.then(lambda fut: fut.value() * 2)
    assert not f.done() and not g.done()
    with pytest.raises(RuntimeError, match="not completed"):
        f.value()
    threading.Timer(0.05, lambda: f.set_result(21)).start()
    assert g.wait(5) == 42 and f.value() == 21
    h = f.then(lambda fut: 1 / 0)   # already done: runs at once
    with pytest.raises(ZeroDivisionError):
        h.wait()
    e = Future()
    e.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        e.then(lambda fut: fut.value()).wait()
    with pytest.raises(RuntimeError, match="already completed"):
        e.set_result(1)
    both = collect_all([f, e])
    assert both.done() and both.value() == [f, e]
    assert np.array_equal(Future().then(lambda x: 0).done(), False)
