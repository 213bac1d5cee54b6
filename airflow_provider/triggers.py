"""`FedMLStorageDatasetTrigger`: the deferrable half of the dataset sensor, run by the triggerer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from .hook import FedMLStorageException, FedMLStorageHook

# What the sensor hands to the trigger: what to wait for and where, never a secret.
WAIT_FIELDS = ("name", "metadata_key", "metadata_value", "version", "fedml_storage_conn_id", "service", "namespace")

UNREACHABLE = "cannot check dataset %r, checking again in %ss (if this persists, check the connection): %s"


class FedMLStorageDatasetTrigger(BaseTrigger):
    """Fires once the dataset is ready (see `FedMLStorageHook.readiness`) with the version and SHA-256 it saw, or
    with the error that stops waiting. Failures that waiting can cure (service unreachable, busy) keep waiting.

    Holds only the connection id and what to wait for: no secret is serialised into the metadata DB.
    """

    def __init__(self, *, name: str, metadata_key: str | None = None, metadata_value: str | None = None,
                 version: str | None = None, fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name,
                 service: str | None = None, namespace: str | None = None, poke_interval: float = 60.0) -> None:
        super().__init__()
        self.wait = dict(zip(WAIT_FIELDS, (name, metadata_key, metadata_value, version, fedml_storage_conn_id,
                                           service, namespace)))
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {**self.wait, "poke_interval": self.poke_interval}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        w = self.wait
        hook = FedMLStorageHook(w["fedml_storage_conn_id"], service=w["service"], namespace=w["namespace"])
        # Connection lookups and the core are synchronous: run them off the event loop, on a thread of their
        # own (not the shared one), so a slow endpoint does not hold up other triggers. One thread: the close
        # below then runs only after a check that a cancellation left running.
        worker = ThreadPoolExecutor(1, thread_name_prefix="fedml-storage-trigger")
        check = sync_to_async(hook.readiness, thread_sensitive=False, executor=worker)
        try:
            while True:
                try:
                    seen = await check(w["name"], w["metadata_key"], w["metadata_value"], version=w["version"])
                except FedMLStorageException as exc:
                    if not exc.retryable:  # not curable by waiting: hand it to the task, which fails with it
                        yield TriggerEvent({"status": "error", "name": w["name"], "message": str(exc)})
                        return
                    self.log.warning(UNREACHABLE, w["name"], self.poke_interval, exc)
                except Exception as exc:  # unexpected (e.g. a secrets backend down): the task fails, and may retry
                    yield TriggerEvent({"status": "error", "name": w["name"], "retryable": True,
                                        "message": f"{type(exc).__name__}: {exc}"})
                    return
                else:
                    if seen.ready:
                        yield TriggerEvent({"status": "success", "name": w["name"], "message": seen.detail,
                                            "version": seen.version, "sha256": seen.sha256})
                        return
                    self.log.info("%s (checking again in %ss)", seen.detail.rstrip(". "), self.poke_interval)
                await asyncio.sleep(self.poke_interval)
        finally:  # not awaited: a cancelled trigger must not wait for a slow check to end
            worker.submit(hook.close)
            worker.shutdown(wait=False)
