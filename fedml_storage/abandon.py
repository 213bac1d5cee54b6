"""Helper threads whose caller gave up on them (Ctrl-C, a framework's task timeout): their S3 requests end with the
attempt in flight instead of being sent again. Unanswered, botocore would ask again max_attempts times, read_timeout
each (six minutes by default), and the interpreter waits for such threads before it exits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import stops

T = TypeVar("T")

_lock = threading.Lock()
_abandoned: set[int] = set()


class Abandoned(Exception):
    """Raised in an abandoned thread where a request would be sent again."""


def abandoned() -> bool:
    """Whether the calling thread's work was given up."""
    return threading.get_ident() in _abandoned


class Helpers:
    """Tracks the threads running a caller's jobs, so that the caller can give them up."""

    def __init__(self) -> None:
        self._running: set[int] = set()

    def job(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn`, recording the thread that runs it while it runs."""

        def run(*args: Any, **kwargs: Any) -> T:
            ident = threading.get_ident()
            with _lock:
                self._running.add(ident)
            try:
                return fn(*args, **kwargs)
            finally:
                with _lock:
                    self._running.discard(ident)
                    _abandoned.discard(ident)

        return run

    def give_up(self) -> None:
        """Jobs running now stop retrying their requests (queued ones are the caller's to cancel)."""
        with _lock:
            _abandoned.update(self._running)


def parallel_map(fn: Callable[[Any], T], items: list[Any], workers: int, name: str) -> list[T]:
    """`fn` of each item, in order, on up to `workers` threads named `name`. Once the caller is interrupted (a task
    timeout), its stop is set (`stop_when`) or a job fails, jobs not yet started are dropped and those running are
    given up."""
    if not items:
        return []
    helpers = Helpers()

    def stoppable(item: Any) -> T:
        stops.check()  # a job queued when the caller's stop came is not started
        return fn(item)

    with stops.ContextThreads(max(1, min(workers, len(items))), thread_name_prefix=name) as pool:
        futures = [pool.submit(helpers.job(stoppable), item) for item in items]
        try:
            return [stops.result(future) for future in futures]  # in order; `Stopped` once the stop is set
        except BaseException:
            for future in futures:  # those queued are dropped
                future.cancel()
            helpers.give_up()
            raise
