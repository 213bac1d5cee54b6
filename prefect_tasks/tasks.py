"""Prefect tasks over the core: retries for transient failures only, one log line, artifacts, asset lineage.

Each operation is written once as a plain function and made into two real Prefect tasks: `upload_data` runs it
where Prefect runs sync tasks; `aupload_data` is an async task that runs it in a worker thread, so an async flow
can await it without its event loop being blocked. Prefect calls in a body pass `_sync=True`: in the worker
thread of an async task, Prefect would otherwise return coroutines.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx
from prefect import Task, task
from prefect.exceptions import ObjectNotFound
from prefect.task_engine import TaskRunTimeoutError
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from fedml_storage import DownloadResult, FedMLStorageError, StorageClient, StorageSettings, human_size, planned_name
from fedml_storage.advice import kept_in, worker_local
from fedml_storage.api_keys import mask_keys
from fedml_storage.results import listed_line
from fedml_storage.stops import StoppableCall

from .block import LOG_ADVICE, PREFECT_CALLS, PREFECT_LISTING, FedMLStorage, require_dest_path
from .lineage import add_metadata, declare_input, declare_output, hold_for_flow_run
from .run_log import core_lines_in_run_log, in_run, run_logger


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures that can pass: connection errors (to the store or to Prefect's API), throttling, 5xx.
    Never bad input or a missing name."""
    # The failure as a value: Prefect's retry check hands over Failed(data=<the exception>). Never state.result()
    # bare: in an async task's run it returns a coroutine (and no retry would ever happen); raising would add
    # this check to the traceback the user reads.
    failure = getattr(state, "data", None)
    if not isinstance(failure, BaseException):
        try:
            failure = state.result(raise_on_failure=False, _sync=True)
        except Exception:
            return False
    if isinstance(failure, FedMLStorageError):
        return failure.retryable
    if isinstance(failure, TaskRunTimeoutError):  # the timed-out call may still be running: a retry would add one
        return False
    # Prefect's own API unreachable (loading a saved block, writing an artifact): httpx's errors are no OSErrors.
    # Not a URL without http(s):// (PREFECT_API_URL=host:4200) nor a request httpx refuses to send: no try helps.
    if isinstance(failure, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return False
    return isinstance(failure, (ConnectionError, TimeoutError, httpx.TransportError))


# Every task: no input-based caching (an upload is a side effect, and a block's masked secret would give
# two accounts one cache key), retries with exponential backoff and jitter for transient failures only.
TASK_OPTIONS: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
    "cache_policy": NO_CACHE,
}


def _client(storage: FedMLStorage | str | None, service: str | None, namespace: str | None) -> StorageClient:
    if isinstance(storage, str) and ":" in storage:  # never a block's name: Prefect's "not found" would echo it
        raise ValueError("storage must be a FedMLStorage block or a saved block's name (lowercase letters, digits "
                         "and dashes); the text given holds ':' and is not shown, as it may be an API key: a key "
                         "goes in the block's api_key field")
    if isinstance(storage, str):  # a saved block's name (or its slug, as the Prefect UI shows it)
        name = storage.removeprefix(f"{FedMLStorage._block_type_slug}/")
        try:
            storage = FedMLStorage.load(name, _sync=True)  # type: ignore[call-arg, assignment]  # async_dispatch's
        except ValueError as exc:  # Prefect's, chained to the API's 404: some 80 lines of traceback
            if not isinstance(exc.__cause__, ObjectNotFound):
                raise
            raise ValueError(f"no FedMLStorage block named {name!r} is saved on this Prefect server: save one "
                             f"(FedMLStorage(...).save({name!r})) or pass the block itself as storage=") from None
    if storage is not None and not isinstance(storage, FedMLStorage):
        raise TypeError(f"storage must be a FedMLStorage block or a saved block's name, not a "
                        f"{type(storage).__name__}; with .map, pass storage=unmapped(block)")
    if storage is not None:
        return storage.client(service=service, namespace=namespace)
    if service is None and (warning := worker_local("No FedMLStorage block (storage=)",
                                                    "Pass storage= a FedMLStorage block")) is not None:
        run_logger().warning(warning)
    return StorageClient(service=service, namespace=namespace, log_failures=False,  # Prefect logs what we raise
                         advice=kept_in(PREFECT_LISTING, "a FedMLStorage block passed as storage=",
                                        "the api_key of a FedMLStorage block passed as storage=", **PREFECT_CALLS))


