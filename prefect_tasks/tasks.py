"""Prefect tasks over the core: retries for transient failures only, one log line, artifacts, asset lineage."""

from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from fedml_storage import FedMLStorageError, StorageClient, human_size

from .block import FedMLStorage


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures that can pass: connection errors, throttling, 5xx. Never bad input or a missing name."""
    try:  # the failure as a value: raising it here would add this check to the traceback the user reads
        failure = state.result(raise_on_failure=False)
    except Exception:
        return False
    if isinstance(failure, FedMLStorageError):
        return failure.retryable
    return isinstance(failure, (ConnectionError, TimeoutError))


# Every task: no input-based caching (an upload is a side effect, and a block's masked secret would give
# two accounts one cache key), retries with exponential backoff and jitter for transient failures only.
TASK_OPTIONS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
}


def _client(storage: FedMLStorage | None, service: str | None, namespace: str | None) -> StorageClient:
    if storage is not None:
        return storage.client(service=service, namespace=namespace)
    return StorageClient(service=service, namespace=namespace)


def _artifact_key(prefix: str, name: str) -> str:
    """Artifact keys allow only lowercase letters, digits and dashes."""
    return (prefix + "-" + re.sub(r"[^a-z0-9]+", "-", name.lower())).strip("-")[:100]


def _materialize(uri: str, details: dict[str, Any]) -> None:
    """Record the upload as a Prefect asset materialisation, where this Prefect has assets."""
    try:
        from prefect.assets import Asset, add_asset_metadata, materialize
    except ImportError:
        return
    logger = get_run_logger()
    try:
        asset = Asset(key=uri)
    except ValueError:
        logger.warning("not recording lineage: %s is not a valid Prefect asset key", uri)
        return

    @materialize(asset, by="fedml-storage", cache_policy=NO_CACHE, task_run_name=f"materialize {uri}")
    def published() -> None:
        add_asset_metadata(asset, details)

    published()


@task(name="fedml-upload", **TASK_OPTIONS)
def upload_data(data_path: str, name: str | None = None, description: str | None = None,
                metadata: dict[str, str] | None = None, tag_list: list[str] | None = None,
                storage: FedMLStorage | None = None, service: str | None = None,
                namespace: str | None = None) -> dict[str, Any]:
    """Store a file or directory; returns name, uri, version, sha256, size, skipped, ... (JSON-able)."""
    with _client(storage, service, namespace) as client:
        result = client.upload(data_path, name, description, metadata, tag_list).unwrap()
        uri = client.asset_uri(result.name, iri=True)
    get_run_logger().info("%s", result.summary())
    details = result.to_dict()
    create_markdown_artifact(
        key=_artifact_key("fedml-upload", result.name),
        markdown=(f"### Uploaded `{result.name}`\n\n| field | value |\n|---|---|\n"
                  f"| version | `{result.version}` |\n| size | {human_size(result.size)} ({result.size} bytes) |\n"
                  f"| files | {result.file_count} |\n| sha256 | `{result.sha256}` |\n| uri | {result.uri} |\n"
                  f"| skipped (unchanged) | {result.skipped} |\n"),
        description=f"fedml-storage upload of {result.name}",
    )
    _materialize(uri, {k: details[k] for k in ("version", "sha256", "size", "uri")})
    return details


@task(name="fedml-download", **TASK_OPTIONS)
def download_data(name: str, dest_path: str | None = None, version: str | None = None,
                  storage: FedMLStorage | None = None, service: str | None = None,
                  namespace: str | None = None) -> str:
    """Fetch a dataset (optionally an exact version), verified; returns its absolute path."""
    with _client(storage, service, namespace) as client:
        result = client.download(name, dest_path, version=version).unwrap()
    get_run_logger().info("%s", result.summary())
    return str(result)


@task(name="fedml-delete", **TASK_OPTIONS)
def delete_data(name: str, storage: FedMLStorage | None = None, service: str | None = None,
                namespace: str | None = None) -> bool:
    """Remove a dataset; returns True."""
    with _client(storage, service, namespace) as client:
        client.delete(name).unwrap()
    get_run_logger().info("deleted %r", name)
    return True


@task(name="fedml-list", **TASK_OPTIONS)
def list_data(storage: FedMLStorage | None = None, service: str | None = None,
              namespace: str | None = None) -> list[dict[str, Any]]:
    """Every stored dataset's metadata as dicts; also a table artifact."""
    with _client(storage, service, namespace) as client:
        items = [m.to_dict() for m in client.list().unwrap()]
    get_run_logger().info("listed %d dataset(s)", len(items))
    rows = [{"name": i["dataName"], "size": i["size"], "version": i["version"], "files": i["file_count"],
             "description": i["description"], "tags": ", ".join(i["tag_list"]), "updated": i["updatedAt"]}
            for i in items]
    create_table_artifact(key="fedml-storage-list", table=rows, description="Datasets in FedML storage")
    return items


@task(name="fedml-metadata", **TASK_OPTIONS)
def get_data_metadata(name: str, user_defined_only: bool = False, storage: FedMLStorage | None = None,
                      service: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Stored metadata of a dataset as a dict (or only the user-defined dict)."""
    with _client(storage, service, namespace) as client:
        if user_defined_only:
            user = client.get_user_metadata(name).unwrap()
            get_run_logger().info("user metadata of %r: %d key(s)", name, len(user))
            return user
        meta = client.get_metadata(name).unwrap().to_dict()
    get_run_logger().info("metadata of %r: version %s, %s", name, meta["version"], meta["size"])
    return meta
