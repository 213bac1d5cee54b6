"""Temporary files for what would otherwise grow in memory with the number of files in a folder, and memory as
the fallback when the temporary folder cannot take them (a full or missing $TMPDIR slows nothing, costs memory)."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator

log = logging.getLogger("fedml_storage")


def cannot_spill(what: str, exc: OSError) -> None:
    log.warning("cannot write %s to the temporary folder %s (%s); holding it in memory instead. Set TMPDIR to a "
                "folder with room to keep memory low", what, tempfile.gettempdir(), exc.strerror or exc)


class Spool:
    """Bytes written in order and read back at the end: in memory up to `limit`, then in a temporary file."""

    def __init__(self, limit: int, what: str) -> None:
        self._file: io.BufferedRandom | io.BytesIO = io.BytesIO()
        self._limit = limit
        self._what = what
        self._tried = False

    def write(self, data: bytes) -> None:
        if not self._tried and self._file.tell() + len(data) > self._limit:
            self._to_disk()
        self._file.write(data)

    def blocks(self, size: int) -> Iterator[bytes]:
        """What was written, in blocks of up to `size` bytes."""
        self._file.seek(0)
        while block := self._file.read(size):
            yield block

    def close(self) -> None:
        self._file.close()

    def _to_disk(self) -> None:
        self._tried = True
        try:
            disk = tempfile.TemporaryFile()
        except OSError as exc:
            cannot_spill(self._what, exc)
            return
        try:
            disk.write(self._file.getbuffer())
        except OSError as exc:
            disk.close()
            cannot_spill(self._what, exc)
            return
        self._file = disk
