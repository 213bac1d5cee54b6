"""The catalog: one JSON manifest per name is the entry and the commit point of a dataset.

Layout under a namespace:  <ns>/manifests/<name>.json   and   <ns>/data/<name>/<version>/<file>.
Publish writes data under a fresh key, then the manifest (conditional write), then drops replaced data.
Delete removes the manifest first, then the data. Data no manifest points at is invisible and
removed by `catalog_cleanup.cleanup`.
"""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import random
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from .abandon import parallel_map
from .advice import LISTING
from .backends.base import ObjectMissing, ObjectStore
from .entry_cache import EntryCache
from .errors import (Changed, Conflict, IntegrityError, InvalidInput, NotConfigured, NotFound, PreconditionFailed,
                     TransientError)

log = logging.getLogger("fedml_storage")

FORMAT_VERSION = 1
DROPPED_REMEMBERED = 100  # dropped version ids a manifest remembers, so that waiting for one fails at once
COMMIT_ATTEMPTS = 12
KEPT_SHOWN = 5  # versions named in a "not kept" message (newest first)


def utc_now() -> str:
    """Current time as ISO-8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


PROBE_NAME = re.compile(r"[0-9a-f]{16}")  # what new_probe_key puts after the probe prefix
VERSION_ID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")  # what new_version_id makes


def malformed_version(version: object) -> str | None:
    """`version` as a refusal shows it (its repr, shortened) when it is no version id; None when it is one."""
    if isinstance(version, str) and VERSION_ID.fullmatch(version):
        return None
    given = repr(version)
    return given if len(given) <= 80 else given[:77] + "..."


def new_version_id() -> str:
    """Sortable, unique version id: UTC time plus randomness."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(4)


class VersionRecord(BaseModel):
    """One stored version of a dataset."""

    version: str
    key: str
    kind: Literal["file", "directory"]
    size: int  # bytes stored
    sha256: str  # of the stored bytes
    content_digest: str  # of the source: file sha256 or tree digest
    modes: str | None = None  # a folder's file modes (trees.Fingerprints.modes); None for files and earlier records
    folder_modes: str | None = None  # and its folders' modes (trees.Fingerprints.folder_modes), the same way
    top_mode: int | None = None  # a folder's own permission bits; None for files and earlier records
    source_size: int
    file_count: int
    created_at: str


class Manifest(BaseModel):
    """The catalog entry of one name; `versions[0]` is the current one."""

    format_version: int = FORMAT_VERSION
    name: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    user_metadata: dict[str, str] = Field(default_factory=dict)
    created_at: str
    updated_at: str
    versions: list[VersionRecord]
    dropped: list[str] = Field(default_factory=list)  # ids of versions no longer kept, latest dropped first

    @property
    def current(self) -> VersionRecord:
        return self.versions[0]

    def kept(self, version: str) -> VersionRecord | None:
        """The kept version `version`, if it is one."""
        return next((record for record in self.versions if record.version == version), None)

    def find(self, version: str | None) -> VersionRecord:
        """The requested version (current when None), or NotFound naming what is kept."""
        if version is None:
            return self.current
        if (record := self.kept(version)) is not None:
            return record
        shown = ", ".join(v.version for v in self.versions[:KEPT_SHOWN])
        kept = shown + (f" and {len(self.versions) - KEPT_SHOWN} older" if len(self.versions) > KEPT_SHOWN else "")
        if (given := malformed_version(version)) is not None:
            raise InvalidInput(f"{given} is not a version id of {self.name!r} (kept: {kept}); pass the `version` "
                               "an upload returned or get_storage_metadata shows, or none for the current one")
        raise NotFound(
            f"version {version!r} of {self.name!r} is not kept (never stored, or dropped: only the newest "
            f"keep_versions are kept; kept: {kept}); raise keep_versions to keep more, or download the current version"
        )


class Unread:
    """A manifest not read yet (`Catalog.commit` reads it)."""


UNREAD = Unread()


