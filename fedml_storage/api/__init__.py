"""The documented FedML Storage API. Every function returns a `FedMLResponse` and never raises.

`service` picks LOCAL, S3 or R2 (any case); `service=None` means the configured default service
(LOCAL out of the box). Keyword-only arguments after `*` are this package's extensions.
"""

from __future__ import annotations

import os
from typing import Any

from ..advice import PICK_SERVICE
from ..client import StorageClient
from ..api_keys import check_api_key
from ..config import StorageSettings, config_path
from ..config_file import overridden_note, write_config_file
from ..errors import InvalidInput, to_response
from ..response import FedMLResponse, ResponseCode
from .fedml_response import FedMLStorageError, Reason


def _client(api_key: str | None, service: str | None) -> StorageClient:
    return StorageClient(api_key=api_key, service=service)


def upload(data_path: str | os.PathLike, api_key: str | None = None, service: str | None = "R2",
           name: str | None = None, description: str | None = None, metadata: dict[str, str] | None = None,
           show_progress: bool = False, out_progress_to_err: bool = True, progress_desc: str | None = None,
           tag_list: list[str] | None = None, *, ignore_patterns: list[str] | str | None = None) -> FedMLResponse:
    """Store a file or directory; `data` is the stored object's URI (an UploadResult with details).
    `ignore_patterns` (a keyword extension; .gitignore syntax) leaves matching items of a folder out."""
    with _client(api_key, service) as client:
        return client.upload(data_path, name, description, metadata, tag_list, show_progress=show_progress,
                             out_progress_to_err=out_progress_to_err, progress_desc=progress_desc,
                             ignore_patterns=ignore_patterns)


def download(data_name: str, api_key: str | None = None, service: str | None = "R2",
             dest_path: str | os.PathLike | None = None, show_progress: bool = True, *,
             version: str | None = None, out_progress_to_err: bool = True,
             progress_desc: str | None = None) -> FedMLResponse:
    """Fetch a dataset into `dest_path` (default: current folder); `data` is the absolute path."""
    with _client(api_key, service) as client:
        return client.download(data_name, dest_path, version=version, show_progress=show_progress,
                               out_progress_to_err=out_progress_to_err, progress_desc=progress_desc)


def delete(data_name: str, service: str | None, api_key: str | None = None, *,
           missing_ok: bool = False) -> FedMLResponse:
    """Delete a dataset; `data` is True when it was deleted (with `missing_ok`, a name not stored is a success
    whose data is False)."""
    with _client(api_key, service) as client:
        response = client.delete(data_name, missing_ok=missing_ok)
    if not response.ok:
        response.data = False
    return response


def get_storage_metadata(data_name: str, api_key: str | None = None, *, service: str | None = None) -> FedMLResponse:
    """Stored metadata (dataName, description, createdAt, updatedAt, size, tag_list, download_url, ...)."""
    with _client(api_key, service) as client:
        return client.get_metadata(data_name)


def get_storage_user_defined_metadata(data_name: str, api_key: str | None = None, *, service: str | None = None) -> FedMLResponse:
    """The metadata dict given at upload (`{}` when none)."""
    with _client(api_key, service) as client:
        return client.get_user_metadata(data_name)


def list_storage_objects(api_key: str | None = None, *, service: str | None = None,
                         prefix: str | None = None) -> FedMLResponse:
    """Every stored dataset's metadata (of names starting with `prefix`, when given), sorted by name."""
    with _client(api_key, service) as client:
        return client.list(prefix=prefix)


def fedml_login(api_key: str | None = None, service: str | None = None) -> FedMLResponse:
    """Check the key's form (ACCESS_KEY_ID:SECRET_ACCESS_KEY) and save it in the config file (0600)."""
    secrets = [api_key]
    try:
        try:
            key = check_api_key(api_key)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        updates: dict[str, Any] = {"api_key": key}
        if service is not None:
            updates["service"] = service
        path = write_config_file(updates)
    except Exception as exc:
        return to_response(exc, "login", secrets)
    note = f"; default service is now {str(service).strip().upper()}" if service is not None else ""
    note += overridden_note(updates)
    return FedMLResponse(ResponseCode.SUCCESS, f"API key saved to {path} (readable only by you){note}", True)


def configure(**settings: Any) -> FedMLResponse:
    """Save settings (service, bucket, endpoint_url, region, r2_account_id, namespace, local_root, ...)."""
    if not settings:
        return FedMLResponse(ResponseCode.SUCCESS, f"nothing saved: no setting given (e.g. configure(bucket=...)); "
                             f"the config file is {config_path()}", str(config_path()))
    try:
        path = write_config_file(settings)
    except Exception as exc:
        return to_response(exc, "configure", [settings.get("api_key")])
    return FedMLResponse(ResponseCode.SUCCESS, f"settings saved to {path}{overridden_note(settings)}"
                         f"{unused_bucket_note()}", str(path))


def unused_bucket_note() -> str:
    """'; ...' when a bucket is configured while the default service is LOCAL, which uses none; else ''."""
    try:
        s = StorageSettings.resolve()
    except Exception:  # a setting that does not validate is reported by the calls themselves
        return ""
    if s.service != "LOCAL" or not s.bucket:
        return ""
    return (f"; the default service is still LOCAL, which uses no bucket: calls without service= do not use "
            f"{s.bucket!r}; {PICK_SERVICE}")


def cleanup(service: str | None = None, api_key: str | None = None,
            older_than_seconds: float = 3600) -> FedMLResponse:
    """Remove data left by interrupted uploads, older than the grace period (which must exceed the longest
    upload running meanwhile; 0 only when none runs)."""
    with _client(api_key, service) as client:
        return client.cleanup(older_than_seconds)


def check_store(service: str | None = None, api_key: str | None = None) -> FedMLResponse:
    """Check that the store does what fedml-storage relies on (conditional requests honoured, not only accepted),
    on a probe object removed after; data is a StoreCheck (`findings`), FAILURE when something is missing."""
    with _client(api_key, service) as client:
        return client.check()


__all__ = [
    "FedMLResponse", "FedMLStorageError", "Reason", "ResponseCode", "check_store", "cleanup", "config_path",
    "configure", "delete", "download", "fedml_login", "get_storage_metadata", "get_storage_user_defined_metadata",
    "list_storage_objects", "upload",
]
