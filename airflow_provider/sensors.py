"""`FedMLStorageDatasetSensor`: wait until a dataset exists (and optionally carries a metadata value)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, conf

from .hook import FedMLStorageFailException, FedMLStorageHook
from .triggers import WAIT_FIELDS, FedMLStorageDatasetTrigger


class FedMLStorageDatasetSensor(BaseSensorOperator):
    """Succeeds once `name` is stored; with `metadata_key`, once that user-metadata key is set
    (to `metadata_value`, when given). Works in poke and reschedule mode, and with `deferrable=True`
    waits in the triggerer without holding a worker slot."""

    template_fields: Sequence[str] = ("name", "metadata_key", "metadata_value", "service", "namespace")

    def __init__(self, *, name: str, metadata_key: str | None = None, metadata_value: str | None = None,
                 fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name, service: str | None = None,
                 namespace: str | None = None,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.metadata_key = metadata_key
        self.metadata_value = metadata_value
        self.fedml_storage_conn_id = fedml_storage_conn_id
        self.service = service
        self.namespace = namespace
        self.deferrable = deferrable

    def poke(self, context: Context) -> bool:
        with FedMLStorageHook(self.fedml_storage_conn_id, service=self.service, namespace=self.namespace) as hook:
            ready, detail = hook.dataset_ready(self.name, self.metadata_key, self.metadata_value)
        self.log.info("%s", detail)
        return ready

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        self.defer(
            trigger=FedMLStorageDatasetTrigger(**{k: getattr(self, k) for k in WAIT_FIELDS},
                                               poke_interval=_seconds(self.poke_interval)),
            method_name="execute_complete",
            timeout=timedelta(seconds=_seconds(self.timeout)),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        """Resumes after the trigger fired: success, or fail with the trigger's message."""
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "the dataset trigger ended without an event")
            raise FedMLStorageFailException(message, None, retryable=False)
        self.log.info("%s", event["message"])


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
