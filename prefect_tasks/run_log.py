"""The core's log lines in a Prefect run's log: what a task (or a block's method called in a run) has the core do is
said where the run is seen (Prefect's UI and console), once, in Prefect's words."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator, Mapping

from prefect import get_run_logger
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError

from fedml_storage.advice import reword

CORE = logging.getLogger("fedml_storage")


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger; outside a run (`upload_data.fn(...)` called directly) the package's own."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_tasks")


def in_run() -> bool:
    """Whether a Prefect run is under way: artifacts outside one are deprecated (`upload_data.fn(...)`)."""
    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class _ToRunLog:
    """Where the core's lines (INFO and up) from the work it was made for go: the run's log, in Prefect's words."""

    def __init__(self, target: logging.Logger | logging.LoggerAdapter, advice: Mapping[str, str]) -> None:
        self.target, self.advice = target, advice
        self.open = True  # until the work's block ends


class _Forwarding(logging.Filter):
    """The core logger's one filter for every run: passes a record of a run's work to that run's log instead of to
    the core logger's handlers (shown once, not also by the root logger Prefect sets up). Added once and never
    removed: logging iterates a logger's live list of filters, so a run's filter removed as it ended made a record
    of another run's work skip that run's filter (to the console, not its run's log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        working_for = _WORKING_FOR.get()
        if working_for is not None and working_for.open and record.levelno >= logging.INFO:
            if (passed := self._filters_after(record)) is None:
                return False
            working_for.target.log(passed.levelno, "%s", reword(passed.getMessage(), working_for.advice))
            if passed.levelno >= _LEVEL.floor:  # handlers a user put on the core logger still get what they got
                for handler in CORE.handlers:  # (not Prefect's: PREFECT_LOGGING_EXTRA_LOGGERS adds its API's)
                    if not type(handler).__module__.startswith("prefect.") and passed.levelno >= handler.level:
                        handler.handle(passed)
            return False
        # work whose block has ended (a helper thread's late line), or none's: kept as the core's level was before
        return record.levelno >= _LEVEL.floor

    def _filters_after(self, record: logging.LogRecord) -> logging.LogRecord | None:
        """`record` as the core logger's filters after this one leave it (None: one drops it). Logging asks them only
        if this one passes it, and a user's filter (a redaction, say) added after the first run must still apply."""
        filters = list(CORE.filters)  # a copy: others may add or remove theirs meanwhile
        for f in filters[filters.index(self) + 1:] if self in filters else []:
            result = f.filter(record) if hasattr(f, "filter") else f(record)
            if not result:
                return None
            if isinstance(result, logging.LogRecord):  # (Python 3.12: a filter may hand back a record to use)
                record = result
        return record


_FORWARDING = _Forwarding()
_ADDING = threading.Lock()


# Which forwarding the work in this context is for: set in the task's thread; the core hands its context on to its
# own helper threads (the zip writer, the catalog read), so their lines are the task's too.
_WORKING_FOR: contextvars.ContextVar[_ToRunLog | None] = contextvars.ContextVar("fedml_storage_task", default=None)


class _CoreLevel:
    """While runs forward the core's lines, the core logger lets INFO through, which Prefect's root logger (WARNING)
    would stop; `floor` is the level lines of no run's work keep meanwhile. A level set on the core logger stands."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self.floor = logging.NOTSET

    @contextlib.contextmanager
    def info_let_through(self) -> Iterator[None]:
        with self._lock:
            if self._runs == 0 and CORE.level == logging.NOTSET and not CORE.isEnabledFor(logging.INFO):
                self.floor = CORE.getEffectiveLevel()
                CORE.setLevel(logging.INFO)
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0 and self.floor != logging.NOTSET:
                    if CORE.level == logging.INFO:  # (unless set since)
                        CORE.setLevel(logging.NOTSET)
                    self.floor = logging.NOTSET


_LEVEL = _CoreLevel()


@contextlib.contextmanager
def core_lines_in_run_log(advice: Mapping[str, str]) -> Iterator[None]:
    """In a run, the core's lines from the work done in this block go to the run's log, their advice reworded by
    `advice` (`fedml_storage.advice.reword`); outside one, the core's own logging says them."""
    if not in_run():
        yield
        return
    forward = _ToRunLog(run_logger(), advice)
    with _ADDING:  # addFilter's check-then-append is not atomic: two runs starting at once could add it twice
        CORE.addFilter(_FORWARDING)  # (once: a no-op when it is there)
    token = _WORKING_FOR.set(forward)
    try:
        with _LEVEL.info_let_through():
            yield
    finally:
        forward.open = False
        _WORKING_FOR.reset(token)
