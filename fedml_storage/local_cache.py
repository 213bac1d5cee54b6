"""The user's caches (SQLite files in the cache folder): a call never fails for one, it goes on without it."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger("fedml_storage")


class LocalCache:
    """One SQLite file of tables made by `schema`; an error of it (a read-only home, a full disk) is logged at DEBUG
    and the call goes on as if nothing were cached."""

    what = "cache"  # as the debug log names it

    def __init__(self, path: Path, *schema: str) -> None:
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # they hold paths and catalog entries:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))  # this user's alone (SQLite's journal follows)
            with contextlib.suppress(OSError):  # made readable to others by an earlier release
                os.chmod(path, 0o600)
            self._db = sqlite3.connect(str(path), timeout=5, check_same_thread=False)
            for statement in schema:
                self._db.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            log.debug("%s disabled: %s", self.what, exc)
            self.close()

    def _put(self, sql: str, rows: list[tuple], table: str, keep: int) -> None:
        """Write `rows` with `sql`, then keep the `keep` rows of `table` stored last."""
        if self._db is None or not rows:
            return
        try:
            with self._db:
                self._db.executemany(sql, rows)
                trim(self._db, table, keep)
        except sqlite3.Error as exc:
            log.debug("%s update failed: %s", self.what, exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def trim(db: sqlite3.Connection, table: str, keep: int) -> None:
    """Drop all but the `keep` rows first stored most recently. Updates keep a row's rowid and only trimming deletes,
    oldest first, so rowids have no gaps below the newest and the span is the count."""
    db.execute(f"DELETE FROM {table} WHERE rowid <= (SELECT MAX(rowid) FROM {table}) - ?", (keep,))