class Catalog:
    """Reads and commits manifests of one namespace in one store."""

    def __init__(self, store: ObjectStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        self.manifest_prefix = f"{namespace}/manifests/"
        self.data_prefix = f"{namespace}/data/"
        self.probe_prefix = f"{namespace}/probes/"  # store_check's objects: neither catalog nor data

    def manifest_key(self, name: str) -> str:
        return f"{self.manifest_prefix}{name}.json"

    def data_folder(self, name: str) -> str:
        return f"{self.data_prefix}{name}/"

    def data_key(self, name: str, version: str, filename: str) -> str:
        return f"{self.data_folder(name)}{version}/{filename}"

    def read(self, name: str) -> tuple[Manifest, str] | None:
        """The manifest and its etag, or None when the name is not stored."""
        found = self._read_parsed(name)
        return None if found is None else (found[0], found[2])

    def _read_parsed(self, name: str) -> tuple[Manifest, bytes, str] | None:
        """The manifest, its bytes and etag, or None when the name is not stored. An entry found unreadable is read
        once more before it is judged so: one damaged in transit (over plain http, say) reads whole again."""
        for again in (False, True):
            if (found := self._read_raw(name)) is None:
                return None
            try:
                return _parse(found[0], name, self.data_folder(name)), *found
            except IntegrityError:
                if again:
                    raise
        raise AssertionError("not reached: the second read returns or raises")

    def _read_raw(self, name: str) -> tuple[bytes, str] | None:
        try:
            return self.store.read_bytes(self.manifest_key(name))
        except ObjectMissing:
            return None

    def get(self, name: str) -> Manifest:
        """The manifest, or NotFound with advice."""
        found = self.read(name)
        if found is None:
            raise self._not_stored(name, LISTING)
        return found[0]

    def _not_stored(self, name: str, then: str) -> NotFound:
        """NotFound for `name`, naming similar names stored, followed by `then`."""
        similar = self.similar(name)
        return NotFound(f"no data named {name!r} in namespace {self.namespace!r} on {self.store.service}{similar}; "
                        f"{then}", similar)

    def similar(self, name: str) -> str:
        """A hint for a file's name given without its extension (a file keeps it when stored), or for a name stored
        in another Unicode form that looks the same (macOS writes file names decomposed); best effort."""
        try:
            for form in ("NFC", "NFD"):
                if (other := unicodedata.normalize(form, name)) != name and self._read_raw(other) is not None:
                    return f" (stored as {ascii(other)}: the same text in another Unicode form, {form}; pass that)"
            close = [other for other, _ in itertools.islice(self._listed(f"{name}."), 3)]
        except NotConfigured:  # no S3 API there (a web server's 404 page for every key): "not found" would be false
            raise
        except Exception:  # a hint must never turn "not found" into another failure
            return ""
        why = " a file keeps its extension" if any(map(self._a_file, close)) else ""  # a folder's is as given
        return f" (did you mean {' or '.join(map(repr, close))}?{why})" if close else ""

    def _a_file(self, name: str) -> bool:
        """Whether `name` is stored as a file (False when that cannot be read)."""
        try:
            return (found := self.read(name)) is not None and found[0].current.kind == "file"
        except Exception:  # for a hint only
            return False

    def commit(self, name: str, build: Callable[[Manifest | None], Manifest | None],
               known: tuple[Manifest, str] | None | Unread = UNREAD) -> tuple[Manifest, list[str]]:
        """Write `build(current)` only over the manifest it was built from; retried when another writer won.
        `build` returns None when `current` already holds what it would write (an earlier try that landed).
        `known`: the manifest and etag (or None: no manifest) the caller read earlier, for the first try (its write
        is conditional like any other: a change since is caught, then read).

        Returns the new manifest and the data keys it no longer references (to delete after).
        """
        for attempt in range(COMMIT_ATTEMPTS):
            found = self.read(name) if attempt or isinstance(known, Unread) else known
            current, etag = found if found else (None, None)
            manifest = build(current)
            if manifest is None:
                if current is None:
                    raise RuntimeError(f"nothing to write for {name!r} over no catalog entry")
                return current, []
            body = manifest.model_dump_json(indent=1).encode("utf-8")
            try:
                if etag is None:
                    self.store.write_bytes(self.manifest_key(name), body, if_absent=True)
                else:
                    self.store.write_bytes(self.manifest_key(name), body, if_match=etag)
            except PreconditionFailed:
                written = self._read_raw(name)
                if written is None or written[0] != body:
                    log.info("another writer updated %r first; retrying the commit (%d)", name, attempt + 1)
                    if attempt + 1 < COMMIT_ATTEMPTS:  # jittered and growing, so many writers of one name stop colliding
                        time.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** attempt)))
                    continue
                # our write went through and only its answer was lost: a retry of it then found it in place
            except TransientError:  # every attempt unanswered: it may still have landed
                if not self._holds(name, body):
                    raise
                log.warning("the answer to writing the catalog entry of %r was lost; it was written", name)
            kept = {v.key for v in manifest.versions}
            dropped = [v.key for v in (current.versions if current else []) if v.key not in kept]
            return manifest, dropped
        raise Conflict(f"{name!r} kept changing under concurrent writers; nothing of this upload was published, try again")

    def remove(self, name: str) -> Manifest | None:
        """Delete the manifest (the commit point) if unchanged since read, then its data; None when the manifest
        was unreadable. What another writer publishes meanwhile is kept: a delete removes only what it read."""
        found = self._read_raw(name)
        if found is None:
            raise self._not_stored(name, "nothing was deleted")
        raw, etag = found
        try:
            manifest = self._parsed_or_none(raw, name)  # unreadable: still deletable; its data goes at cleanup()
        except InvalidInput:  # another name's entry: a copy under this name, or a store that ignores case
            if self.manifest_key(name) not in {o.key for o in self.store.list(self.manifest_key(name))}:
                raise  # the store lists it under another name only: deleting would delete that dataset
            manifest = None  # a copy of another name's entry: removed alone, never that name's data
        keep: set[str] = set()
        try:
            self.store.delete(self.manifest_key(name), if_match=etag)
        except PreconditionFailed:
            if (now := self._read_raw(name)) is not None:
                current = self._parsed_or_none(now[0], name)
                # a re-upload keeps the first creation time; an entry created anew came after ours was gone
                if manifest is None or current is None or current.created_at == manifest.created_at:
                    raise Changed(f"nothing was deleted: another writer published {name!r} again while it was "
                                  "being deleted, and a delete removes only what it has read; delete again to "
                                  "delete what is stored now") from None
                log.warning("%r was published anew right after it was deleted; that stays", name)
                keep = {v.key for v in current.versions}
            # else gone: our delete went through and only its answer was lost (or another delete of it won)
        except TransientError:  # every attempt unanswered: it may still have gone through
            if not self._gone(name):
                raise
            log.warning("the answer to deleting the catalog entry of %r was lost; it is gone", name)
        if manifest is None:
            log.warning("deleted the unreadable catalog entry of %r; run cleanup() to remove its data", name)
        else:
            self.drop_data([v.key for v in manifest.versions if v.key not in keep])
        return manifest

    def _holds(self, name: str, body: bytes) -> bool:
        """Whether the catalog entry of `name` is now `body`, after a write whose answer was lost; False when that
        cannot be read either."""
        try:
            found = self._read_raw(name)
        except Exception:
            return False
        return found is not None and found[0] == body

    def _gone(self, name: str) -> bool:
        """Whether the catalog entry of `name` is gone, after a delete whose answer was lost: read and listed, so
        that one stray 404 never has its data dropped while the entry stays; False when that cannot be told."""
        key = self.manifest_key(name)
        try:
            return self._read_raw(name) is None and all(o.key != key for o in self.store.list(key))
        except Exception:
            return False

    def _parsed_or_none(self, raw: bytes, name: str) -> Manifest | None:
        """The manifest in `raw`, or None when it is unreadable."""
        try:
            return _parse(raw, name, self.data_folder(name))
        except IntegrityError:
            return None

    def drop_data(self, keys: list[str], *, cause: BaseException | None = None) -> None:
        """Best-effort removal of data no manifest references any more (cleanup catches the rest); `cause`: the
        failure of the upload that wrote it, which is reported."""
        if not keys:
            return
        try:
            failed = self.store.delete_many(keys)
        except Exception as exc:  # leftovers are invisible
            if isinstance(exc, NotConfigured) and isinstance(cause, NotConfigured):  # no store there: nothing stored
                log.debug("not removing %s: %s", keys[0], exc)
                return
            log.warning("could not remove unreferenced data (%s: %s); run cleanup() later to remove it",
                        type(exc).__name__, exc)
            return
        if failed:
            log.warning("could not remove %d unreferenced object(s) (e.g. %s); run cleanup() later", len(failed),
                        failed[0])

    def list(self, workers: int = 8, prefix: str = "", cache: EntryCache | None = None) -> list[Manifest]:
        """Every readable manifest in the namespace whose name starts with `prefix`, sorted by name; unreadable ones
        are logged and skipped. Given the entry `cache`, only entries whose ETag changed since are read."""
        manifests, unreadable = self.scan(workers, prefix, cache)
        for name, why in unreadable.items():
            log.warning("skipping %r: %s", name, why)
        return manifests

    def _listed(self, starting: str) -> Iterator[tuple[str, str | None]]:
        """(name, its manifest's ETag, None where the store gives none) of the names that start with `starting`."""
        for o in self.store.list(self.manifest_prefix + starting):
            rel = o.key[len(self.manifest_prefix) :]
            # the store matched `starting` against '<name>.json': 'mnist.' picked 'mnist.json', not a name for it
            if rel.endswith(".json") and "/" not in rel and rel[: -len(".json")].startswith(starting):
                yield rel[: -len(".json")], o.etag

    def scan(self, workers: int = 8, prefix: str = "", cache: EntryCache | None = None
             ) -> tuple[builtins.list[Manifest], dict[str, str]]:
        """The readable manifests (of names starting with `prefix`), and why each other name could not be read.
        Entries the `cache` holds under the ETag listed are not read again; those read are kept in it."""
        listed = dict(self._listed(prefix))  # name: ETag
        uris = {name: self.store.uri(self.manifest_key(name)) for name in listed}
        kept = cache.lookup([(uris[name], etag) for name, etag in listed.items() if etag]) if cache else {}
        read: dict[str, tuple[bytes, str]] = {}

        def one(name: str) -> Manifest | tuple[str, str] | None:
            if (raw := kept.get(uris[name])) is not None:
                try:
                    return _parse(raw, name, self.data_folder(name))
                except Exception:  # a damaged cache row: the store's own bytes decide (and replace it)
                    pass
            try:
                if (found := self._read_parsed(name)) is None:
                    return None  # deleted while listing
            except (IntegrityError, InvalidInput) as exc:  # says why: a newer format wants an upgrade, not a delete
                return name, str(exc)
            except PermissionError:  # a shared LOCAL store where another user's entry is private to them
                return name, "you may not read its catalog entry; its owner can make it readable (chmod a+r)"
            read[name] = found[1:]
            return found[0]

        results = [r for r in parallel_map(one, list(listed), workers, "fedml-storage-list") if r is not None]
        if cache:  # where the store lists ETags (S3, not LOCAL), under the one each entry was read with
            cache.store([(uris[name], etag, raw) for name, (raw, etag) in read.items() if listed[name] and etag])
        manifests = sorted((r for r in results if isinstance(r, Manifest)), key=lambda m: m.name)
        return manifests, dict(sorted(r for r in results if isinstance(r, tuple)))

    def new_probe_key(self) -> str:
        """A fresh key for a store check's probe object, of the shape cleanup() removes when left behind."""
        return f"{self.probe_prefix}{secrets.token_hex(8)}"


