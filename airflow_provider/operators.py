"""Operators that upload, download, delete, list and inspect FedML storage datasets.

They only translate between Airflow and the core: templated arguments in, one log line and a
JSON-serialisable XCom value out; a failed call raises so Airflow's retries apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from airflow.sdk import Asset, AssetAlias, BaseOperator, Context
from airflow.sdk.definitions.mappedoperator import OperatorPartial
from airflow.sdk.exceptions import AirflowFailException

from fedml_storage import asset_uri, is_unset, planned_name
from fedml_storage.results import listed_line

from .hook import FedMLStorageHook, no_dest_path

T = TypeVar("T")


class TaskStopped(BaseException):
    """Raised by on_kill in the middle of a storage call, as Ctrl-C would be: the call cleans up (an upload
    publishes nothing and leaves no part upload, a download keeps what it fetched for the retry) before Airflow kills
    the process. A BaseException, so the core does not take it for a failure of its own; Airflow may retry it."""


class _StorageOperator(BaseOperator):
    """Connection id and per-task overrides shared by the operators."""

    _calling = False  # whether a storage call runs in the main thread now (on_kill may interrupt it)

    def __init__(self, *, fedml_storage_conn_id: str = FedMLStorageHook.default_conn_name,
                 service: str | None = None, namespace: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fedml_storage_conn_id = fedml_storage_conn_id
        self.service = service
        self.namespace = namespace

    def hook(self) -> FedMLStorageHook:
        return FedMLStorageHook(self.fedml_storage_conn_id, service=self.service, namespace=self.namespace)

    @contextlib.contextmanager
    def calls(self) -> Iterator[FedMLStorageHook]:
        """The hook, its client made: the connection lookup talks to Airflow's supervisor, never interrupted."""
        with self.hook() as hook:
            hook.get_client()
            yield hook

    def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call(*args, **kwargs)`, a storage call that on_kill may interrupt."""
        self._calling = True
        try:
            return call(*args, **kwargs)
        finally:
            self._calling = False

    def on_kill(self) -> None:
        """SIGTERM (the task marked failed or cleared, the worker stopping): Airflow calls this, in the main thread,
        and kills the process 5 seconds later (SIGKILL), cutting a transfer where it is (a part upload left in the
        bucket, a part file at dest). Interrupting the call lets it clean up first. Once only: a second SIGTERM must
        not cut that short; and not after a task timeout, which the call already handled (Airflow calls this then
        too)."""
        if self._calling and threading.current_thread() is threading.main_thread():
            self._calling = False
            raise TaskStopped(f"task {self.task_id!r} told to stop (SIGTERM) during a storage call, which was "
                              "interrupted as by Ctrl-C: what it had not published or placed is cleaned up")


def _templated(value: object) -> bool:
    return isinstance(value, str) and "{{" in value


def _static_asset(name: object, namespace: str | None) -> list[Asset]:
    """The dataset's Asset when the DAG file alone tells its name and namespace; a namespace that is not passed
    comes from the connection or the core's configuration, known only at run time."""
    if not isinstance(name, str) or is_unset(name) or not isinstance(namespace, str) or is_unset(namespace):
        return []
    if _templated(name) or _templated(namespace):
        return []
    return [Asset(asset_uri(namespace, name))]


def _rendered_list(value: Any, field: str) -> Any:
    """A list argument (ignore_patterns, tag_list) as given, or the list a template rendered as one line of JSON
    (`| tojson`). A list rendered as Python's repr (['*.tmp', '.git']) would be one pattern that matches nothing, or
    no list at all: refused."""
    if not isinstance(value, str) or "\n" in value.strip() or not value.strip().startswith("["):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list):
        return parsed
    if re.fullmatch(r"\s*\[\s*(['\"]).*\1\s*\]\s*", value):
        raise AirflowFailException(
            f"{field} rendered as {value!r}, a Python list's repr, not a list: render it with '| tojson', or set "
            "render_template_as_native_obj=True on the DAG")
    return value  # a pattern that starts with a bracket expression, such as [Bb]uild/ (or a tag the core refuses)


def _upload_alias(dag_id: str, task_id: str) -> AssetAlias:
    """The alias through which an upload emits an Asset only the run tells."""
    return AssetAlias(f"fedml-storage-upload:{dag_id}.{task_id}")


def _upload_name_at_parse(data_path: object, name: str | None) -> str | None:
    """The name an upload will store under, when the DAG file's strings alone tell it (never what is on disk
    where it is parsed: the DAG processor and the worker would disagree); None when only the run can."""
    if _templated(name) or not isinstance(data_path, (str, os.PathLike)) or _templated(str(data_path)):
        return None  # templated, or the path comes from an upstream task
    return planned_name(data_path, name, on_disk=False)


class FedMLStorageUploadOperator(_StorageOperator):
    """Upload a file or directory; XCom: name, uri, version, sha256, size, skipped, ..., and under the keys
    ``name``, ``version`` and ``sha256`` what was stored (for a downstream task to pin that version).

    With `namespace=` given and a name the DAG file tells, declares the outlet Asset
    ``fedml://<namespace>/<name>``, so DAGs scheduled on it run after each upload. Otherwise (the namespace comes
    from the connection, the name is templated or from XCom, a name without an extension for a path with one,
    a mapped upload) it declares the AssetAlias ``fedml-storage-upload:<dag_id>.<task_id>`` and the run emits
    the Asset it stored through it. An AssetAlias passed in `outlets` gets the event too.
    """

    template_fields: Sequence[str] = ("data_path", "name", "description", "metadata", "tag_list", "ignore_patterns",
                                      "service", "namespace", "fedml_storage_conn_id")
    template_fields_renderers = {"metadata": "json"}

    def __init__(self, *, data_path: str, name: str | None = None, description: str | None = None,
                 metadata: dict[str, str] | str | None = None, tag_list: list[str] | None = None,
                 ignore_patterns: list[str] | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_path = data_path
        self.name = name
        self.description = description
        self.metadata = metadata
        self.tag_list = tag_list
        self.ignore_patterns = ignore_patterns
        if not self.outlets:  # a name only the run tells is emitted then, through an alias of this task
            self.outlets = (_static_asset(_upload_name_at_parse(data_path, name), self.namespace)
                            or [_upload_alias(self.dag_id, self.task_id)])

    @classmethod
    def partial(cls, *, task_id: str, **kwargs: Any) -> OperatorPartial:  # type: ignore[override]
        """As `BaseOperator.partial`; without `outlets=`, the mapped upload declares the task's AssetAlias (a
        mapped operator's __init__ only runs at run time, too late to declare anything)."""
        partial = super().partial(task_id=task_id, **kwargs)
        dag = partial.kwargs.get("dag")
        if not partial.kwargs.get("outlets") and dag is not None:
            partial.kwargs["outlets"] = [_upload_alias(dag.dag_id, partial.kwargs["task_id"])]
        return partial

    def execute(self, context: Context) -> dict[str, Any]:
        metadata = self.metadata
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata) if metadata.strip() else None
            except json.JSONDecodeError:
                raise AirflowFailException(
                    "metadata must be a dict or a JSON object of strings; a template that renders a dict gives its "
                    "Python repr ({'k': 'v'}): render it with '| tojson', or set render_template_as_native_obj=True "
                    "on the DAG") from None
        patterns = _rendered_list(self.ignore_patterns, "ignore_patterns")
        tags = _rendered_list(self.tag_list, "tag_list")
        declared = [a for a in self.outlets if isinstance(a, Asset) and a.uri.startswith("fedml://")]
        with self.calls() as hook:
            planned = planned_name(self.data_path, self.name)
            if declared and planned is not None:  # refuse before publishing rather than after
                self._check_outlets(hook.asset_uri(planned), declared, published=False)
            result = self._call(hook.upload, self.data_path, self.name, self.description, metadata, tags,
                                ignore_patterns=patterns)
            uri = hook.asset_uri(result["name"])
            self._check_outlets(uri, declared, published=True)
        extra = {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")}
        for asset in declared:
            context["outlet_events"][asset].extra = extra
        aliases = [a for a in self.outlets if isinstance(a, AssetAlias)]
        for alias in aliases:
            context["outlet_events"][alias].add(Asset(uri), extra=extra)
        if not declared and not aliases:  # e.g. a mapped upload made outside a DAG
            self.log.warning("no outlet of this task carries an event for %s: DAGs scheduled on it will not run; "
                             "pass outlets=[AssetAlias(...)], or namespace= and a name the DAG file tells", uri)
        push_keys(self, context, name=result["name"], version=result["version"], sha256=result["sha256"])
        return result

    @staticmethod
    def _check_outlets(uri: str, declared: list[Asset], *, published: bool) -> None:
        """Succeeding would emit events for an Asset that was not written and trigger the wrong DAGs."""
        if declared and uri not in {a.uri for a in declared}:
            raise AirflowFailException(
                f"{'stored' if published else 'would store'} as {uri}, but this task declares the outlet(s) "
                f"{[a.uri for a in declared]}; {'' if published else 'nothing was uploaded. '}Make them agree: "
                "pass namespace= when it comes from the connection, a name= with the file's extension (a file keeps "
                "it: name='weights' for model.pt is stored as weights.pt), or outlets="
            )


def push_keys(task: BaseOperator, context: Context, **values: Any) -> None:
    """Push `values` under keys of their own (for `task.output["version"]` or `xcom_pull(key="version")`), as the
    return value is pushed: not with do_xcom_push=False."""
    if task.do_xcom_push:
        for key, value in values.items():
            context["ti"].xcom_push(key=key, value=value)


class FedMLStorageDownloadOperator(_StorageOperator):
    """Download a dataset (optionally an exact version) into `dest_path` (required); XCom: its absolute path, and
    under the keys ``version`` and ``sha256`` what was downloaded (for a downstream task to pin that version).

    Declares the inlet Asset ``fedml://<namespace>/<name>`` when `namespace=` is given and the name is not
    templated; the run reports the dataset read to Airflow's hook lineage in any case.
    """

    template_fields: Sequence[str] = ("name", "dest_path", "version", "service", "namespace", "fedml_storage_conn_id")

    def __init__(self, *, name: str, dest_path: str | None = None, version: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if dest_path is None:  # refused at parse time already (the hook refuses it too)
            raise ValueError(no_dest_path(f"{type(self).__name__} {self.task_id!r}"))
        self.name = name
        self.dest_path = dest_path
        self.version = version
        if not self.inlets:
            self.inlets = _static_asset(name, self.namespace)

    def execute(self, context: Context) -> str:
        with self.calls() as hook:
            result = self._call(hook.download, self.name, self.dest_path, self.version or None)
        push_keys(self, context, version=result.version, sha256=result.sha256)
        return str(result)


class FedMLStorageDeleteOperator(_StorageOperator):
    """Delete a dataset; XCom: whether something was deleted.

    With `missing_ok` (the default) a name that is not stored succeeds with False, so a retry after the delete
    went through succeeds; `missing_ok=False` fails the task instead.
    """

    template_fields: Sequence[str] = ("name", "service", "namespace", "fedml_storage_conn_id")

    def __init__(self, *, name: str, missing_ok: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.missing_ok = missing_ok

    def execute(self, context: Context) -> bool:
        with self.calls() as hook:
            return self._call(hook.delete, self.name, missing_ok=self.missing_ok)


class FedMLStorageListOperator(_StorageOperator):
    """List stored datasets (those whose name starts with `prefix`, when given); XCom: a list of metadata dicts
    (about 1 KB each: a prefix keeps a large catalog's XCom small)."""

    template_fields: Sequence[str] = ("prefix", "service", "namespace", "fedml_storage_conn_id")

    def __init__(self, *, prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix

    def execute(self, context: Context) -> list[dict[str, Any]]:
        with self.calls() as hook:
            items = self._call(hook.list, self.prefix)
        self.log.info("%s", listed_line([i["dataName"] for i in items], self.prefix))
        return items


class FedMLStorageMetadataOperator(_StorageOperator):
    """Read a dataset's stored metadata (or only the user-defined dict); XCom: a dict."""

    template_fields: Sequence[str] = ("name", "service", "namespace", "fedml_storage_conn_id")

    def __init__(self, *, name: str, user_defined_only: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.user_defined_only = user_defined_only

    def execute(self, context: Context) -> dict[str, Any]:
        with self.calls() as hook:
            if self.user_defined_only:
                meta = self._call(hook.get_user_metadata, self.name)
                self.log.info("user metadata of %r: %d key(s)", self.name, len(meta))
                return meta
            meta = self._call(hook.get_metadata, self.name)
        self.log.info("metadata of %r: version %s, %s, %d file(s)", self.name, meta["version"], meta["size"],
                      meta["file_count"])
        return meta
