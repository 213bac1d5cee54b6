"""Notes in the log as botocore asks the store again: it retries silently, with backoff, so a step waiting on a busy
or failing store showed nothing until its last try failed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from botocore.client import BaseClient

from .responses import _SILENCE

log = logging.getLogger("fedml_storage")

SAY_EVERY = 5.0  # seconds between notes: parts retried in parallel would otherwise make a line each
_now = time.monotonic
_CAUSE = "fedml_storage_answer"  # where, in a request's context, the answer that makes botocore ask again is kept


class _RetryNotes:
    def __init__(self, location: str) -> None:
        self._location = location
        self._lock = threading.Lock()
        self._said_at: float | None = None
        self._unsaid = 0  # retries since the last note

    def answered(self, request_dict: dict, response: tuple | None = None, caught_exception: Exception | None = None,
                 **_: Any) -> None:
        """botocore's needs-retry: keep what the store answered, for the note if it asks again."""
        if isinstance(caught_exception, _SILENCE):
            cause = None  # responses.warn_of_silence says these retries already (WARNING)
        elif caught_exception is not None:
            cause = f"gave no usable answer ({type(caught_exception).__name__})"
        elif response is not None:
            http, parsed = response
            code = parsed.get("Error", {}).get("Code")
            if code:
                cause = f"answered {code} ({http.status_code})"
            elif 200 <= http.status_code < 300:  # asked again by responses.register: the answer came cut short
                cause = f"sent an answer cut short in transit (HTTP {http.status_code})"
            else:
                cause = f"answered HTTP {http.status_code}"
        else:
            return
        request_dict["context"][_CAUSE] = cause

    def asking_again(self, request: Any, operation_name: str, **_: Any) -> None:
        """botocore's request-created: a note when the request is a retry (at most one per SAY_EVERY seconds)."""
        retries = request.context.get("retries") or {}
        attempt = retries.get("attempt", 1)
        if attempt < 2 or request.context.get(_CAUSE, "") is None:  # not a retry, or one said already
            return
        now = _now()
        with self._lock:
            self._unsaid += 1
            if self._said_at is not None and now - self._said_at < SAY_EVERY:
                return
            unsaid, self._unsaid, self._said_at = self._unsaid, 0, now
        more = f"; {unsaid} retries since the last note" if unsaid > 1 else ""
        log.info("%s %s to %s: asking again (try %d of %s)%s", self._location,
                 request.context.get(_CAUSE, "gave no usable answer"), operation_name, attempt, retries.get("max", "?"),
                 more)


def say_retries(client: BaseClient, location: str) -> None:
    """Log (INFO) when `client`'s requests to `location` are retried."""
    notes = _RetryNotes(location)
    client.meta.events.register("needs-retry.s3", notes.answered)
    client.meta.events.register("request-created.s3", notes.asking_again)