DEFAULT_NAMESPACE = StorageSettings.model_fields["namespace"].default


def _artifact_key(prefix: str, namespace: str, name: str = "") -> str:
    """An artifact key for a namespace (and a dataset, or a listing's name prefix): `<prefix>-<name>` in the default
    namespace, `<prefix>-<namespace>-<name>-<hash>` in others, so that one team's history does not mix with another's.
    Keys allow only lowercase letters, digits and dashes; where that loses something ('My_Data' and 'my-data', a
    name in another script, a long one), a short hash of namespace and name keeps keys apart."""
    slugs = [re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in (namespace, name)]
    key = "-".join(part for part in (prefix, *slugs[namespace == DEFAULT_NAMESPACE:]) if part)
    if namespace == DEFAULT_NAMESPACE and slugs[1] == name and len(key) <= 100:
        return key
    return f"{key[:91]}-{hashlib.sha256(f'{namespace}/{name}'.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _untied(details: dict[str, Any]) -> dict[str, Any]:
    """The dict with its keys and strings copied. Prefect ties the parts of a task's result (keys too) to later tasks
    by object identity, one level deep, so a string the caller holds too (the namespace passed in, "LOCAL", a key
    such as "version") would make unrelated tasks look downstream of this one and give their assets false upstreams.
    (Decoding with surrogatepass makes new objects of one-character ASCII strings too, which CPython otherwise
    shares; "" and one-character Latin-1 strings such as a dataset named "é" stay shared. No field is ever "".)"""
    return {_copy(k): _copy(v) for k, v in details.items()}


def _copy(value: Any) -> Any:
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass") if type(value) is str else value


