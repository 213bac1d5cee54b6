"""Whether data on disk is exactly a stored version: an upload of it then sends nothing, a download of it fetches
nothing."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from . import stops
from .catalog import VersionRecord
from .digests import DigestCache, sha256_file
from .errors import StorageFailure
from .trees import Entries, Entry, Fingerprints, TreeDigest, batches, same_file_state, scan_tree, tree_fingerprints

log = logging.getLogger("fedml_storage")


class TreeState(NamedTuple):
    """A scanned folder's stat fingerprints and its own permission bits."""

    fingerprints: Fingerprints
    top_mode: int


def tree_state(src: Path, entries: Entries) -> TreeState:
    return TreeState(tree_fingerprints(entries), stat.S_IMODE(src.stat().st_mode) & 0o777)


def tree_holds(src: Path, entries: Entries, state: TreeState, record: VersionRecord | None,
               cache: DigestCache) -> bool:
    """Whether the folder `src` (scanned into `entries`, in `state`) holds exactly `record`'s files, folders and
    modes. Reads only files the digest cache does not know as they are."""
    fingerprint, modes, folder_modes = state.fingerprints
    same_shape = (
        record is not None and record.kind == "directory"
        and record.file_count == entries.files and record.source_size == entries.size
        # a mode change alone is a new version (None: stored before such modes were recorded)
        and record.modes in (None, modes) and record.folder_modes in (None, folder_modes)
        and record.top_mode in (None, state.top_mode)
    )
    if not same_shape:
        return False
    if cache.lookup_tree(str(src), fingerprint) == record.content_digest:
        return True  # nothing in the tree changed since it was last digested
    digest = digest_tree(entries, cache)
    cache.store_tree(str(src), fingerprint, digest, entries.newest)
    return digest == record.content_digest


def digest_tree(entries: Entries, cache: DigestCache) -> str:
    """The tree digest, reading only the files the digest cache does not know as they are."""
    tree = TreeDigest()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for part in batches(entries, 4096):
            paths = [None if e.is_dir else e.path for e in part]
            known = cache.lookup([(path, e) for path, e in zip(paths, part) if path is not None])
            missing = [(path, e) for path, e in zip(paths, part) if path is not None and path not in known]
            # a task per group of files, not per file: a future per small file cost more than hashing it
            hashing = [stops.submit(pool, _sha256_files, group) for group in _groups(missing)]  # each sees a stop
            try:
                fresh = [sha for h in hashing for sha in stops.result(h)]
            except BaseException:
                for h in hashing:
                    h.cancel()
                raise
            cache.store([(path, e, sha) for (path, e), sha in zip(missing, fresh)])
            known.update((path, sha) for (path, _), sha in zip(missing, fresh))
            tree.add((e, None if path is None else known[path]) for path, e in zip(paths, part))
    return tree.hexdigest()


def _groups(files: list[tuple[str, Entry]], most_files: int = 256, most_bytes: int = 16 << 20
            ) -> Iterator[list[str]]:
    """The files' paths in order, in groups of at most `most_files` files or about `most_bytes`."""
    group: list[str] = []
    size = 0
    for path, e in files:
        group.append(path)
        size += e.st_size
        if len(group) >= most_files or size >= most_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group


def _sha256_files(paths: list[str]) -> list[str]:
    return [sha256_file(path) for path in paths]


def holds_already(target: Path, record: VersionRecord, cache: DigestCache) -> bool:
    """Whether `target` (a download's dest_path/<name>) is exactly `record`'s data already: a plain file with its
    SHA-256, or a real folder holding its files, folders and modes and nothing else (no link either). Any doubt is
    False."""
    try:
        st = os.lstat(target)  # not through a link: a download puts a copy of its own there
        if record.kind == "file":
            if not stat.S_ISREG(st.st_mode) or st.st_size != record.source_size:
                return False
            path = str(target)
            digest = cache.lookup([(path, st)]).get(path) or sha256_file(target, size=st.st_size)
            if not same_file_state(os.lstat(target), st):  # written meanwhile
                return False
            cache.store([(path, st, digest)])
            return digest == record.content_digest
        if not stat.S_ISDIR(st.st_mode):
            return False
        tree = scan_tree(target)
        try:
            return not (tree.left_out or tree.links) and tree_holds(
                target, tree.entries, tree_state(target, tree.entries), record, cache)
        finally:
            tree.entries.close()
    except (OSError, StorageFailure) as exc:  # unreadable, changing, a broken link inside: fetched as usual
        log.debug("fetching %s again: %s", target, exc)
        return False
