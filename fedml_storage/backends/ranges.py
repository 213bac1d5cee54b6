"""Parallel ranged downloads: when to leave a slow stream for ranges, and fetching ranges into one file."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from .. import stops
from ..abandon import Helpers
from ..errors import StorageFailure, TransientError
from .base import Progress, Sink

RANGE_ADVICE = ("this endpoint does not serve byte ranges: set stream_min_rate=0 and a download_threshold above "
                "the object's size for it (one streamed GET)")
RANGE_ATTEMPTS = 3  # per part, resuming where a broken read stopped (botocore retries each request as well)


class RangeIgnored(StorageFailure):
    """The server answered a ranged GET with other bytes than the range."""


class Unanswered(TransientError):
    """A request that got no usable answer after botocore's own retries: asking again at once would only repeat them
    (unlike a broken answer, which is gone on with from where it stopped)."""


class Counted:
    """Passes on chunks, counting their bytes (what reached the sink when the stream breaks)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.got = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.got += len(chunk)
        return chunk

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class StreamProbe:
    """Passes on chunks until `limit` bytes, timing only the waits for data after the first chunk.

    Time blocked downstream (hashing, disk) is not counted: ranges would not make that faster.
    """

    def __init__(self, chunks: Iterator[bytes], limit: int, requested_at: float) -> None:
        self._chunks, self._limit, self._requested_at = chunks, limit, requested_at
        self.first_byte = 0.0  # seconds from the request to its first chunk: what every ranged GET pays again
        self.got = 0
        self._timed_bytes = 0
        self._timed_seconds = 0.0

    def __iter__(self) -> Iterator[bytes]:
        while self.got < self._limit:
            before = time.monotonic()
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            now = time.monotonic()
            if self.got == 0:
                self.first_byte = now - self._requested_at
            else:
                self._timed_seconds += now - before
                self._timed_bytes += len(chunk)
            self.got += len(chunk)
            yield chunk

    @property
    def rate(self) -> float:
        """Bytes per second the stream delivered after its first chunk (or with it, when that was all)."""
        if self._timed_bytes:
            return self._timed_bytes / max(self._timed_seconds, 1e-6)
        return self.got / max(self.first_byte, 1e-6)


def ranges_pay(probe: StreamProbe, remaining: int, part: int, workers: int, min_rate: float) -> bool:
    """Whether parallel ranges should fetch the `remaining` bytes instead of the probed stream."""
    if workers < 2 or min_rate <= 0 or remaining < 2 * part or not 0 < probe.rate < min_rate:
        return False  # (a stream that gave nothing is a short object: the size check reports it)
    parts = math.ceil(remaining / part)
    stream_seconds = remaining / probe.rate
    # each range waits for its first byte again (some servers re-read the whole object per range)
    ranged_seconds = math.ceil(parts / workers) * probe.first_byte + remaining / (probe.rate * min(workers, parts))
    return ranged_seconds < 0.7 * stream_seconds


class OffsetWriter:
    """Positional writes from several threads into one open file."""

    def __init__(self, out: BinaryIO) -> None:
        out.flush()  # what was written through the buffered file must land before positional writes
        self._fd = out.fileno()
        self._lock = threading.Lock()

    def write_at(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        if hasattr(os, "pwrite"):
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
            return
        with self._lock:  # no pwrite (Windows): seek and write under a lock
            os.lseek(self._fd, offset, os.SEEK_SET)
            while view:
                view = view[os.write(self._fd, view):]


def fetch_ranges(
    open_range: Callable[[int, int], Iterator[bytes]],
    start: int,
    size: int,
    part: int,
    workers: int,
    sink: Sink,
    progress: Progress | None,
) -> None:
    """Fetch bytes [start, size) of an object with `open_range(lo, hi)` in parallel parts into the sink's file,
    hashing each part (read back) once it and all before it are in. A part whose read breaks resumes where it
    stopped."""
    writer = OffsetWriter(sink.unordered())
    stop = threading.Event()

    def fetch(lo: int) -> None:
        hi = min(lo + part, size)
        pos = lo
        for attempt in range(RANGE_ATTEMPTS):
            if stop.is_set():
                return
            try:
                for chunk in open_range(pos, hi):
                    if stop.is_set():
                        return
                    if pos + len(chunk) > hi:
                        raise RangeIgnored(f"the server sent more than the byte range {lo}-{hi - 1} asked for; "
                                           + RANGE_ADVICE)
                    writer.write_at(chunk, pos)
                    pos += len(chunk)
                    if progress:
                        progress(len(chunk))
            except TransientError as exc:
                if isinstance(exc, Unanswered) or attempt == RANGE_ATTEMPTS - 1 or stop.is_set():
                    raise
                continue
            if pos == hi:
                return
        raise TransientError(f"a ranged read kept ending early ({pos - lo} of {hi - lo} bytes)")

    in_order = hasattr(os, "pread")  # else (Windows) the whole file is hashed at the end
    helpers = Helpers()
    with stops.ContextThreads(workers, thread_name_prefix="fedml-storage-range") as pool:
        parts = [(lo, pool.submit(helpers.job(fetch), lo)) for lo in range(start, size, part)]
        pending = {future for _, future in parts}
        hashed = 0  # parts hashed, in order, while later ones still download
        try:
            while pending:
                done, pending = stops.wait_first(pending)
                for future in done:
                    future.result()  # the first failure ends the download at once
                while in_order and hashed < len(parts) and parts[hashed][1].done():
                    lo, future = parts[hashed]
                    future.result()  # it may have failed since `wait` returned: never hash a partial part
                    sink.absorb(lo, min(lo + part, size) - lo)
                    hashed += 1
        except BaseException:
            stop.set()  # parts in flight stop at their next chunk; queued ones never start
            for _, future in parts:
                future.cancel()
            helpers.give_up()  # requests in flight are not sent again either
            raise
    if not in_order:
        sink.rehash()