def _tasks(body: Callable[..., Any], name: str, run_name: str | Callable[..., str]) -> tuple[Task, Task]:
    """One operation as a sync task and as an async task that runs the same body in a worker thread."""

    @functools.wraps(body)  # Prefect reads the parameters and the docstring through __wrapped__
    async def in_thread(*args: Any, **kwargs: Any) -> Any:
        call = StoppableCall(functools.partial(body, *args, **kwargs))
        try:
            # abandon_on_cancel: a timeout or cancellation need not wait for a request in flight to be answered
            return await anyio.to_thread.run_sync(call.run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # The body stops at its next wait or chunk, removes what it sent and does not publish; the wait for
            # that is shielded from the cancellation (an asyncio task cancelled again still ends it).
            if call.stop():
                with anyio.move_on_after(STOP_GRACE_SECONDS, shield=True):
                    while not call.ended.is_set():
                        await anyio.sleep(0.05)
            _say_how_it_ended(call.outcome, name)
            raise

    in_thread.__name__ = in_thread.__qualname__ = "a" + body.__name__.lstrip("_")  # its own task key
    options = {"name": f"fedml-{name}", "task_run_name": run_name, **TASK_OPTIONS}
    return task(body, **options), task(in_thread, **options)


STOP_GRACE_SECONDS = 5.0  # how long a cancelled async task waits for its stopped body to clean up


STOPPED = {  # what a stopped call leaves, by operation
    "upload": "nothing was published and what it had sent was removed",
    "download": "nothing was put at dest_path; what it had fetched, if anything, is kept in partial_dir for a day, "
                "where the next download of that version goes on from it",
    "delete": "the dataset may or may not be deleted, as far as it got; get_data_metadata tells",
}


def _say_how_it_ended(outcome: str, name: str) -> None:
    """Say in the run's log what became of a cancelled (or timed-out) async task's storage call (`name`: upload,
    download, ...)."""
    if outcome == "waiting":
        run_logger().info("the storage call had not started; it never will")
    elif outcome == "stopped":
        run_logger().info("the %s call was stopped: %s", name, STOPPED.get(name, "it only reads, so nothing changed"))
    elif outcome == "finished":
        run_logger().warning("the storage call had finished before it could be stopped: what it did stands (an upload "
                       "is published, a download in place)")
    elif outcome == "running":
        run_logger().warning("the storage call is still waiting for an answer after %s s; it stops after it, and "
                       "cleanup() removes anything it leaves", STOP_GRACE_SECONDS)
    else:
        run_logger().warning("the storage call ended with %s as it was being stopped", outcome)


def _task_body(body: Callable[..., Any]) -> Callable[..., Any]:
    """The body with the core's lines in the run log."""
    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        with core_lines_in_run_log(LOG_ADVICE):
            return body(*args, **kwargs)
    return run


# Run names from the call's arguments (Prefect passes them to a callable with a `parameters` argument); a key
# passed in the wrong argument is refused by the task, and masked in its run's name, made before it runs.
def _upload_run_name(parameters: dict[str, Any]) -> str:
    p = parameters
    return mask_keys(f"upload {planned_name(p['data_path'], p.get('name')) or p.get('name') or p['data_path']}")


def _download_run_name(parameters: dict[str, Any]) -> str:
    p = parameters
    return mask_keys(f"download {p['name']}" + (f" version {p['version']}" if p.get("version") else ""))


def _named(verb: str) -> Callable[[dict[str, Any]], str]:
    return lambda parameters: mask_keys(f"{verb} {parameters['name']}")


def _upload_data(data_path: str, name: str | None = None, description: str | None = None,
                 metadata: dict[str, str] | None = None, tag_list: list[str] | None = None,
                 storage: FedMLStorage | str | None = None, service: str | None = None,
                 namespace: str | None = None, ignore_patterns: list[str] | str | None = None) -> dict[str, Any]:
    """Store a file or directory; returns name, uri, version, sha256, size, skipped, ... (JSON-able).
    `ignore_patterns` (.gitignore syntax) leaves a folder's matching items out.

    The task run materialises the Prefect asset fedml://<namespace>/<name>.
    """
    for field, value in (("metadata", metadata), ("tag_list", tag_list)):
        if isinstance(value, str):  # what .map hands each call of a dict or list that was not wrapped
            raise TypeError(f"{field} is the string {value!r}, not a {'dict' if field == 'metadata' else 'list'}; "
                            f"with .map, pass {field}=unmapped(...) so that every call gets all of it")
    with _client(storage, service, namespace) as client:
        planned = planned_name(data_path, name)
        key = declare_output(client, planned) if planned else None  # first: a failure is a failed materialisation
        result = client.upload(data_path, name, description, metadata, tag_list,
                               ignore_patterns=ignore_patterns).unwrap()
        if planned is None:  # could not be told beforehand
            key = declare_output(client, result.name)
    run_logger().info("%s", result.summary())
    details = _untied(result.to_dict())
    if in_run():
        create_markdown_artifact(
            key=_artifact_key("fedml-upload", result.namespace, result.name),
            markdown=(f"### Uploaded `{result.name}`\n\n| field | value |\n|---|---|\n"
                      f"| version | `{result.version}` |\n| size | {human_size(result.size)} ({result.size} bytes) |\n"
                      f"| files | {result.file_count} |\n| sha256 | `{result.sha256}` |\n| uri | {result.uri} |\n"
                      f"| skipped (unchanged) | {result.skipped} |\n"
                      + (f"| left out by ignore_patterns | {result.ignored} |\n" if result.ignored else "")),
            description=f"fedml-storage upload of {result.name}",
            _sync=True,  # type: ignore[call-arg]  # async_dispatch's
        )
    add_metadata(key, {k: details[k] for k in ("version", "sha256", "size", "uri", "skipped")})  # skipped: unchanged
    return hold_for_flow_run(details)


def _download_data(name: str, dest_path: str | None = None, version: str | None = None,
                   storage: FedMLStorage | str | None = None, service: str | None = None,
                   namespace: str | None = None) -> DownloadResult:
    """Fetch a dataset (optionally an exact version), verified; returns its absolute path, a str whose `version`,
    `sha256` and `size` say what was downloaded (a result read back from JSON storage is the plain path).

    Tasks given the path see the asset fedml://<namespace>/<name> upstream.
    """
    require_dest_path(dest_path, "download_data")
    with _client(storage, service, namespace) as client:
        result = client.download(name, dest_path, version=version).unwrap()
        declare_input(client, name)
    run_logger().info("%s", result.summary())
    return hold_for_flow_run(result)


def _delete_data(name: str, storage: FedMLStorage | str | None = None, service: str | None = None,
                 namespace: str | None = None, missing_ok: bool = True) -> bool:
    """Remove a dataset; returns whether it was there to delete.

    With `missing_ok` (the default, so that a retry after a delete that went through succeeds) a name that is
    not stored returns False; without it, that fails.
    """
    with _client(storage, service, namespace) as client:
        response = client.delete(name, missing_ok=missing_ok)
        deleted = response.unwrap()
    run_logger().info("%s", response.message)
    return deleted


def _list_data(storage: FedMLStorage | str | None = None, service: str | None = None,
               namespace: str | None = None, prefix: str | None = None) -> list[dict[str, Any]]:
    """Every stored dataset's metadata as dicts (of names starting with `prefix`, when given); also a table
    artifact."""
    with _client(storage, service, namespace) as client:
        items = [m.to_dict() for m in client.list(prefix=prefix).unwrap()]
        namespace = client.settings.namespace
    run_logger().info("%s", listed_line([i["dataName"] for i in items], prefix))
    rows = [{"name": i["dataName"], "size": i["size"], "version": i["version"], "files": i["file_count"],
             "description": i["description"], "tags": ", ".join(i["tag_list"]), "updated": i["updatedAt"]}
            for i in items]
    if in_run():
        create_table_artifact(key=_artifact_key("fedml-storage-list", namespace, prefix or ""), table=rows,
                              _sync=True,  # type: ignore[call-arg]  # async_dispatch's
                              description=f"Datasets in FedML storage (namespace {namespace!r}"
                              + (f", names starting {prefix!r})" if prefix else ")"))
    return items


def _get_data_metadata(name: str, user_defined_only: bool = False, storage: FedMLStorage | str | None = None,
                       service: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Stored metadata of a dataset as a dict (or only the user-defined dict)."""
    if not isinstance(user_defined_only, bool):  # a block or key given as the second argument
        raise TypeError(f"user_defined_only must be True or False, not a {type(user_defined_only).__name__}; pass "
                        "a block as storage=")
    with _client(storage, service, namespace) as client:
        if user_defined_only:
            user = client.get_user_metadata(name).unwrap()
            run_logger().info("user metadata of %r: %d key(s)", name, len(user))
            return _untied(user)
        meta = _untied(client.get_metadata(name).unwrap().to_dict())
    run_logger().info("metadata of %r: version %s, %s", name, meta["version"], meta["size"])
    return meta


upload_data, aupload_data = _tasks(_task_body(_upload_data), "upload", _upload_run_name)
download_data, adownload_data = _tasks(_task_body(_download_data), "download", _download_run_name)
delete_data, adelete_data = _tasks(_task_body(_delete_data), "delete", _named("delete"))
list_data, alist_data = _tasks(_task_body(_list_data), "list", "list datasets")
get_data_metadata, aget_data_metadata = _tasks(_task_body(_get_data_metadata), "metadata", _named("metadata of"))
