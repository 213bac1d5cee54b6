"""A caller's stop for calls that run in a worker thread, where no Ctrl-C or signal can reach them.

A framework that gives up on such a call (Prefect's async tasks, on a timeout or a cancelled flow run) sets an event;
the call raises `Stopped` in its own thread at its next wait or chunk, cleans up as on Ctrl-C, and never publishes:
it is checked right before the catalog commit of an upload and before a download is put in place.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.05  # how often a waiting call looks at its stop event

_EVENT: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("fedml_storage_stop", default=None)


def submit(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> Future[T]:
    """`pool.submit` in a copy of the caller's context: the helper thread sees the caller's stop, and what it logs
    is seen as the caller's (Prefect's run-log forwarding keys on it)."""
    return pool.submit(contextvars.copy_context().run, fn, *args)


class ContextThreads(ThreadPoolExecutor):
    """A pool whose jobs run in a copy of the submitter's context, as `submit`'s: what they log is the submitter's
    work (s3transfer's and the range pool's requests, whose retries are noted). `stop`=False leaves the caller's stop
    out (s3transfer's threads are stopped by cancelling the transfer, never by a `Stopped` raised inside them)."""

    stop = True

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        context = contextvars.copy_context()
        if not self.stop:
            context.run(_EVENT.set, None)
        return super().submit(context.run, fn, *args, **kwargs)


class TransferThreads(ContextThreads):
    stop = False


def submit_daemon(fn: Callable[..., T], *args: Any, name: str) -> Future[T]:
    """`fn(*args)` in a daemon thread of its own, in a copy of the caller's context (as `submit`): for a request the
    caller may give up on, which must not keep the interpreter from exiting (it waits for a pool's threads)."""
    future: Future[T] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(context.run(fn, *args))
        except BaseException as exc:  # the caller's to see, as from a pool
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class Stopped(BaseException):
    """The call's stop event was set. A BaseException, as KeyboardInterrupt: clean-up runs, nothing reports it as a
    failure of the storage, and the core API lets it through instead of returning a response."""

    def __init__(self) -> None:
        super().__init__("the call was stopped by its caller: nothing was published, what it had sent was removed, "
                         "and what a download had fetched is kept in partial_dir for the next one to go on from")


@contextlib.contextmanager
def stop_when(event: threading.Event) -> Iterator[None]:
    """Calls made in this block (in this thread) stop once `event` is set: they raise `Stopped` as on Ctrl-C, having
    removed what they had sent (a download keeps what it fetched in partial_dir); an upload stopped before its
    commit publishes nothing, a download leaves its destination as it was."""
    token = _EVENT.set(event)
    try:
        yield
    finally:
        _EVENT.reset(token)


class StoppableCall(Generic[T]):
    """A call for a worker thread that another thread can stop: `run()` in the worker, `stop()` from anywhere.

    `outcome` says how far it got: "waiting", "running", "finished", "stopped", or the type of the error it raised;
    `ended` is set once `run()` returns or raises.
    """

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._stop, self._lock = threading.Event(), threading.Lock()
        self.ended = threading.Event()
        self.outcome = "waiting"

    def run(self) -> T:
        """Make the call under `stop_when`; raise `Stopped` without making it if `stop()` came first."""
        with self._lock:
            if self._stop.is_set():
                self.ended.set()
                raise Stopped()
            self.outcome = "running"
        try:
            with stop_when(self._stop):
                result = self._call()
            self.outcome = "finished"
            return result
        except BaseException as exc:
            self.outcome = "stopped" if isinstance(exc, Stopped) else type(exc).__name__
            raise
        finally:
            self.ended.set()

    def stop(self) -> bool:
        """Stop the call at its next wait or chunk; returns whether it had started (if not, it never will)."""
        with self._lock:
            self._stop.set()
            return self.outcome != "waiting"


def check() -> None:
    """Raise `Stopped` if the calling context's stop event is set."""
    event = _EVENT.get()
    if event is not None and event.is_set():
        raise Stopped()


def wait_event(done: threading.Event) -> None:
    """Return once `done` is set; sooner, raise `Stopped` when the stop event is set. Without a stop event, return
    at once: the caller then blocks as usual (where Ctrl-C reaches it)."""
    if _EVENT.get() is not None:
        while not done.wait(POLL_SECONDS):
            check()


def result(future: Future[T]) -> T:
    """`future.result()`, or `Stopped` once the stop event is set while it is not done."""
    if _EVENT.get() is not None:
        while not wait([future], POLL_SECONDS).done:  # not result(timeout=): a socket timeout is a TimeoutError too
            check()
    return future.result()


def wait_first(pending: set[Future]) -> tuple[set[Future], set[Future]]:
    """`concurrent.futures.wait(pending, FIRST_COMPLETED)`, or `Stopped` once the stop event is set first."""
    timeout = None if _EVENT.get() is None else POLL_SECONDS
    while True:
        done, left = wait(pending, timeout, FIRST_COMPLETED)
        if done:
            return done, left
        check()
