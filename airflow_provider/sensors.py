"""`FedMLStorageDatasetSensor`: wait until a dataset exists (and optionally carries a metadata value)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, Context

from .hook import FedMLStorageException, FedMLStorageHook


class FedMLStorageDatasetSensor(BaseSensorOperator):
    """Succeeds once `name` is stored; with `metadata_key`, once that user-metadata key is set
    (to `metadata_value`, when given). Works in poke and reschedule mode."""

    template_fields: Sequence[str] = ("name", "metadata_key", "metadata_value", "service", "namespace")

    def __init__(self, *, name: str, metadata_key: str | None = None, metadata_value: str | None = None,
                 fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name, service: str | None = None,
                 namespace: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.metadata_key = metadata_key
        self.metadata_value = metadata_value
        self.fedml_storage_conn_id = fedml_storage_conn_id
        self.service = service
        self.namespace = namespace

    def poke(self, context: Context) -> bool:
        hook = FedMLStorageHook(self.fedml_storage_conn_id, service=self.service, namespace=self.namespace)
        try:
            if not hook.exists(self.name):
                self.log.info("dataset %r not stored yet", self.name)
                return False
            if self.metadata_key is None:
                return True
            value = hook.get_user_metadata(self.name).get(self.metadata_key)
        except FedMLStorageException as exc:
            if exc.retryable or exc.reason == "not_found":
                self.log.warning("%s; poking again", exc)
                return False
            raise
        wanted = value is not None if self.metadata_value is None else value == self.metadata_value
        self.log.info("dataset %r: %s=%r (%s)", self.name, self.metadata_key, value, "ready" if wanted else "waiting")
        return wanted
