"""s3transfer's side of uploads: which files it may read and how, its progress and end, waiting for it."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import IO, Any, BinaryIO

from s3transfer.futures import TransferFuture
from s3transfer.subscribers import BaseSubscriber
from s3transfer.utils import OSUtils, ReadFileChunk

from .. import stops
from ..errors import SourceChanged
from ..modes import open_plain
from .base import Progress as ProgressCallback

STOPPING_SAID_AFTER = 0.5  # seconds an interrupted upload's requests in flight may take before it says it waits

log = logging.getLogger("fedml_storage")


class PlainFiles(OSUtils):
    """s3transfer's file access, opening only plain files: one replaced by a FIFO during the upload fails it
    instead of waiting for a writer for ever."""

    def open_file_chunk_reader(self, filename: str, start_byte: int, size: int, callbacks: list) -> ReadFileChunk:
        f = open_plain(filename)
        try:
            now = os.fstat(f.fileno()).st_size
            if start_byte and start_byte >= now:  # a part past its end: it shrank
                raise _shrank(filename)
            f.seek(start_byte)
            return _WholePart(f, size, now, callbacks, enable_callbacks=False)
        except BaseException:
            f.close()
            raise

    def open_file_chunk_reader_from_fileobj(self, fileobj: BinaryIO, chunk_size: int, full_file_size: int,
                                            callbacks: list, close_callbacks: list | None = None) -> ReadFileChunk:
        # the part's length is the file's when the upload began: what is read must come up to it
        return _WholePart(fileobj, chunk_size, full_file_size, callbacks, enable_callbacks=False,
                          close_callbacks=close_callbacks)

    def open(self, filename: str, mode: str) -> IO:
        return open_plain(filename) if mode == "rb" else super().open(filename, mode)


class _WholePart(ReadFileChunk):
    """A part of a file to upload that fails at once when the file comes short of it (cut or replaced meanwhile),
    instead of sending less than the length it declared and waiting for the store, read_timeout x max_attempts."""

    def read(self, amount: int | None = None) -> bytes:
        left = max(self._size - self._amount_read, 0)
        wanted = left if amount is None or amount < 0 else min(left, amount)
        data = super().read(amount)
        if len(data) < wanted:
            raise _shrank(getattr(self._fileobj, "name", None) or "the file")
        return data


def _shrank(filename: object) -> SourceChanged:
    return SourceChanged(f"{filename} became shorter while it was being uploaded; nothing was published, upload it "
                         "again once it is no longer being written")


class Progress(BaseSubscriber):
    """Passes s3transfer's progress on to the caller's callback."""

    def __init__(self, progress: ProgressCallback) -> None:
        self._progress = progress

    def on_progress(self, bytes_transferred: int, **kwargs: Any) -> None:
        self._progress(bytes_transferred)


class Done(BaseSubscriber):
    """Sets an event when the transfer ends, however it ends."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def on_done(self, future: TransferFuture, **kwargs: Any) -> None:
        self.event.set()


def finish(transfer: TransferFuture, done: threading.Event, stop_reading: Callable[[], None] | None = None) -> None:
    """Wait for an upload. Interrupted while waiting (Ctrl-C, a framework's timeout, a stop), cancel it and let the
    requests in flight end first (saying so when they take a while), so that no object is completed after this
    returns.
    `stop_reading` ends a stream's reading, which s3transfer would otherwise take to its end first."""
    try:
        stops.wait_event(done)  # a worker thread's call, where no Ctrl-C reaches, is stopped so
        transfer.result()
    except BaseException:
        transfer.cancel()
        if stop_reading is not None:
            stop_reading()
        if not done.wait(STOPPING_SAID_AFTER):
            log.warning("stopping: waiting for the requests in flight to end, so that none completes the upload "
                        "later")
        with contextlib.suppress(BaseException):
            transfer.result()  # at once when it had ended; else once its last request is answered
        raise
