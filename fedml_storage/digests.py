"""SHA-256 of files, with a stat-keyed cache so unchanged data is not read again."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from . import stops
from .errors import size_not_content
from .local_cache import LocalCache
from .modes import open_plain
from .trees import Entry

log = logging.getLogger("fedml_storage")

CHUNK = 4 * 1024 * 1024
RACY_SECONDS = 2.0  # a file written this recently may still change within one mtime tick
# The cache forgets the rows first stored longest ago past these counts: pipelines that upload from a fresh temp
# folder each run would otherwise grow it for ever (about 250 bytes a file on disk).
MAX_FILES = 1_000_000
MAX_TREES = 10_000


def sha256_file(path: Path | str, stop: threading.Event | None = None, size: int | None = None) -> str:
    """Hex SHA-256 of a file's bytes ("" when `stop` is set before the end). Given the `size` its stat said, a file
    that still says so but gave other bytes is refused (a file being written is the caller's to notice)."""
    digest = hashlib.sha256()
    read = 0
    with open_plain(path) as fh:
        while chunk := fh.read(CHUNK):
            if stop is not None and stop.is_set():
                return ""
            stops.check()
            digest.update(chunk)
            read += len(chunk)
        if size is not None and read != size and os.fstat(fh.fileno()).st_size == size:
            raise size_not_content(path, read, size)
    return digest.hexdigest()


class DigestCache(LocalCache):
    """Maps (path, size, mtime, ctime, inode) to a file's SHA-256, as git's index does. Never fails a transfer."""

    what = "digest cache"

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            "CREATE TABLE IF NOT EXISTS file_digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " ctime_ns INTEGER, ino INTEGER, sha256 TEXT)",
            "CREATE TABLE IF NOT EXISTS trees (root TEXT PRIMARY KEY, fingerprint TEXT, digest TEXT)",
            "DROP TABLE IF EXISTS digests",  # the cache of earlier versions, keyed without ctime
        )

    def lookup(self, items: list[tuple[str, os.stat_result | Entry]]) -> dict[str, str]:
        """Cached digests for the given (absolute path, stat) pairs whose stat still matches."""
        if self._db is None or not items:
            return {}
        found: dict[str, str] = {}
        try:
            for start in range(0, len(items), 500):
                batch = dict(items[start : start + 500])
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(
                    f"SELECT path, size, mtime_ns, ctime_ns, ino, sha256 FROM file_digests WHERE path IN ({marks})",
                    list(batch),
                )
                for path, size, mtime_ns, ctime_ns, ino, sha in rows:
                    st = batch[path]
                    if (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (size, mtime_ns, ctime_ns, ino):
                        found[path] = sha
        except sqlite3.Error as exc:
            log.debug("digest cache lookup failed: %s", exc)
        return found

    def store(self, items: list[tuple[str, os.stat_result | Entry, str]], *, settled: bool = False) -> None:
        """Remember digests, except for files changed too recently to trust their times (`settled`: the caller saw
        the filesystem's clock pass them)."""
        if self._db is None:
            return
        horizon = float("inf") if settled else (time.time() - RACY_SECONDS) * 1e9
        rows = [(p, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha) for p, st, sha in items
                if max(st.st_mtime_ns, st.st_ctime_ns) < horizon]
        self._put("INSERT INTO file_digests VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET"
                  " size=excluded.size, mtime_ns=excluded.mtime_ns, ctime_ns=excluded.ctime_ns, ino=excluded.ino,"
                  " sha256=excluded.sha256", rows, "file_digests", MAX_FILES)

    def lookup_tree(self, root: str, fingerprint: str) -> str | None:
        """The cached tree digest of `root` if its stat fingerprint is unchanged."""
        if self._db is None:
            return None
        try:
            row = self._db.execute("SELECT fingerprint, digest FROM trees WHERE root = ?", (root,)).fetchone()
        except sqlite3.Error as exc:
            log.debug("digest cache lookup failed: %s", exc)
            return None
        return row[1] if row and row[0] == fingerprint else None

    def store_tree(self, root: str, fingerprint: str, digest: str, newest_mtime_ns: int, *,
                   settled: bool = False) -> None:
        """Remember a tree digest, unless a file in it changed too recently to trust its times (`settled`: the
        caller saw the filesystem's clock pass them all before anyone else could write there)."""
        if not settled and newest_mtime_ns >= (time.time() - RACY_SECONDS) * 1e9:
            return
        self._put("INSERT INTO trees VALUES (?, ?, ?) ON CONFLICT(root) DO UPDATE SET fingerprint=excluded.fingerprint,"
                  " digest=excluded.digest", [(root, fingerprint, digest)], "trees", MAX_TREES)
