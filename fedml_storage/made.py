"""What a download made: the state fingerprint of a folder as it is written, to tell later that it is unchanged."""

from __future__ import annotations

import hashlib
import os

from . import trees
from .trees import Entry, state_line, state_of


class MadeTree:
    """The state fingerprint of a folder as a download writes it, to tell once it is in place without a scan: the
    files' lines hashed as they come (an archive fedml-storage wrote holds them in path order), the folders' kept
    (their stats are taken once their modes are set, at the end). Files out of order (an archive written by
    another tool), or more than HELD folders, and it gives up: such a tree is checked by its digests."""

    def __init__(self) -> None:
        self.kept = True
        self.newest = 0  # the latest mtime or ctime, in ns
        self._files = hashlib.sha256()
        self._pending: list[str] = []  # file lines not yet hashed: one update per batch costs less than per line
        self._last: str | None = None
        self._folders: list[str] = []

    def add(self, rel: str, st: os.stat_result | Entry, is_dir: bool) -> None:
        if not self.kept:
            return
        if is_dir:
            self.kept = len(self._folders) < trees.HELD
            self._folders.append(state_line(rel, st, True))
        else:
            self.kept = self._last is None or rel > self._last
            self._last = rel
            self._pending.append(state_line(rel, st, False))
            if len(self._pending) >= 4096:
                self._flush()
        self.newest = max(self.newest, st.st_mtime_ns, st.st_ctime_ns)

    def _flush(self) -> None:
        self._files.update("".join(self._pending).encode("utf-8", "surrogateescape"))
        self._pending = []

    def state(self) -> str | None:
        """The state fingerprint tree_fingerprints gives of the same tree, if it was kept."""
        if not self.kept:
            return None
        self._flush()
        folders = hashlib.sha256("".join(sorted(self._folders)).encode("utf-8", "surrogateescape"))
        return state_of(self._files.hexdigest(), folders.hexdigest())
