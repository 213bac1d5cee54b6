"""`FedMLStorageDatasetTrigger`: the deferrable half of the dataset sensor, run by the triggerer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from .hook import FedMLStorageHook


class FedMLStorageDatasetTrigger(BaseTrigger):
    """Fires once the dataset is ready (see `FedMLStorageHook.dataset_ready`), or with the error that stops waiting.

    Holds only the connection id and what to wait for: no secret is serialised into the metadata DB.
    """

    def __init__(self, *, name: str, metadata_key: str | None = None, metadata_value: str | None = None,
                 fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name, service: str | None = None,
                 namespace: str | None = None, poke_interval: float = 60.0) -> None:
        super().__init__()
        self.name = name
        self.metadata_key = metadata_key
        self.metadata_value = metadata_value
        self.fedml_storage_conn_id = fedml_storage_conn_id
        self.service = service
        self.namespace = namespace
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "name": self.name, "metadata_key": self.metadata_key, "metadata_value": self.metadata_value,
            "fedml_storage_conn_id": self.fedml_storage_conn_id, "service": self.service,
            "namespace": self.namespace, "poke_interval": self.poke_interval,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = FedMLStorageHook(self.fedml_storage_conn_id, service=self.service, namespace=self.namespace)
        # Connection lookups and the core are synchronous: run them off the event loop, on a thread of their
        # own (not the shared one), so a slow endpoint does not hold up other triggers.
        check = sync_to_async(hook.dataset_ready, thread_sensitive=False)
        while True:
            try:
                ready, detail = await check(self.name, self.metadata_key, self.metadata_value)
            except Exception as exc:  # not curable by waiting: hand it to the task, which fails with it
                yield TriggerEvent({"status": "error", "name": self.name, "message": str(exc)})
                return
            if ready:
                yield TriggerEvent({"status": "success", "name": self.name, "message": detail})
                return
            self.log.info("%s; checking again in %ss", detail, self.poke_interval)
            await asyncio.sleep(self.poke_interval)
