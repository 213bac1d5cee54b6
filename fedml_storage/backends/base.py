"""The small object interface every backend implements. Nothing here knows about manifests."""

from __future__ import annotations

import builtins
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from .. import stops
from ..streams import Readable

Progress = Callable[[int], None]


class Sink(Protocol):
    """Where downloads go: in-order writes, or the seekable file beneath, hashed in order as parts complete
    (`absorb`) or all at once after (`rehash`)."""

    def write(self, data: bytes, /) -> int | None: ...

    def stages(self) -> list[Callable[[bytes], object]]: ...

    def unordered(self) -> BinaryIO: ...

    def absorb(self, offset: int, length: int) -> None: ...

    def rehash(self) -> None: ...


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or head tells about one object."""

    key: str
    size: int
    etag: str | None
    modified: float  # seconds since the epoch


def pipelined_copy(chunks: Iterable[bytes], sink: Sink, progress: Progress | None, depth: int = 16) -> int:
    """Write `chunks` to `sink` in order on other threads, so hashing and disk overlap the network.

    A sink that can (`stages()`: a hashing and a writing step) gets a thread for each, so they overlap each
    other too. At most `depth` chunks wait in memory. Returns the bytes copied.
    """
    stages: list[Callable[[bytes], object]] = list(getattr(sink, "stages", lambda: [sink.write])())
    copied = 0
    queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=depth) for _ in stages]
    failure: list[BaseException] = []

    def drain(step: Callable[[bytes], object], pending: queue.Queue[bytes | None], last: bool) -> None:
        try:
            while (chunk := pending.get()) is not None:
                if not failure:
                    step(chunk)
                    if last and progress:
                        progress(len(chunk))
        except BaseException as exc:  # reported to the reading thread
            failure.append(exc)
            while pending.get() is not None:
                pass

    threads = [threading.Thread(target=drain, args=(step, q, i == len(stages) - 1), name="fedml-storage-writer",
                                daemon=True) for i, (step, q) in enumerate(zip(stages, queues))]
    for t in threads:
        t.start()
    read_error: Exception | None = None
    try:
        for chunk in chunks:
            if failure:
                break
            stops.check()
            for q in queues:
                q.put(chunk)  # the same immutable bytes to every stage
            copied += len(chunk)
    except Exception as exc:  # reported after the stages: a write error that came first is the one that counts
        read_error = exc
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    if failure:
        raise failure[0]
    if read_error is not None:
        raise read_error
    return copied


class ObjectMissing(KeyError):
    """The key does not exist."""


class Leftovers(NamedTuple):
    """What a store's remove_leftovers did: how many it removed, what it could not remove, and how many it kept as
    changed within the grace period (writes that may still be running)."""

    removed: int = 0
    failed: tuple[str, ...] = ()
    kept: int = 0


class ObjectStore(ABC):
    """Put, get, head, list, delete and conditional put of keyed objects."""

    service: str

    @abstractmethod
    def uri(self, key: str) -> str:
        """A URI naming the object (s3://bucket/key, file:///...)."""

    @abstractmethod
    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        """Store a local file under `key` (parallel multipart where the backend has it)."""

    @abstractmethod
    def put_stream(self, key: str, stream: Readable, progress: Progress | None = None,
                   size_bound: int | None = None) -> None:
        """Store everything read from a non-seekable stream under `key`; `size_bound`, the most it can hold, lets
        a store that limits the number of parts size them."""

    @abstractmethod
    def get_into(self, key: str, sink: Sink, size: int, progress: Progress | None = None, start: int = 0) -> None:
        """Write the object (of `size` bytes, per the manifest) from byte `start` on into `sink`. Raises
        ObjectMissing, and ranges.RangeIgnored when `start` > 0 and the server sends whole objects only."""

    @abstractmethod
    def read_bytes(self, key: str) -> tuple[bytes, str]:
        """A small object's bytes and etag. Raises ObjectMissing."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False) -> str:
        """Write a small object, only if its etag is `if_match` / it does not exist. Returns the new etag.

        Raises errors.PreconditionFailed when the condition does not hold.
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size, etag and time of an object, or None if it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`."""

    @abstractmethod
    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Remove an object (absent is fine); with `if_match`, only if unchanged."""

    def delete_many(self, keys: builtins.list[str]) -> builtins.list[str]:
        """Remove several objects; the keys that could not be removed."""
        failed = []
        for key in keys:
            try:
                self.delete(key)
            except OSError:
                failed.append(key)
        return failed

    def remove_leftovers(self, data_prefix: str, older_than: float) -> Leftovers:
        """Remove what interrupted writes left in this kind of store, unchanged since `older_than` (epoch seconds).
        Nothing by default."""
        return Leftovers()

    def close(self) -> None:
        """Release connections and threads."""
