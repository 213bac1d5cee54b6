"""`StorageClient`: the Storage API bound to one set of settings. Its operations return FedMLResponse and never
raise; the accessors `settings`, `location()` and `asset_uri()` raise FedMLStorageError on invalid settings."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .advice import PICK_SERVICE, reword
from .backends import ObjectStore, open_store
from .catalog import Catalog, Manifest, malformed_version
from .catalog_cleanup import cleanup
from .api_keys import mask_keys
from .config import (PLAIN_SETTINGS, StorageSettings, is_unset, read_config_file, storage_home, validate_settings,
                     without_userinfo)
from .digests import DigestCache
from .downloads import download as _download
from .entry_cache import EntryCache
from .errors import InvalidInput, NotFound, Unsupported, to_response
from .own import check_target
from .response import FedMLResponse, FedMLStorageError, ResponseCode
from .results import DownloadResult, Readiness, StorageMetadata, UploadResult, asset_uri, human_size
from .store_check import check_store
from .uploads import UploadRequest
from .uploads import upload as _upload
from .validation import check_name, check_prefix, metadata_value_as_stored

log = logging.getLogger("fedml_storage")

T = TypeVar("T")
SERVICE_HINT = "; calls without service= use the default service"  # how a message's hint of a wrong service starts


LEFT_BEHIND = ("; data stored under that name remains (an earlier try of this delete may have removed the catalog "
               "entry and lost the answer, or an upload of it is under way): cleanup() removes it once older than "
               "its grace period")


class StorageClient:
    """Upload, download, delete, inspect and list named datasets in one store and namespace."""

    def __init__(self, settings: StorageSettings | None = None, *, origin: str = "the argument",
                 log_failures: bool = True, key_means_remote: bool = False, advice: Mapping[str, str] | None = None,
                 **overrides: Any) -> None:
        """`overrides`: settings by name over the configured ones; `origin` says where they come from in messages
        about bad values (e.g. "the Airflow connection 'x'"); `log_failures=False` for callers that raise failures
        (their framework logs them); `key_means_remote` refuses an api_key when no service is set anywhere (for
        a connection or block that holds credentials) instead of ignoring it on the default LOCAL store; `advice`
        rewords the advice of messages for a framework (advice.kept_in)."""
        self._advice = advice or {}
        self._base = settings
        self._origin = origin
        self._key_means_remote = key_means_remote
        self._log_failures = log_failures
        self._overrides = {k: v for k, v in overrides.items() if not is_unset(v)}  # blank: unset
        self._settings: StorageSettings | None = None
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()
        self._store_listed = False  # see ready()

    def __repr__(self) -> str:
        # an unknown argument (aws_secret_access_key=) is refused, and shown by name only
        shown = {k: v if k in PLAIN_SETTINGS else "****" for k, v in self._overrides.items() if k != "api_key"}
        if isinstance(shown.get("endpoint_url"), str):  # a URL with user:secret@ is refused, but shown as given
            shown["endpoint_url"] = without_userinfo(shown["endpoint_url"])
        return mask_keys(f"StorageClient({shown})")

    # -- resolution ---------------------------------------------------------
    def _resolve(self) -> StorageSettings:
        overrides = dict(self._overrides)
        api_key = overrides.pop("api_key", None)
        if self._base is not None:
            merged = {**self._base.model_dump(), **overrides}
            settings = validate_settings(merged, dict.fromkeys(overrides, self._origin), self._origin)
        else:
            key_given = api_key is not None and self._key_means_remote
            settings = StorageSettings.resolve(self._origin, also_remote=("api_key",) if key_given else (), **overrides)
        # LOCAL needs no credential: a platform-style key passed out of habit is ignored there.
        if api_key is not None and settings.service != "LOCAL":
            settings = validate_settings({**settings.model_dump(), "api_key": api_key}, {"api_key": self._origin},
                                         self._origin)
        return settings

    @property
    def settings(self) -> StorageSettings:
        """The resolved settings; raises FedMLStorageError when they are invalid."""
        response = self._run("resolving settings", self._ensure_settings)
        return response.unwrap()

    def _ensure_settings(self) -> StorageSettings:
        with self._lock:
            if self._settings is None:
                self._settings = self._resolve()
            return self._settings

    def _catalog(self) -> Catalog:
        settings = self._ensure_settings()
        with self._lock:
            if self._store is None:
                self._store = open_store(settings)
            return Catalog(self._store, settings.namespace)

    def close(self) -> None:
        """Release connections."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _secrets(self) -> list[str | None]:
        found: list[str | None] = [self._overrides.get("api_key"), os.environ.get("FEDML_STORAGE_API_KEY"),
                                   _saved_key()]
        if self._settings is not None:
            found += self._settings.secret_values()
        if self._base is not None:
            found += self._base.secret_values()
        return found

    def _default_service_hint(self) -> str:
        """Why a name may be missing: the call went to the default LOCAL store while a bucket is configured."""
        s = self._settings
        if self._overrides.get("service") is None and s is not None and s.service == "LOCAL" and s.bucket:
            return f"{SERVICE_HINT}, LOCAL, while bucket {s.bucket!r} is configured: {PICK_SERVICE}"
        return ""

    def _run(self, action: str, fn: Callable[[], T], message: Callable[[T], str] | None = None, *,
             after_error: str = "") -> FedMLResponse:
        try:
            data = fn()
        except Exception as exc:  # the core API reports failures, it does not raise them
            if isinstance(exc, NotFound) and (hint := self._default_service_hint()):
                exc = NotFound(f"{exc}{hint}")
            failed = to_response(exc, action, self._secrets(), after_error, log_it=False)
            failed = dataclasses.replace(failed, message=reword(failed.message, self._advice))
            if self._log_failures:  # in the words the caller gets
                log.info("%s", failed.message)
            return failed
        text = message(data) if message else f"{action} succeeded"
        return FedMLResponse(ResponseCode.SUCCESS, reword(text, self._advice), data)

    # -- operations ---------------------------------------------------------
    def upload(self, data_path: Any, name: str | None = None, description: str | None = None,
               metadata: dict[str, str] | None = None, tag_list: list[str] | None = None, *,
               show_progress: bool = False, out_progress_to_err: bool = True,
               progress_desc: str | None = None, ignore_patterns: list[str] | str | None = None) -> FedMLResponse:
        """Store a file or directory; data is an UploadResult (the stored object's URI). `ignore_patterns`
        (.gitignore syntax, relative to a folder) leaves matching items of a folder out."""
        req = UploadRequest(data_path, name, description, metadata, tag_list, show_progress,
                            out_progress_to_err, progress_desc, ignore_patterns)

        def run() -> UploadResult:
            catalog = self._catalog()
            with _digest_cache() as cache:
                return _upload(req, self._ensure_settings(), catalog, cache)

        return self._run(f"upload of {data_path!s}", run, lambda r: r.summary(), after_error="Nothing was published")

    def download(self, data_name: str, dest_path: str | os.PathLike | None = None, *, version: str | None = None,
                 show_progress: bool = False, out_progress_to_err: bool = True,
                 progress_desc: str | None = None,
                 confirm_replace: Callable[[Path], bool] | None = None) -> FedMLResponse:
        """Fetch a dataset into dest_path (default: the current folder); data is a DownloadResult (its path). A
        dest_path/<name> that holds exactly that version already is kept, and nothing is fetched. Any other is
        replaced as a whole, once `confirm_replace(path)` (when given) says yes: no leaves it, fetching nothing."""
        def run() -> DownloadResult:
            catalog = self._catalog()
            with _digest_cache() as cache:
                return _download(catalog, data_name, dest_path, version, show_progress, out_progress_to_err,
                                 progress_desc, self._ensure_settings().partials_folder,
                                 functools.partial(check_target, settings=self._ensure_settings()), cache,
                                 confirm_replace)

        return self._run(
            f"download of {data_name!r}",
            run,
            lambda r: r.summary(),
            after_error="Nothing was left at the destination",
        )

    def delete(self, data_name: str, *, missing_ok: bool = False) -> FedMLResponse:
        """Remove a dataset (catalog entry first, then data); data is True. With `missing_ok`, a name that is not
        stored (a retry of a delete that went through) is a success whose data is False."""

        notes: list[str] = []

        def run() -> bool:
            catalog = self._catalog()
            try:
                if catalog.remove(check_name(data_name)) is None:
                    notes.append(" (its catalog entry was unreadable: cleanup() removes its data)")
            except NotFound as missing:
                if not missing_ok:
                    raise
                # a try whose answer was lost after the entry went leaves its data to a retry, which finds no entry
                left = next(iter(catalog.store.list(catalog.data_folder(data_name))), None)
                hint = missing.similar + (LEFT_BEHIND if left else "")
                if hint:  # a clean-up step would otherwise leave the dataset meant, or its data, quietly
                    log.warning("%r was not stored, nothing was deleted%s", data_name, hint)
                notes.append(hint)
                return False
            return True

        return self._run(f"delete of {data_name!r}", run,
                         lambda done: f"deleted {data_name!r}" + "".join(notes) if done else
                         f"{data_name!r} was not stored: nothing to delete{''.join(notes)}"
                         f"{self._default_service_hint()}")

    def get_metadata(self, data_name: str) -> FedMLResponse:
        """Stored metadata of a dataset; data is a StorageMetadata."""

        def run() -> StorageMetadata:
            catalog = self._catalog()
            return self._metadata(catalog, catalog.get(check_name(data_name)))

        return self._run(f"metadata of {data_name!r}", run)

    def get_user_metadata(self, data_name: str) -> FedMLResponse:
        """The metadata dict given at upload ({} when none)."""
        return self._run(
            f"user metadata of {data_name!r}",
            lambda: dict(self._catalog().get(check_name(data_name)).user_metadata),
        )

    def list(self, *, prefix: str | None = None) -> FedMLResponse:
        """Every dataset in the namespace (whose name starts with `prefix`, when given); data is a list of
        StorageMetadata. Only the matching entries are read."""

        def run() -> list[StorageMetadata]:
            starting = check_prefix(prefix)
            catalog = self._catalog()
            with contextlib.closing(EntryCache(_cache_file("entries.sqlite"))) as cache:
                listed = catalog.list(self._ensure_settings().concurrency, starting, cache)
            return [self._metadata(catalog, m) for m in listed]

        def said(items: list[StorageMetadata]) -> str:
            named = f" named {prefix}*" if prefix else ""
            return f"{len(items)} stored object(s){named}{'' if items else self._default_service_hint()}"

        return self._run("listing stored data", run, said)

    def exists(self, data_name: str) -> FedMLResponse:
        """Whether a name is stored; data is a bool."""
        return self._run(f"lookup of {data_name!r}",
                         lambda: self._catalog().read(check_name(data_name)) is not None)

    def ready(self, data_name: str, metadata_key: str | None = None,
              metadata_value: str | int | None = None, *, version: str | None = None) -> FedMLResponse:
        """Whether a name is stored, with user metadata `metadata_key` set (to `metadata_value` when given: a whole
        number is compared as its text) and, given `version`, that version kept (downloadable).

        data is a Readiness (with the version and SHA-256 a download would get now); a name not stored yet is a
        success with `ready` False, what a sensor waits on.
        """

        def run() -> Readiness:
            name = check_name(data_name)
            if metadata_key is None and metadata_value is not None:
                raise InvalidInput(f"metadata_value {metadata_value!r} needs metadata_key, the user-metadata key that "
                                   "should hold it")
            if metadata_key is not None and (not isinstance(metadata_key, str) or not metadata_key.strip()):
                raise InvalidInput("metadata_key is empty (a template that rendered empty?): name the user-metadata key "
                                   "to wait for, or pass None to wait for the dataset alone")
            if version is not None and (given := malformed_version(version)) is not None:
                raise InvalidInput(f"{given} is not a version id, so it can never be stored (a template that rendered "
                                   "'None'?); pass the `version` an upload returned, or None for any version")
            wanted = metadata_value_as_stored(metadata_value)
            catalog = self._catalog()
            found = catalog.read(name)  # one read: the name and its metadata from the same manifest
            if found is None:
                if not self._store_listed:  # a web server or proxy at endpoint_url answers a key's GET with 404
                    next(iter(catalog.store.list(catalog.manifest_key(name))), None)  # too: a listing tells
                    self._store_listed = True
                return Readiness(False, f"dataset {name!r} not stored yet")
            manifest = found[0]
            if version is not None:
                kept = manifest.kept(version)
                if kept is None:
                    # ids sort by time: one dropped, or older than every kept version, can never appear
                    if version in manifest.dropped or version < max(v.version for v in manifest.versions):
                        manifest.find(version)  # raises: not kept
                    return Readiness(False, f"dataset {name!r}: version {version!r} not stored (yet)",
                                     manifest.current.version, manifest.current.sha256)
                pinned = (kept.version, kept.sha256)
            else:
                pinned = (manifest.current.version, manifest.current.sha256)
            if metadata_key is None:
                return Readiness(True, f"dataset {name!r} version {pinned[0]} is stored", *pinned)
            value = manifest.user_metadata.get(metadata_key)
            ok = value is not None if wanted is None else value == wanted
            waiting = "waiting" if wanted is None else f"waiting for {wanted!r}"
            return Readiness(ok, f"dataset {name!r}: {metadata_key}={value!r} ({'ready' if ok else waiting})", *pinned)

        return self._run(f"readiness of {data_name!r}", run, lambda r: r.detail)

    def cleanup(self, older_than_seconds: float = 3600) -> FedMLResponse:
        """Remove leftovers of interrupted uploads older than the grace period; data holds counts.

        The grace period must exceed the longest upload that may run meanwhile: an upload's data is dated from
        its start and is unreferenced until its manifest commits. Use 0 only when no upload runs.
        """
        return self._run("cleanup", lambda: cleanup(self._catalog(), older_than_seconds), lambda counts: (
            f"cleanup removed {counts['orphaned_objects_removed']} unreferenced object(s) and "
            f"{counts['incomplete_uploads_removed']} incomplete upload(s)" + (
                f"; kept {kept} incomplete upload(s) written to in the last {_seconds(older_than_seconds)} s, which may "
                "still be running (once no upload runs, cleanup(older_than_seconds=0) removes them)"
                if (kept := counts["incomplete_uploads_kept"]) else "")))

    def check(self) -> FedMLResponse:
        """Try on a probe object what fedml-storage needs of the store (writes, reads, listings, deletes, and
        conditional requests honoured); data is a StoreCheck, also on FAILURE (the store lacks something)."""
        action = "check of the store"
        response = self._run(action, lambda: check_store(self._catalog()),
                             lambda found: found.summary())
        if response.ok and not response.data.ok:
            failed = to_response(Unsupported(response.data.summary()), action, self._secrets(),
                                 log_it=self._log_failures)
            return dataclasses.replace(failed, data=response.data)
        return response

    def location(self) -> str:
        """Which store and namespace this client reaches, without a secret (s3://bucket/namespace and the endpoint,
        or a LOCAL folder's file:// URI); raises FedMLStorageError when the settings are invalid."""
        s = self.settings
        if s.service == "LOCAL":
            return (s.store_root / s.namespace).as_uri()
        endpoint = s.resolved_endpoint
        if endpoint:
            parts = urlsplit(endpoint.strip())
            endpoint = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
        return f"s3://{s.bucket}/{s.namespace}" + (f" at {endpoint}" if endpoint else f" on {s.service}")

    def asset_uri(self, data_name: str, *, iri: bool = False) -> str:
        """The lineage URI fedml://<namespace>/<name> (see `asset_uri`); raises FedMLStorageError when invalid."""
        response = self._run(
            "asset uri", lambda: asset_uri(self._ensure_settings().namespace, check_name(data_name), iri=iri)
        )
        return response.unwrap()

    def _metadata(self, catalog: Catalog, m: Manifest) -> StorageMetadata:
        cur = m.current
        uri = catalog.store.uri(cur.key)
        return StorageMetadata(
            dataName=m.name, description=m.description, createdAt=m.created_at, updatedAt=m.updated_at,
            size=human_size(cur.size), tag_list=list(m.tags), download_url=uri, size_bytes=cur.size,
            sha256=cur.sha256, content_digest=cur.content_digest, kind=cur.kind, file_count=cur.file_count,
            source_size=cur.source_size, version=cur.version, versions=[v.version for v in m.versions],
            service=catalog.store.service, namespace=catalog.namespace, uri=uri, user_metadata=dict(m.user_metadata),
        )


__all__ = ["FedMLStorageError", "StorageClient", "same_store"]


def _seconds(value: float) -> str:
    """Seconds as a user wrote them: 2592000 (not 2.592e+06), 0.5."""
    return str(round(value, 3)).removesuffix(".0")


def _cache_file(name: str) -> Path:
    return storage_home() / "cache" / name


@contextlib.contextmanager
def _digest_cache() -> Iterator[DigestCache]:
    cache = DigestCache(_cache_file("digests.sqlite"))
    try:
        yield cache
    finally:
        cache.close()


def same_store(a: str, b: str) -> bool:
    """Whether two `StorageClient.location()`s name the same bucket and namespace (or LOCAL folder), whatever
    address the bucket was reached at."""
    return a.split(" ")[0] == b.split(" ")[0]


def _saved_key() -> str | None:
    """The API key in the config file, to redact even when the settings around it fail to validate."""
    try:
        key = read_config_file().get("api_key")
    except Exception:
        return None
    return key if isinstance(key, str) else None
