"""Publishing a file or directory: digest, skip if unchanged, stream data, commit the manifest."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

from . import stops
from .abandon import Helpers
from .archive import HashingWriter, write_zip
from .catalog import DROPPED_REMEMBERED, UNREAD, Catalog, Manifest, VersionRecord, new_version_id, utc_now
from .config import StorageSettings
from .digests import DigestCache, sha256_file
from .errors import Conflict, InvalidInput, SourceChanged, StorageFailure, TransientError
from .ignores import IgnoreRules, check_ignore_patterns
from .local_match import tree_holds, tree_state
from .own import check_source, own_paths
from .progress import UPLOAD_DESC, progress_bar
from .results import UploadResult
from .streams import BoundedPipe, PipeAborted
from .trees import Entries, Entry, Tree, TreeDigest, same_file_state, scan_tree
from .naming import stored_name
from .validation import check_description, check_metadata, check_path, check_progress_desc, check_tags
from .zipformat import size_bound

log = logging.getLogger("fedml_storage")
# A catalog entry read this recently is what the commit writes over (If-Match, as always): one round trip less for
# small uploads. Older, it is read again: on a store that ignores If-Match, a writer in between would be lost.
FRESH_READ_SECONDS = 1.0


@dataclass
class UploadRequest:
    """An upload's arguments as the caller gave them (checked by `upload`)."""

    data_path: object
    name: str | None = None
    description: str | None = None
    metadata: dict | None = None
    tag_list: list | None = None
    show_progress: bool = False
    out_progress_to_err: bool = True
    progress_desc: str | None = None
    ignore_patterns: object = None


def _source(data_path: object) -> Path:
    src = check_path(data_path, "data_path must be the path of a file or directory")
    if not src.exists():
        if src.is_symlink():
            raise InvalidInput(f"data_path {str(src)!r} is a broken link (to {os.readlink(src)!r}); fix its target "
                               "or give the path of the data itself")
        raise InvalidInput(f"data_path {str(src)!r} does not exist; check the path")
    if not (src.is_file() or src.is_dir()):
        raise InvalidInput(f"data_path {str(src)!r} is neither a regular file nor a directory")
    return src


def upload(req: UploadRequest, settings: StorageSettings, catalog: Catalog, cache: DigestCache) -> UploadResult:
    """Publish `req.data_path` under its stored name; nothing is sent when the content is unchanged."""
    started = time.monotonic()
    src = _source(req.data_path)
    own = own_paths(settings)
    check_source(src, own, settings.namespace)
    name = stored_name(src, req.name)
    fields = _Fields(check_description(req.description), check_tags(req.tag_list), check_metadata(req.metadata))
    check_progress_desc(req.progress_desc)
    ignore = check_ignore_patterns(req.ignore_patterns)
    if ignore is not None and src.is_file() and ignore.ignores(src.name, False):
        raise InvalidInput(f"ignore_patterns leave out {src.name!r}, the file given as data_path: nothing was "
                           "uploaded; check the patterns or the path")
    read_at = time.monotonic()
    tree, (found, intact, lost) = _scan_and_read(src, catalog, name, ignore, own)
    if lost is not None:  # said here, in the caller's thread, where a framework's log handler looks
        log.warning("the stored data of %r version %s is missing or damaged; it will be uploaded again", name, lost)
    current = found[0].current if found and intact else None  # lost data is sent again, even if unchanged
    desc = req.progress_desc or UPLOAD_DESC

    if tree is None:
        record, data_key = _file(src, name, catalog, cache, current, req, desc)
    else:
        try:
            record, data_key = _directory(src, tree.entries, name, settings, catalog, cache, current, req, desc)
        finally:
            tree.entries.close()
    skipped = data_key is None

    tries = 0
    final = record  # what this upload published (another may already stand on top of it)
    updated: list[str] = []  # the fields a skipped upload wrote over, in the entry it wrote over

    def build(cur: Manifest | None) -> Manifest | None:
        nonlocal tries, final, updated
        tries += 1
        if tries > 1 and data_key is not None and _landed(catalog, cur, name, data_key):
            return None  # a try whose answer was lost landed (and may have been built upon): nothing more to write
        if tries == 1 or data_key is not None:  # the last point where a stopped upload can still not publish
            stops.check()  # (a metadata-only retry cannot tell whether its first try landed: it goes on)
        manifest, final = _next_manifest(cur, name, record, skipped, fields, settings.keep_versions)
        updated = fields.changed(cur) if skipped else []
        return manifest

    dropped: list[str] = []
    try:
        if not (skipped and found is not None and not fields.changed(found[0])):  # a no-op upload writes nothing
            recent = time.monotonic() - read_at < FRESH_READ_SECONDS
            _, dropped = catalog.commit(name, build, found if recent else UNREAD)
    except BaseException as exc:
        if data_key is not None and (isinstance(exc, Conflict) or not _maybe_published(catalog, name, data_key)):
            catalog.drop_data([data_key], cause=exc)  # never published: invisible, but do not leave it
        raise
    catalog.drop_data(dropped)
    return UploadResult(
        catalog.store.uri(final.key), name=name, uri=catalog.store.uri(final.key), version=final.version,
        sha256=final.sha256, content_digest=final.content_digest, size=final.size, source_size=final.source_size,
        file_count=final.file_count, kind=final.kind, skipped=skipped, seconds=round(time.monotonic() - started, 3),
        service=settings.service, namespace=catalog.namespace, left_out=tree.left_out if tree else [],
        ignored=tree.ignored if tree else 0, updated=updated,
    )


