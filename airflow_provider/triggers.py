"""`FedMLStorageDatasetTrigger`: the deferrable half of the dataset sensor, run by the triggerer."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from fedml_storage.client import same_store
from fedml_storage.errors import MAY_PASS

from .hook import FedMLStorageException, FedMLStorageHook

# What the sensor hands to the trigger: what to wait for and where, never a secret.
WAIT_FIELDS = ("name", "metadata_key", "metadata_value", "version", "fedml_storage_conn_id", "service", "namespace")

UNREACHABLE = "cannot check dataset %r, checking again %s (if this persists, check the connection): %s"


def unreachable(name: str, exc: Exception) -> tuple[str, str]:
    """Why a check of `name` that waiting may cure failed (without the core's "try again": the sensor checks again
    itself), and the line a timeout then ends with."""
    detail = str(exc).removesuffix(f" {MAY_PASS}")
    return detail, f"could not check dataset {name!r}: {detail}"


def next_wait(poke_interval: float, checks: int, exponential_backoff: bool = False,
              max_wait: float | None = None) -> float:
    """Seconds to wait after `checks` checks in a row found the dataset not ready (or could not check): the
    poke interval, or with `exponential_backoff` one that doubles after each check (with up to 25% jitter so
    sensors started together spread out) and never exceeds `max_wait`."""
    if not exponential_backoff:  # max_wait applies to the backoff only, as in poke and reschedule mode
        return poke_interval if poke_interval > 0 else 1.0  # 0 (which sensors take): not a loop of requests
    # from a poke_interval of 0 it backs off from 1 s, as the poking loop does
    wait = (poke_interval or 1.0) * 2 ** min(checks - 1, 40) * random.uniform(1.0, 1.25)
    return min(wait, max_wait) if max_wait else wait  # 0, as in poke mode, sets no bound (not a tight loop)


def in_seconds(seconds: float) -> str:
    """'in 90s', 'in 0.25s': for log lines that say when the next check comes."""
    return f"in {seconds:.2f}".rstrip("0").rstrip(".") + "s"


class FedMLStorageDatasetTrigger(BaseTrigger):
    """Fires once the dataset is ready (see `FedMLStorageHook.readiness`) with the version and SHA-256 it saw, or
    with the error that stops waiting. Failures that waiting can cure (service unreachable, busy) keep waiting.

    Holds only the connection id and what to wait for: no secret is serialised into the metadata DB.
    """

    def __init__(self, *, name: str, metadata_key: str | None = None, metadata_value: str | int | None = None,
                 version: str | None = None, fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name,
                 service: str | None = None, namespace: str | None = None, poke_interval: float = 60.0,
                 exponential_backoff: bool = False, max_wait: float | None = None,
                 deadline: float | None = None, location: str | None = None) -> None:
        """`deadline`: when (seconds since the epoch) the sensor times out; the trigger then fires with
        status "timeout" itself, so that a run which does not enforce deferral timeouts (`airflow dags test`)
        does not wait for ever. `location`: the store the sensor checked before deferring (StorageClient.location);
        a triggerer whose connection or configuration reaches another fails instead of watching the wrong store."""
        super().__init__()
        self.wait: dict[str, Any] = dict(zip(WAIT_FIELDS, (name, metadata_key, metadata_value, version,
                                                           fedml_storage_conn_id, service, namespace)))
        self.pacing: dict[str, Any] = {"poke_interval": poke_interval, "exponential_backoff": exponential_backoff,
                                       "max_wait": max_wait}
        self.deadline = deadline
        self.location = location

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {**self.wait, **self.pacing, "deadline": self.deadline, "location": self.location})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        w = self.wait
        hook = FedMLStorageHook(w["fedml_storage_conn_id"], service=w["service"], namespace=w["namespace"])
        # Connection lookups and the core are synchronous: run them off the event loop, on a thread of their
        # own (not the shared one), so a slow endpoint does not hold up other triggers. One thread: the close
        # below then runs only after a check that a cancellation left running.
        worker = ThreadPoolExecutor(1, thread_name_prefix="fedml-storage-trigger")
        check = sync_to_async(hook.readiness, thread_sensitive=False, executor=worker)
        try:
            if self.location is not None:
                try:
                    here = await sync_to_async(hook.location, thread_sensitive=False, executor=worker)()
                except Exception as exc:  # as a failed check: the task fails, retried where that can help
                    retryable = not isinstance(exc, FedMLStorageException) or exc.retryable
                    yield TriggerEvent({"status": "error", "name": w["name"], "retryable": retryable,
                                        "message": f"{type(exc).__name__}: {exc}"})
                    return
                if not same_store(here, self.location):  # another bucket, namespace or LOCAL folder
                    yield TriggerEvent({"status": "error", "name": w["name"], "message": (
                        f"the triggerer reaches {here}, not {self.location}, the store the sensor checked before "
                        f"deferring: give the triggerer the same Airflow connection {w['fedml_storage_conn_id']!r} "
                        "(or FEDML_STORAGE_* settings) as the workers")})
                    return
                if here != self.location:  # the same bucket by another address (a DNS alias, say)
                    self.log.warning("the triggerer reaches %s, the sensor checked %s before deferring; if that is not "
                                     "the same store, give the triggerer the workers' connection", here, self.location)
            checks = 0
            unreached: str | None
            while True:
                checks += 1
                try:
                    seen = await check(w["name"], w["metadata_key"], w["metadata_value"], version=w["version"])
                except FedMLStorageException as exc:
                    if not exc.retryable:  # not curable by waiting: hand it to the task, which fails with it
                        yield TriggerEvent({"status": "error", "name": w["name"], "message": str(exc)})
                        return
                    unreached, last = unreachable(w["name"], exc)
                except Exception as exc:  # unexpected (e.g. a secrets backend down): the task fails, and may retry
                    yield TriggerEvent({"status": "error", "name": w["name"], "retryable": True,
                                        "message": f"{type(exc).__name__}: {exc}"})
                    return
                else:
                    if seen.ready:
                        yield TriggerEvent({"status": "success", "name": w["name"], "message": seen.detail,
                                            "version": seen.version, "sha256": seen.sha256})
                        return
                    unreached, last = None, seen.detail.rstrip(". ")
                left = float("inf") if self.deadline is None else self.deadline - time.time()
                if left <= 0:  # as the poking loop, which checks once more after the timeout has passed
                    yield TriggerEvent({"status": "timeout", "name": w["name"], "message": f"sensor timed out: {last}"})
                    return
                pause = min(next_wait(checks=checks, **self.pacing), left)  # the last check at the deadline
                if unreached is not None:
                    self.log.warning(UNREACHABLE, w["name"], in_seconds(pause), unreached)
                else:
                    self.log.info("%s (checking again %s)", last, in_seconds(pause))
                await asyncio.sleep(pause)
        finally:  # not awaited: a cancelled trigger must not wait for a slow check to end
            worker.submit(hook.close)
            worker.shutdown(wait=False)
