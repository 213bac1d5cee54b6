"""`FedMLStorageHook`: a fedml_storage client built from an Airflow connection."""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException
from airflow.sdk.lineage import get_hook_lineage_collector

from fedml_storage import (
    DownloadResult, FedMLResponse, FedMLStorageError, Readiness, Reason, StorageClient, StorageMetadata,
    is_unset, unknown_settings,
)
from fedml_storage.advice import kept_in, needs_dest_path, relative_paths, unattended_dest, worker_local


class FedMLStorageException(AirflowException):
    """A storage call did not succeed; `retryable` says whether trying again may help."""

    def __init__(self, message: str, reason: str | None, retryable: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable

    def __reduce__(self) -> tuple[type, tuple[str, str | None, bool]]:
        return type(self), (str(self), self.reason, self.retryable)


class FedMLStorageFailException(FedMLStorageException, AirflowFailException):
    """A failure retrying cannot cure (bad input, unknown name, refused credentials): fails the task at once."""


WORKER_DIR = "is wherever the worker was started (dags, logs)"
TEMPLATE_RENDERED_EMPTY = ". Did a template for dest_path render empty?"


def no_dest_path(who: str) -> str:
    """Why `who` refuses to download without a dest_path."""
    return needs_dest_path(who, "worker", WORKER_DIR) + TEMPLATE_RENDERED_EMPTY


def raise_for(response: FedMLResponse) -> Any:
    """Return `data`, or raise: failures that can pass let Airflow retry, the others fail the task at once."""
    if response.ok:
        return response.data
    kind = FedMLStorageException if response.retryable else FedMLStorageFailException
    raise kind(response.message, response.reason, response.retryable)


class FedMLStorageHook(BaseHook):
    """Talks to FedML storage with the settings of connection `fedml_storage_conn_id`.

    Without that connection (only for the default id) the core's own configuration is used:
    FEDML_STORAGE_* variables, the config file, or the embedded LOCAL store.
    """

    conn_name_attr = "fedml_storage_conn_id"
    default_conn_name = "fedml_storage_default"
    conn_type = "fedml_storage"
    hook_name = "FedML Storage"

    def __init__(self, fedml_storage_conn_id: str = default_conn_name, **overrides: Any) -> None:
        super().__init__()
        self.fedml_storage_conn_id = fedml_storage_conn_id
        self._overrides = {k: v for k, v in overrides.items() if not is_unset(v)}  # a template rendered empty
        self._client: StorageClient | None = None

    def settings_from_connection(self) -> dict[str, Any]:
        """Core settings from the connection's fields (extra) and password (the API key)."""
        try:
            conn = self.get_connection(self.fedml_storage_conn_id)
        except AirflowNotFoundException:
            return self._without_connection()
        if conn.conn_type and conn.conn_type.replace("-", "_") != self.conn_type:  # e.g. an aws connection reused
            self.log.warning("Airflow connection %r is of type %r, not %s: fedml-storage reads its password as the "
                             "API key and its extra as settings (service, bucket, endpoint_url, ...)",
                             self.fedml_storage_conn_id, conn.conn_type, self.conn_type)
        unused = [field for field in ("host", "schema", "port") if getattr(conn, field, None)]
        mangled = f"{conn.host or ''}{conn.schema or ''}"  # 'fedml_storage://...' is no URI scheme: all a path
        if unused and not conn.conn_type and "//" in mangled:
            raise FedMLStorageFailException(
                f"Airflow could not tell the type of connection {self.fedml_storage_conn_id!r}: a URI must start "
                "with fedml-storage:// (with a dash; a URI scheme takes no underscore)", "invalid_input", False)
        if unused:  # e.g. fedml-storage://KEY:SECRET@minio:9000/...: silently dropped, calls would go to AWS
            raise FedMLStorageFailException(
                f"Airflow connection {self.fedml_storage_conn_id!r} sets {', '.join(unused)}, which fedml-storage "
                "does not use: remove them (in its URI or JSON; the form hides them), and put the endpoint in extra "
                "endpoint_url (e.g. http://minio:9000) and the bucket in extra bucket", "invalid_input", False)
        # Extras are the core's settings by name (Airflow 2's forms prefixed them); the API key is the password.
        settings = {k.removeprefix(f"extra__{self.conn_type}__"): v for k, v in self._extra(conn).items()
                    if not is_unset(v)}
        problem = unknown_settings(settings) or relative_paths(settings, "its extra", "worker")
        if problem:
            raise FedMLStorageFailException(f"Airflow connection {self.fedml_storage_conn_id!r}: {problem}. Fix "
                                            "its extra (the API key is its password)", "invalid_input", False)
        if (api_key := self._api_key(conn)) is not None:
            settings["api_key"] = api_key
        return settings

    def _without_connection(self) -> dict[str, Any]:
        """No settings of the connection's own: the core's configuration, for the default id only."""
        variable = f"AIRFLOW_CONN_{self.fedml_storage_conn_id.upper()}"
        if os.environ.get(variable, "").strip():  # Airflow takes a URI it cannot parse for no connection
            raise FedMLStorageFailException(
                f"Airflow could not read connection {self.fedml_storage_conn_id!r} from {variable}: in a URI, "
                "URL-encode the login and the secret ('/' as %2F, '+' as %2B, '@' as %40, ':' as %3A), or give "
                "the connection as JSON", "not_configured", False) from None
        if self.fedml_storage_conn_id != self.default_conn_name:
            raise FedMLStorageFailException(  # retrying does not define it
                f"Airflow connection {self.fedml_storage_conn_id!r} is not defined; create it (type "
                "fedml_storage) or pass the fedml_storage_conn_id of one that is", "not_configured", False
            ) from None
        # a misspelt AIRFLOW_CONN_ variable looks the same: say where the data goes
        warning = worker_local(f"No Airflow connection {self.fedml_storage_conn_id!r}",
                               "Define the connection (type fedml_storage)")
        if warning is None:
            self.log.debug("No connection %r: using fedml-storage's own configuration", self.fedml_storage_conn_id)
        else:
            self.log.warning("%s", warning)
        return {}

    def _api_key(self, conn: Any) -> str | None:
        """The API key the connection's login and password make, if any."""
        if conn.login and not conn.password:
            raise FedMLStorageFailException(
                f"Airflow connection {self.fedml_storage_conn_id!r} has a login but no password: put the secret "
                "access key in its password (or the whole ACCESS_KEY_ID:SECRET_ACCESS_KEY there, login empty)",
                "invalid_input", False)
        if conn.password:
            password = conn.password
            if conn.login and ":" in password and not password.startswith(f"{conn.login}:"):
                # secrets hold no ':': this is a whole key beside a stray login, or SECRET:TOKEN; guessing would
                # send a secret as a key id or a token
                raise FedMLStorageFailException(
                    f"Airflow connection {self.fedml_storage_conn_id!r} has a login and a password holding ':' that "
                    "does not start with that login; with a login, the password is the secret access key alone. For "
                    "the whole key (or one with a session token, ACCESS_KEY_ID:SECRET:TOKEN) leave the login empty",
                    "invalid_input", False)
            return f"{conn.login}:{password}" if conn.login and ":" not in password else password
        return None

    def _extra(self, conn: Any) -> dict[str, Any]:
        """The connection's extra as a dict; Airflow takes one that is not a JSON object for none (and logs it),
        which would send the data to the worker's LOCAL store."""
        raw = conn.extra
        if raw is None or not str(raw).strip():
            return {}
        try:
            extra = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            extra = None
        if not isinstance(extra, dict):
            raise FedMLStorageFailException(
                f"Airflow connection {self.fedml_storage_conn_id!r} has an extra that is not a JSON object (written "
                'as {"service": "S3", "bucket": "datasets"}, with double quotes); fix its extra', "invalid_input",
                False)
        return conn.extra_dejson  # the same, read by Airflow, which also masks sensitive values in the task's log

    def get_client(self) -> StorageClient:
        """The core client for this connection (built once).

        Its failures are not logged by the core: the hook raises them and Airflow logs them once.
        """
        if self._client is None:
            self._client = self._client_for(self.settings_from_connection(), **self._overrides)
        return self._client

    def get_conn(self) -> StorageClient:
        """The core client for this connection, as `get_client()` (the name other Airflow hooks use)."""
        return self.get_client()

    def _client_for(self, settings: dict[str, Any], **overrides: Any) -> StorageClient:
        """A core client for the connection's settings (and the task's): failures not logged, a key without a service
        refused, messages naming where a bad setting came from."""
        conn = f"Airflow connection {self.fedml_storage_conn_id!r}"
        origin = f"the {conn} or " if settings else ""
        origin += "the task's arguments"
        calls = {"delete": "FedMLStorageDeleteOperator(name=", "cleanup": "FedMLStorageHook().cleanup"}
        advice = kept_in("FedMLStorageListOperator", f"the extra of {conn}", f"the password of {conn}", **calls) \
            if settings else kept_in("FedMLStorageListOperator", **calls)  # no connection: the worker's settings
        return StorageClient(origin=origin, log_failures=False, key_means_remote=True, advice=advice,
                             **{**settings, **overrides})

    def close(self) -> None:
        """Release the client's connections (use the hook as a context manager to do it for you)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> FedMLStorageHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def location(self) -> str:
        """Which store and namespace this connection reaches (see StorageClient.location)."""
        try:
            return self.get_client().location()
        except FedMLStorageError as exc:
            return raise_for(exc.response)

    @property
    def namespace(self) -> str:
        """The namespace this connection stores under."""
        try:
            return self.get_client().settings.namespace
        except FedMLStorageError as exc:
            return raise_for(exc.response)

    def upload(self, data_path: str, name: str | None = None, description: str | None = None,
               metadata: dict[str, str] | None = None, tag_list: list[str] | None = None, *,
               ignore_patterns: list[str] | str | None = None) -> dict[str, Any]:
        """Store a file or directory (without a folder's items matching `ignore_patterns`, .gitignore syntax);
        the upload's details as a JSON-able dict."""
        result = raise_for(self.get_client().upload(data_path, name, description, metadata, tag_list,
                                                    ignore_patterns=ignore_patterns))
        self.log.info("%s", result.summary())
        self._report_lineage("add_output_asset", result.name)
        return result.to_dict()

    def download(self, name: str, dest_path: str, version: str | None = None) -> DownloadResult:
        """Fetch a dataset into `dest_path` (required); its absolute local path, a str that also carries `version`,
        `sha256`, `size`, ..."""
        if why := unattended_dest(dest_path, "download", "worker", WORKER_DIR, TEMPLATE_RENDERED_EMPTY):
            raise FedMLStorageFailException(why, Reason.INVALID_INPUT.value, retryable=False)  # not the worker's cwd
        result = raise_for(self.get_client().download(name, dest_path, version=version))
        self.log.info("%s", result.summary())
        self._report_lineage("add_input_asset", result.name)
        return result

    def _report_lineage(self, add: str, name: str) -> None:
        """Tell Airflow's hook lineage (read by e.g. OpenLineage) about the dataset; never fails a finished transfer."""
        try:
            getattr(get_hook_lineage_collector(), add)(context=self, uri=self.asset_uri(name))
        except Exception as exc:  # e.g. an Asset URI past Airflow's length limit, for an old long name
            self.log.warning("not reporting lineage of %r to Airflow: %s", name, exc)

    def delete(self, name: str, *, missing_ok: bool = False) -> bool:
        """Remove a dataset; whether something was deleted (False: with `missing_ok`, it was not stored)."""
        response = self.get_client().delete(name, missing_ok=missing_ok)
        deleted = raise_for(response)
        self.log.info("%s", response.message)
        return deleted

    def list(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """Every dataset's metadata as dicts (of names starting with `prefix`, when given)."""
        items: list[StorageMetadata] = raise_for(self.get_client().list(prefix=prefix))
        return [m.to_dict() for m in items]

    def get_metadata(self, name: str) -> dict[str, Any]:
        """Stored metadata of a dataset as a dict."""
        return raise_for(self.get_client().get_metadata(name)).to_dict()

    def get_user_metadata(self, name: str) -> dict[str, str]:
        """The metadata dict given at upload."""
        return raise_for(self.get_client().get_user_metadata(name))

    def exists(self, name: str) -> bool:
        """Whether a dataset of that name is stored."""
        return raise_for(self.get_client().exists(name))

    def readiness(self, name: str, metadata_key: str | None = None, metadata_value: str | int | None = None, *,
                  version: str | None = None) -> Readiness:
        """Whether `name` is stored (with `metadata_key` set, to `metadata_value` when given; with `version` kept),
        why not, and the version and SHA-256 a download would get.

        Raises FedMLStorageException on failure: `retryable` (service unreachable, busy) means "check again later".
        An empty `version` (a template rendered empty) means any version.
        """
        return raise_for(self.get_client().ready(name, metadata_key, metadata_value, version=version or None))

    def cleanup(self, older_than_seconds: float = 3600) -> dict[str, int]:
        """Remove what interrupted uploads left (never published data) older than the grace period; the counts.
        For a maintenance task: `FedMLStorageHook().cleanup(older_than_seconds=86400)`."""
        response = self.get_client().cleanup(older_than_seconds)
        counts = raise_for(response)
        self.log.info("%s", response.message)
        return counts

    def asset_uri(self, name: str) -> str:
        """fedml://<namespace>/<name> for this connection."""
        try:
            return self.get_client().asset_uri(name)
        except FedMLStorageError as exc:
            return raise_for(exc.response)

    def test_connection(self) -> tuple[bool, str]:
        """A real round trip (list); the error on failure, never the secret."""
        try:
            settings = self.settings_from_connection()
        except (AirflowNotFoundException, FedMLStorageException) as exc:
            return False, str(exc)
        with self._client_for(settings) as client:
            response = client.list()
        if response.ok:
            return True, f"Connection works: {len(response.data)} dataset(s) visible"
        return False, response.message
