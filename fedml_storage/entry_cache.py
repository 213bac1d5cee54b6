"""Catalog entries as last read, by key and ETag: a listing reads again only the entries whose ETag changed."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from .local_cache import LocalCache

log = logging.getLogger("fedml_storage")

MAX_ENTRIES = 50_000  # rows kept (the first stored forgotten first): a few KB each


class EntryCache(LocalCache):
    """Maps (a catalog entry's URI, its ETag) to its bytes. An ETag names one write of the object (the MD5 of its
    bytes on S3, R2 and MinIO), so bytes found under the ETag a listing gives are what a GET would give. Never fails
    a call: without it, entries are read as usual."""

    what = "catalog entry cache"

    def __init__(self, path: Path) -> None:
        super().__init__(path, "CREATE TABLE IF NOT EXISTS entries (uri TEXT PRIMARY KEY, etag TEXT, body BLOB)")

    def lookup(self, items: list[tuple[str, str]]) -> dict[str, bytes]:
        """The bytes kept of the given (uri, etag) pairs, by uri, where the ETag is still the one kept."""
        found: dict[str, bytes] = {}
        if self._db is None:
            return found
        wanted = dict(items)
        try:
            for start in range(0, len(items), 500):
                batch = items[start : start + 500]
                marks = ",".join("?" * len(batch))
                rows = self._db.execute(f"SELECT uri, etag, body FROM entries WHERE uri IN ({marks})",
                                        [uri for uri, _ in batch])
                found.update((uri, body) for uri, etag, body in rows if etag == wanted[uri])
        except sqlite3.Error as exc:
            log.debug("catalog entry cache lookup failed: %s", exc)
        return found

    def store(self, items: list[tuple[str, str, bytes]]) -> None:
        """Keep entries' bytes under the ETag each was read with."""
        self._put("INSERT INTO entries VALUES (?, ?, ?) ON CONFLICT(uri) DO UPDATE SET etag=excluded.etag, "
                  "body=excluded.body", items, "entries", MAX_ENTRIES)
