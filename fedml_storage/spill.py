"""Temporary files for what would otherwise grow in memory with the number of files in a folder, and memory as
the fallback when the temporary folder cannot take them (a full or missing $TMPDIR slows nothing, costs memory)."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator

log = logging.getLogger("fedml_storage")

_FLUSH = 1024 * 1024


def cannot_spill(what: str, exc: OSError) -> None:
    log.warning("cannot write %s to the temporary folder %s (%s); holding it in memory instead. Set TMPDIR to a "
                "folder with room to keep memory low", what, tempfile.gettempdir(), exc.strerror or exc)


class Spool:
    """Bytes written in order and read back at the end: in memory up to `limit`, then in a temporary file; back
    in memory if that file cannot take more (the temporary folder filled up)."""

    def __init__(self, limit: int, what: str) -> None:
        self._memory = io.BytesIO()
        self._disk: io.FileIO | None = None
        self._on_disk = 0  # bytes known to be in the file
        self._pending = bytearray()
        self._limit = limit
        self._what = what
        self._tried = False

    def write(self, data: bytes) -> None:
        if self._disk is not None:
            self._pending += data
            if len(self._pending) >= _FLUSH:
                self._flush()
            return
        self._memory.write(data)
        if not self._tried and self._memory.tell() > self._limit:
            self._to_disk()

    def blocks(self, size: int) -> Iterator[bytes]:
        """What was written, in blocks of up to `size` bytes."""
        if self._disk is not None:
            self._flush()
        source = self._disk if self._disk is not None else self._memory
        source.seek(0)
        while block := source.read(size):
            yield block

    def close(self) -> None:
        self._memory.close()
        if self._disk is not None:
            self._disk.close()

    def _to_disk(self) -> None:
        self._tried = True
        try:
            self._disk = tempfile.TemporaryFile(buffering=0)
        except OSError as exc:
            cannot_spill(self._what, exc)
            return
        self._pending += self._memory.getbuffer()
        self._memory = io.BytesIO()
        self._flush()

    def _flush(self) -> None:
        assert self._disk is not None
        data, self._pending = bytes(self._pending), bytearray()
        done = 0
        try:
            while done < len(data):
                done += os.write(self._disk.fileno(), data[done:])
        except OSError as exc:
            self._on_disk += done
            self._back_to_memory(exc, data[done:])
            return
        self._on_disk += done

    def _back_to_memory(self, exc: OSError, rest: bytes) -> None:
        disk, self._disk = self._disk, None
        assert disk is not None
        with disk:
            disk.seek(0)
            while self._memory.tell() < self._on_disk and (chunk := disk.read(self._on_disk - self._memory.tell())):
                self._memory.write(chunk)
        if self._memory.tell() != self._on_disk:
            raise OSError(f"the temporary file holding {self._what} lost data") from exc
        self._memory.write(rest)
        cannot_spill(self._what, exc)
