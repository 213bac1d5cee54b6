"""A bounded in-memory pipe: a producer thread writes, the uploader reads full parts."""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol


class Readable(Protocol):
    """What an upload reads a stream through."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """What a zip or a hash is written through."""

    def write(self, data: bytes, /) -> int: ...


class PipeAborted(Exception):
    """The producer failed; carries its exception as `__cause__`."""


class BoundedPipe:
    """Writer blocks past `limit` buffered bytes; `read(n)` blocks until n bytes or end of stream."""

    BATCH = 256 * 1024  # producer-side batching: writers may hand over many small pieces

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._batch = bytearray()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._closed = False
        self._reader_gone = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    # producer side
    def write(self, data: bytes) -> int:
        self._batch += data
        if len(self._batch) >= self.BATCH:
            self._push()
        return len(data)

    def _push(self) -> None:
        data, self._batch = bytes(self._batch), bytearray()
        if not data:
            return
        with self._cond:
            while self._buffered >= self._limit and not self._reader_gone:
                self._cond.wait()
            if self._reader_gone:
                raise BrokenPipeError("the upload stopped reading")
            self._chunks.append(data)
            self._buffered += len(data)
            self._cond.notify_all()

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._push()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """End the stream with an error the reader raises instead of a short end."""
        with self._cond:
            self._error = exc
            self._closed = True
            self._cond.notify_all()

    # consumer side
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        out: list[bytes] = []
        got = 0
        with self._cond:
            while n < 0 or got < n:
                if self._chunks:
                    chunk = self._chunks.popleft()
                    if n >= 0 and got + len(chunk) > n:
                        keep = n - got
                        self._chunks.appendleft(chunk[keep:])
                        chunk = chunk[:keep]
                    out.append(chunk)
                    got += len(chunk)
                    self._buffered -= len(chunk)
                    self._cond.notify_all()
                elif self._error is not None:
                    raise PipeAborted("the data source failed while streaming") from self._error
                elif self._reader_gone:  # given up by the consumer's owner (an interrupted upload)
                    raise BrokenPipeError("the upload stopped reading")
                elif self._closed:
                    break
                else:
                    self._cond.wait()
        return b"".join(out)

    def close_reader(self) -> None:
        """The consumer gave up: unblock and fail the producer, and a read still waiting."""
        with self._cond:
            self._reader_gone = True
            self._chunks.clear()
            self._buffered = 0
            self._cond.notify_all()
