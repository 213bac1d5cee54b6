"""`FedMLStorageDatasetSensor`: wait until a dataset exists (and optionally carries a metadata value or version)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue, conf
from airflow.sdk.exceptions import (AirflowFailException, AirflowSensorTimeout, AirflowSkipException,
                                    AirflowTaskTimeout)

from .hook import FedMLStorageException, FedMLStorageFailException, FedMLStorageHook
from .operators import push_keys
from .triggers import UNREACHABLE, WAIT_FIELDS, FedMLStorageDatasetTrigger, in_seconds, unreachable


class FedMLStorageDatasetSensor(BaseSensorOperator):
    """Succeeds once `name` is stored; with `metadata_key`, once that user-metadata key is set (to
    `metadata_value`, when given); with `version`, once that version is stored. XCom: {"name", "version",
    "sha256"} of what a download gets (the version asked for, when given), also each under its own key.

    Works in poke and reschedule mode, and with `deferrable=True` waits in the triggerer without holding a
    worker slot. An unreachable or busy service counts as "not yet" (logged as a warning); bad input or refused
    credentials fail the task.
    """

    template_fields: Sequence[str] = ("name", "metadata_key", "metadata_value", "version", "service", "namespace",
                                      "fedml_storage_conn_id")

    def __init__(self, *, name: str, metadata_key: str | None = None, metadata_value: str | int | None = None,
                 version: str | None = None, fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name,
                 service: str | None = None, namespace: str | None = None,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.metadata_key = metadata_key
        self.metadata_value = metadata_value
        self.version = version
        self.fedml_storage_conn_id = fedml_storage_conn_id
        self.service = service
        self.namespace = namespace
        self.deferrable = deferrable
        self._last = ""  # what the last check saw, for a timeout's message

    def hook(self) -> FedMLStorageHook:
        return FedMLStorageHook(self.fedml_storage_conn_id, service=self.service, namespace=self.namespace)

    def poke(self, context: Context) -> PokeReturnValue:
        with self.hook() as hook:
            try:
                seen = hook.readiness(self.name, self.metadata_key, self.metadata_value, version=self.version)
            except FedMLStorageException as exc:
                if not exc.retryable:
                    raise
                when = "after a backoff" if self.exponential_backoff else in_seconds(_seconds(self.poke_interval))
                detail, self._last = unreachable(self.name, exc)
                self.log.warning(UNREACHABLE, self.name, when, detail)
                return PokeReturnValue(False)
        self._last = seen.detail.rstrip(". ")
        self.log.info("%s", seen.detail)
        return PokeReturnValue(seen.ready, _seen(self.name, seen.version, seen.sha256) if seen.ready else None)

    def execute(self, context: Context) -> Any:
        seen = self._wait(context)
        if isinstance(seen, dict):
            push_keys(self, context, **seen)
        return seen

    def _wait(self, context: Context) -> Any:
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout as exc:  # Airflow's says only how long it waited: add why, as a deferral does
                if not self._last:
                    raise
                raise AirflowSensorTimeout(f"sensor timed out: {self._last} ({exc})") from None
        done = self._first_poke(context)
        if done:
            return done.xcom_value
        with self.hook() as hook:
            location = hook.location()  # the triggerer must check the same store
        self.defer(
            trigger=FedMLStorageDatasetTrigger(
                **{k: getattr(self, k) for k in WAIT_FIELDS}, poke_interval=_seconds(self.poke_interval),
                exponential_backoff=self.exponential_backoff,
                max_wait=None if self.max_wait is None else _seconds(self.max_wait),
                deadline=time.time() + _seconds(self.timeout), location=location),
            method_name="execute_complete",
            timeout=timedelta(seconds=_seconds(self.timeout)),
        )

    def _first_poke(self, context: Context) -> PokeReturnValue:
        """The check before deferring, with soft_fail / never_fail / silent_fail as the poking loop applies them."""
        try:
            return self.poke(context)
        except (AirflowSensorTimeout, AirflowTaskTimeout, AirflowFailException) as exc:
            if self.soft_fail or self.never_fail:
                raise self._skip(exc) from exc
            raise
        except AirflowSkipException:
            raise
        except Exception as exc:
            if self.silent_fail:
                self.log.error("Sensor poke failed: %s", exc)
                return PokeReturnValue(False)
            if self.never_fail:
                raise AirflowSkipException(f"Skipping (never_fail): {exc}") from exc
            raise

    def _skip(self, why: object) -> AirflowSkipException:
        """What soft_fail / never_fail make of a timeout or failure, as the poking loop says it."""
        return AirflowSkipException(f"Skipping ({'soft' if self.soft_fail else 'never'}_fail): {why}")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resumes after the trigger fired: what it saw (as poke's XCom), or fail with the trigger's message."""
        if event and event.get("status") == "timeout":  # as the poking loop times out
            if self.soft_fail or self.never_fail:
                raise self._skip(event["message"])
            raise AirflowSensorTimeout(event["message"])
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "the dataset trigger ended without an event")
            if (event or {}).get("retryable"):
                raise FedMLStorageException(message, None, retryable=True)
            raise FedMLStorageFailException(message, None, retryable=False)
        self.log.info("%s", event["message"])
        seen = _seen(event.get("name", self.name), event.get("version"), event.get("sha256"))
        push_keys(self, context, **seen)
        return seen


def _seen(name: str, version: str | None, sha256: str | None) -> dict[str, Any]:
    """What the sensor pushes downstream: the dataset and the version (and SHA-256) a download gets."""
    return {"name": name, "version": version, "sha256": sha256}


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
