"""``tensor.futures`` (torch.futures): a Future that one thread completes and others wait on.

DDP's communication hooks return one (as PyTorch's do), and ``Work.get_future()`` hands one
out for a launched collective. Callbacks added with ``then`` run on the thread that completes
the future (or at once, in the caller's thread, if it is already done), as in PyTorch.
"""
from __future__ import annotations

import threading

__all__ = ["Future", "collect_all", "wait_all"]


class Future:
    """The result of an asynchronous computation: ``wait()``, ``value()``, ``then(fn)``."""

    def __init__(self, *, devices=None):
        self._cond = threading.Condition(threading.Lock())
        self._done = False
        self._value = None
        self._exc: BaseException | None = None
        self._callbacks: list = []
        self._source: Future | None = None   # then(): the future this one follows

    def done(self) -> bool:
        """True once a result or an exception was set."""
        if not self._done and self._source is not None:
            self._source.done()   # lets a lazily completed source complete (and run us)
        return self._done

    def wait(self, timeout: float | None = None):
        """Block until done and return the value; re-raise the exception if one was set."""
        if not self._done and self._source is not None:
            try:
                self._source.wait(timeout)   # completes us through our callback
            except BaseException:  # noqa: BLE001 - the callback gave us the same exception
                pass
        if not self._done:
            self._wait_done(timeout)
        if self._exc is not None:
            raise self._exc
        return self._value

    def _wait_done(self, timeout):
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"Future.wait: not completed within {timeout}s")

    def value(self):
        """The value of a completed future (raises its exception; RuntimeError if not done)."""
        if not self.done():
            raise RuntimeError("Future.value: the future is not completed yet; call wait() "
                               "first, or use then() to run code when it completes.")
        if self._exc is not None:
            raise self._exc
        return self._value

    def set_result(self, result) -> None:
        """Complete the future with `result` and run its callbacks."""
        self._complete(result, None)

    def set_exception(self, result: BaseException) -> None:
        """Complete the future with an exception that wait()/value() re-raise."""
        if not isinstance(result, BaseException):
            raise TypeError(f"Future.set_exception: expected an exception, got "
                            f"{type(result).__name__}")
        self._complete(None, result)

    def _complete(self, value, exc):
        with self._cond:
            if self._done:
                raise RuntimeError("Future: set_result/set_exception called on a future that "
                                   "is already completed.")
            self._value, self._exc, self._done = value, exc, True
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, callback) -> None:
        """callback(self) once done (at once if already done); its result is ignored."""
        with self._cond:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def then(self, callback) -> "Future":
        """A new future completed with callback(self) once this one completes.

        An exception raised by the callback completes the new future with that exception.
        """
        out = Future()
        out._source = self

        def run(fut):
            try:
                res = callback(fut)
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on `out`
                out.set_exception(e)
                return
            out.set_result(res)
        self.add_done_callback(run)
        return out

    def __repr__(self):
        state = "done" if self._done else "pending"
        return f"Future({state})"


def collect_all(futures: list) -> Future:
    """A future completed with the list of `futures` once all of them are done."""
    out = Future()
    futures = list(futures)
    left = [len(futures)]
    lock = threading.Lock()
    if not futures:
        out.set_result([])
        return out

    def one(_):
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            out.set_result(futures)
    for f in futures:
        f.add_done_callback(one)
    return out


def wait_all(futures: list) -> list:
    """Wait for every future and return their values (re-raises the first error)."""
    return [f.wait() for f in futures]