def _parse(raw: bytes, name: str, own: str) -> Manifest:
    """The manifest of `name` in `raw`, whose data must lie in its data folder `own`."""
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (ValueError, ValidationError):
        raise IntegrityError(f"the catalog entry of {name!r} is unreadable; delete({name!r}) removes it, then upload again") from None
    if manifest.format_version > FORMAT_VERSION:
        raise IntegrityError(f"{name!r} was written by a newer fedml-storage (format {manifest.format_version}); upgrade")
    if manifest.name != name:  # a store that ignores case or Unicode normalization gave another name's entry
        raise InvalidInput(f"the catalog entry read for {name!r} is that of {manifest.name!r}: the store does not "
                           "tell the two names apart (a file system that ignores case, as macOS's and Windows' do by "
                           f"default), or the entry was copied by hand (delete({name!r}) removes such a copy alone); "
                           f"nothing was changed. Use {manifest.name!r} for that dataset, or another name for a new "
                           "one")
    if not manifest.versions:
        raise IntegrityError(f"the catalog entry of {name!r} lists no data; delete it and upload again")
    for record in manifest.versions:  # a delete or a re-upload removes what is listed here: only this name's data
        parts = record.key[len(own):].split("/")
        if not record.key.startswith(own) or any(part in ("", ".", "..") for part in parts):
            raise IntegrityError(f"the catalog entry of {name!r} names data outside {own} ({record.key!r}); "
                                 f"fedml-storage did not write it so: delete({name!r}) removes that entry alone")
    return manifest