@dataclass(frozen=True)
class _Fields:
    """The catalog fields an upload sets; None keeps what is stored."""

    description: str | None
    tags: list[str] | None
    metadata: dict | None

    def changed(self, stored: Manifest | None) -> list[str]:
        """The fields `stored` does not hold already (all given ones when nothing is stored)."""
        return [field for field, new, old in (
            ("description", self.description, stored and stored.description),
            ("tags", self.tags, stored and stored.tags),
            ("metadata", self.metadata, stored and stored.user_metadata),
        ) if new is not None and (stored is None or new != old)]


def _scan_and_read(src: Path, catalog: Catalog, name: str, ignore: IgnoreRules | None, own: tuple[Path, ...]
                   ) -> tuple[Tree | None, tuple[tuple[Manifest, str] | None, bool, str | None]]:
    """The folder's scan (None for a file) and `_read_stored`'s answer, whose round trips overlap the scan."""
    helpers = Helpers()
    tree = None
    try:
        reading = stops.submit_daemon(helpers.job(_read_stored), catalog, name, name="fedml-storage-read")
        tree = None if src.is_file() else scan_tree(src, ignore, own)
        if tree is not None and tree.ignored and not tree.entries.files:
            raise InvalidInput(f"ignore_patterns left out {tree.ignored} item(s) of {str(src)!r} and no file remains: "
                               "nothing was uploaded; check the patterns")
        if tree is not None and tree.left_out and not tree.entries.members:  # it would store an empty folder
            raise InvalidInput(f"{str(src)!r} holds no file or folder to upload, only what is not data: "
                               f"{', '.join(tree.left_out[:5])}{', ...' if len(tree.left_out) > 5 else ''} (FIFOs, "
                               "sockets, devices, fedml-storage's own files, links to a folder held already); nothing "
                               "was uploaded: upload the folder that holds your data")
        if tree is not None and not tree.entries.files:  # legal, but often an upstream step that wrote nothing
            log.warning("%s holds no file (%s): it is stored as a dataset without data; if a step before this one "
                        "should have written files there, it did not", src,
                        f"only {tree.entries.members} folder(s)" if tree.entries.members else "it is empty")
        stored = stops.result(reading)
    except BaseException:
        # Not waiting for the read: a task timeout (raised here) must not wait for a stuck request to time out
        helpers.give_up()
        if tree is not None:
            tree.entries.close()
        raise
    return tree, stored


def _landed(catalog: Catalog, cur: Manifest | None, name: str, data_key: str) -> bool:
    """On a commit's retry: whether the try whose answer was lost published `data_key`. Conflict when another
    upload has replaced it meanwhile and removed its data."""
    if cur is not None and any(v.key == data_key for v in cur.versions):
        return True
    if catalog.store.head(data_key) is None:
        raise Conflict(f"{name!r} was published and at once replaced by another upload, which removed this "
                       "one's data; upload again if this one should be current")
    return False


