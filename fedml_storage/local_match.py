"""Whether data on disk is exactly a stored version: an upload of it then sends nothing."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from . import stops
from .catalog import VersionRecord
from .digests import DigestCache, sha256_file
from .trees import Entries, Fingerprints, TreeDigest, batches, tree_fingerprints


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
            hashing = [stops.submit(pool, sha256_file, path) for path, _ in missing]  # in context: each sees a stop
            try:
                fresh = [stops.result(h) for h in hashing]
            except BaseException:
                for h in hashing:
                    h.cancel()
                raise
            cache.store([(path, e, sha) for (path, e), sha in zip(missing, fresh)])
            known.update((path, sha) for (path, _), sha in zip(missing, fresh))
            tree.add((e, None if path is None else known[path]) for path, e in zip(paths, part))
    return tree.hexdigest()