def _next_manifest(cur: Manifest | None, name: str, record: VersionRecord, skipped: bool, fields: _Fields,
                   keep_versions: int) -> tuple[Manifest, VersionRecord]:
    """The manifest that publishes `record` over `cur` (or, `skipped`, only updates its fields), and the version it
    makes current."""
    if skipped and (cur is None or _content(cur.current) != _content(record)):
        raise Conflict(f"{name!r} was changed by another writer during this upload; try again")
    now = utc_now()
    versions = cur.versions if skipped and cur else [record, *(cur.versions if cur else [])]
    keep = len(versions) if skipped else keep_versions  # only a content change drops versions
    dropped = [v.version for v in versions[keep:]] + (cur.dropped if cur else [])
    manifest = Manifest(
        name=name,
        description=fields.description if fields.description is not None else (cur.description if cur else ""),
        tags=fields.tags if fields.tags is not None else (cur.tags if cur else []),
        user_metadata=fields.metadata if fields.metadata is not None else (cur.user_metadata if cur else {}),
        created_at=cur.created_at if cur else now,
        updated_at=now,
        versions=versions[:keep],
        dropped=dropped[:DROPPED_REMEMBERED],
    )
    # skipped: the same content, maybe published again meanwhile as another version: the one written on
    return manifest, cur.current if skipped and cur else record


def _read_stored(catalog: Catalog, name: str) -> tuple[tuple[Manifest, str] | None, bool, str | None]:
    """The stored manifest (and etag), whether its current data is still in the store at its size, and the version
    whose data was found missing or damaged (None when none was)."""
    found = catalog.read(name)
    for _ in range(3):
        if found is None:
            return None, False, None
        current = found[0].current
        try:
            info = catalog.store.head(current.key)
        except (StorageFailure, TransientError):  # e.g. a key that may not read data: cannot tell, trust the catalog
            return found, True, None
        if info is not None and info.size == current.size:
            return found, True, None
        again = catalog.read(name)  # replaced or deleted since it was read? then judge what is there now
        if again is not None and again[1] == found[1]:
            return found, False, current.version
        found = again
    return found, False, None


def _changed(src: Path, st: os.stat_result) -> bool:
    """Whether the file at `src` is no longer the one `st` describes (written, replaced, removed)."""
    try:
        return not same_file_state(os.stat(src), st)
    except OSError:
        return True


def _changed_error(src: Path) -> SourceChanged:
    return SourceChanged(f"{src} changed while it was being uploaded; nothing was published, upload it again once "
                         "it is no longer being written")


def _content(record: VersionRecord) -> tuple[str, str | None, str | None, int | None]:
    """What a version holds, as far as a download gives it back."""
    return record.content_digest, record.modes, record.folder_modes, record.top_mode


def _maybe_published(catalog: Catalog, name: str, data_key: str) -> bool:
    """After a failed commit: could the manifest point at `data_key`? (A write may succeed and still report
    a transport error.) When that cannot be ruled out the data stays; cleanup() removes it if unreferenced."""
    try:
        found = catalog.read(name)
    except Exception:
        return True
    return found is not None and any(v.key == data_key for v in found[0].versions)


def _record(data_key: str, version: str, kind: Literal["file", "directory"], size: int, sha256: str, digest: str,
            source_size: int, count: int, modes: str | None = None, folder_modes: str | None = None,
            top_mode: int | None = None) -> VersionRecord:
    return VersionRecord(version=version, key=data_key, kind=kind, size=size, sha256=sha256, content_digest=digest,
                         modes=modes, folder_modes=folder_modes, top_mode=top_mode, source_size=source_size,
                         file_count=count, created_at=utc_now())


# Files up to this size are hashed before they are sent, not beside: a /sys file that says 4096 bytes and gives fewer
# kept an S3 PUT waiting for the rest (read_timeout x max_attempts) and then looked like a network failure.
HASH_FIRST = 8 << 20


def _file(src: Path, name: str, catalog: Catalog, cache: DigestCache, current: VersionRecord | None,
          req: UploadRequest, desc: str) -> tuple[VersionRecord, str | None]:
    """The file's version record and its new data key; the current record and None when its content is unchanged."""
    st = src.stat()
    path = str(src)
    digest = cache.lookup([(path, st)]).get(path)
    same_shape = current is not None and current.kind == "file" and current.source_size == st.st_size
    if digest is None and (same_shape or st.st_size <= HASH_FIRST):
        try:  # likely unchanged, or small: read once before sending
            digest = sha256_file(src, size=st.st_size)
        except InvalidInput:
            if _changed(src, st):  # rewritten meanwhile, not a /proc-like file
                raise _changed_error(src) from None
            raise
        cache.store([(path, st, digest)])
    if digest is not None and same_shape and current is not None and current.content_digest == digest:
        return current, None
    version = new_version_id()
    key = catalog.data_key(name, version, name)
    with progress_bar(st.st_size, req.show_progress, req.out_progress_to_err, desc) as advance:
        with ThreadPoolExecutor(1) as pool:
            stop = threading.Event()
            hashing = stops.submit(pool, sha256_file, src, stop, st.st_size) if digest is None else None
            try:
                catalog.store.put_file(key, src, advance)
                digest = stops.result(hashing) if hashing else digest  # in here: a file it refuses is not kept either
            except BaseException as exc:
                stop.set()  # no use for the digest now: Ctrl-C need not wait for the rest of the file to be read
                catalog.drop_data([key], cause=exc)  # never published; an interrupted transfer may have completed it
                if isinstance(exc, Exception) and _changed(src, st):  # the cause, whatever the transfer made of it
                    raise _changed_error(src) from None
                raise
    if _changed(src, st):
        catalog.drop_data([key])
        raise _changed_error(src)
    assert digest is not None  # hashed before the transfer or beside it
    cache.store([(path, st, digest)])
    return _record(key, version, "file", st.st_size, digest, digest, st.st_size, 1), key


def _directory(src: Path, entries: Entries, name: str, settings: StorageSettings, catalog: Catalog,
               cache: DigestCache, current: VersionRecord | None, req: UploadRequest, desc: str
               ) -> tuple[VersionRecord, str | None]:
    """The folder's version record and the key of its new zip; the current record and None when unchanged."""
    state = tree_state(src, entries)
    if current is not None and tree_holds(src, entries, state, current, cache):
        return current, None
    version = new_version_id()
    key = catalog.data_key(name, version, name + ".zip")
    pipe = BoundedPipe(limit=max(settings.part_size, 8 << 20))
    writer = HashingWriter(cast(BinaryIO, pipe))  # written in order only: the pipe needs no file's methods
    recorder = _Recorder(cache)

    def produce() -> None:
        try:
            write_zip(entries, writer, settings.compression, advance, recorder)
            recorder.flush()
            pipe.close()  # in here: its last push fails too once the reader is gone
        except BaseException as exc:
            pipe.fail(exc)
            raise

    with progress_bar(entries.size, req.show_progress, req.out_progress_to_err, desc) as advance:
        with ThreadPoolExecutor(1) as pool:
            zipping = stops.submit(pool, produce)
            try:
                catalog.store.put_stream(key, pipe, size_bound=size_bound(entries.size, entries.members,
                                                                           entries.name_chars))
            except PipeAborted as exc:
                _ = zipping.exception()
                catalog.drop_data([key])
                cause = exc.__cause__
                if isinstance(cause, StorageFailure):  # said for the user: bad input, a source written meanwhile
                    raise cause from None
                raise InvalidInput(f"could not pack {src} ({type(cause).__name__}: {cause}); "
                                   "nothing was published") from None
            except BaseException as exc:
                pipe.close_reader()
                catalog.drop_data([key], cause=exc)  # never published; an interrupted transfer may have completed it
                raise
            zipping.result()
    digest = recorder.tree.hexdigest()
    fingerprint, modes, folder_modes = state.fingerprints
    cache.store_tree(str(src), fingerprint, digest, entries.newest)
    record = _record(key, version, "directory", writer.size, writer.sha256.hexdigest(), digest, entries.size,
                     entries.files, modes, folder_modes, state.top_mode)
    return record, key


class _Recorder:
    """Takes each packed entry's digest into the tree digest and the digest cache, a batch at a time, so neither
    waits for the whole tree in memory."""

    def __init__(self, cache: DigestCache) -> None:
        self.tree = TreeDigest()
        self._cache = cache
        self._batch: list[tuple[Entry, str | None]] = []

    def __call__(self, e: Entry, sha: str | None) -> None:
        self._batch.append((e, sha))
        if len(self._batch) >= 4096:
            self.flush()

    def flush(self) -> None:
        self.tree.add(self._batch)
        self._cache.store([(e.path, e, sha) for e, sha in self._batch if sha is not None])
        self._batch = []
