"""The ranged-download decision and fetching, with a scripted server (the moto path is in test_safety)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedml_storage.archive import HashingWriter
from fedml_storage.backends.ranges import StreamProbe, fetch_ranges, ranges_pay
from fedml_storage.errors import StorageFailure, TransientError

MiB = 1024 * 1024


def _probe(rate: float, first_byte: float) -> StreamProbe:
    probe = StreamProbe(iter(()), 0, 0.0)
    probe.first_byte, probe._timed_bytes, probe._timed_seconds = first_byte, int(rate), 1.0
    return probe


@pytest.mark.parametrize(("rate", "first_byte", "workers", "expected"), [
    (100e6, 0.05, 8, True),     # real S3: ~100 MB/s per connection, quick first byte
    (1000e6, 0.05, 8, False),   # moto on localhost: the stream is already fast
    (100e6, 5.0, 8, False),     # slow first byte: each range would pay it again
    (100e6, 0.05, 1, False),    # one connection allowed: nothing to gain
])
def test_ranges_pay_only_when_they_would_be_faster(rate: float, first_byte: float, workers: int,
                                                   expected: bool) -> None:
    assert ranges_pay(_probe(rate, first_byte), 960 * MiB, 64 * MiB, workers, 128 * MiB) is expected


def test_a_broken_range_resumes_where_it_stopped_and_progress_is_exact(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB
    prefix = 1_000_000
    calls: list[tuple[int, int]] = []

    def open_range(lo: int, hi: int) -> Iterator[bytes]:
        calls.append((lo, hi))
        if len(calls) == 2:  # the second request breaks half-way
            yield data[lo:(lo + hi) // 2]
            raise TransientError("connection reset")
        for i in range(lo, hi, 65536):
            yield data[i:min(i + 65536, hi)]

    counted: list[int] = []
    with open(tmp_path / "part", "w+b") as out:
        sink = HashingWriter(out)
        sink.write(data[:prefix])  # the streamed first part, still in the file object's buffer
        fetch_ranges(open_range, prefix, len(data), 3_000_000, 2, sink, counted.append)
    assert (tmp_path / "part").read_bytes() == data
    assert sink.sha256.hexdigest() == hashlib.sha256(data).hexdigest() and sink.size == len(data)
    assert sum(counted) == len(data) - prefix
    starts = {1_000_000, 4_000_000, 7_000_000, 10_000_000}
    assert len(calls) == 5 and len([lo for lo, _ in calls if lo not in starts]) == 1  # one resumed mid-part


def test_a_range_that_keeps_failing_fails_the_download(tmp_path: Path) -> None:
    def open_range(lo: int, hi: int) -> Iterator[bytes]:
        raise TransientError("service unavailable")
        yield b""

    with open(tmp_path / "part", "w+b") as out, pytest.raises(TransientError, match="unavailable"):
        fetch_ranges(open_range, 10, 100, 30, 2, HashingWriter(out), None)


def test_a_failed_part_stops_the_others_at_once(tmp_path: Path) -> None:
    part, parts = 4096, 40
    opened: list[int] = []
    first_part_bytes: list[int] = []

    def open_range(lo: int, hi: int) -> Iterator[bytes]:
        opened.append(lo)
        if lo == part:
            raise StorageFailure("refused")
        for i in range(lo, hi):  # a slow part: byte by byte
            time.sleep(0.001)
            if lo == 0:
                first_part_bytes.append(i)
            yield b"x"

    with open(tmp_path / "part", "w+b") as out, pytest.raises(StorageFailure, match="refused"):
        fetch_ranges(open_range, 0, part * parts, part, 4, HashingWriter(out), None)
    assert len(first_part_bytes) < part  # the slow first part was stopped, not waited for
    assert len(opened) < parts  # queued parts never started


def test_a_stream_that_gave_nothing_is_not_worth_ranges() -> None:
    empty = StreamProbe(iter(()), 64 * MiB, 0.0)
    assert list(empty) == [] and ranges_pay(empty, 960 * MiB, 64 * MiB, 8, 128 * MiB) is False


def test_a_server_sending_more_than_the_range_is_refused_with_the_way_out(tmp_path: Path) -> None:
    def open_range(lo: int, hi: int) -> Iterator[bytes]:
        yield b"x" * (hi - lo + 1)  # the whole object, say, instead of the range

    with open(tmp_path / "part", "w+b") as out, pytest.raises(StorageFailure) as caught:
        fetch_ranges(open_range, 0, 4096, 1024, 2, HashingWriter(out), None)
    assert "stream_min_rate=0 and a download_threshold above" in str(caught.value)


def test_parts_are_hashed_in_order_while_later_ones_still_download(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    part = len(data) // 4
    first_part_hashed = threading.Event()
    absorbed: list[tuple[int, int]] = []

    class Spy(HashingWriter):
        def absorb(self, offset: int, length: int) -> None:
            super().absorb(offset, length)
            absorbed.append((offset, length))
            if offset == 0:
                first_part_hashed.set()

    def open_range(lo: int, hi: int) -> Iterator[bytes]:
        if lo == 0:
            time.sleep(0.2)  # the first part comes last of the first three
        if lo == 3 * part and not first_part_hashed.wait(10):  # the last part waits for the first to be hashed
            raise StorageFailure("the first part was not hashed while the last one was downloading")
        yield data[lo:hi]

    with open(tmp_path / "part", "w+b") as out:
        sink = Spy(out)
        fetch_ranges(open_range, 0, len(data), part, 4, sink, None)
    assert absorbed == [(i * part, part) for i in range(4)]
    assert sink.sha256.hexdigest() == hashlib.sha256(data).hexdigest() and sink.size == len(data)


def test_a_streamed_copy_feeds_hashing_and_disk_in_order_on_their_own_threads(tmp_path: Path) -> None:
    from fedml_storage.backends.base import pipelined_copy

    chunks = [bytes([i]) * (1000 + i) for i in range(200)]
    seen: dict[str, list[bytes]] = {"hash": [], "disk": []}
    threads: dict[str, set[str]] = {"hash": set(), "disk": set()}

    class Sink:
        def write(self, data: bytes) -> None:
            raise AssertionError("a sink with stages is not written whole")

        def stages(self):
            def step(label: str):
                def run(data: bytes) -> None:
                    seen[label].append(data)
                    threads[label].add(threading.current_thread().name + str(threading.get_ident()))
                return run
            return [step("hash"), step("disk")]

    counted: list[int] = []
    assert pipelined_copy(iter(chunks), Sink(), counted.append) == sum(map(len, chunks))
    assert seen["hash"] == chunks and seen["disk"] == chunks and sum(counted) == sum(map(len, chunks))
    assert len(threads["hash"] | threads["disk"]) == 2  # one thread each

    class Full(Sink):
        def stages(self):
            def disk(data: bytes) -> None:
                raise OSError(28, "No space left on device")
            return [lambda data: None, disk]

    with pytest.raises(OSError, match="No space left"):
        pipelined_copy(iter(chunks), Full(), None)

    with open(tmp_path / "out", "w+b") as out:  # the real sink
        sink = HashingWriter(out)
        pipelined_copy(iter(chunks), sink, None)
        out.flush()
    assert sink.sha256.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest() and sink.size == len(b"".join(chunks))
    assert (tmp_path / "out").read_bytes() == b"".join(chunks)


def test_a_part_failing_while_an_earlier_one_is_hashed_reports_its_own_error(tmp_path: Path) -> None:
    part = 1000
    hashing_first = threading.Event()

    class SlowHash(HashingWriter):
        def absorb(self, offset: int, length: int) -> None:
            if offset == 0:
                hashing_first.set()
                time.sleep(0.3)  # parts 1 and 2 fail meanwhile
            super().absorb(offset, length)

    def open_range(lo: int, hi: int) -> Iterator[bytes]:
        if lo in (part, 2 * part):  # parts 1 and 2 fail every attempt, writing nothing
            hashing_first.wait(5)
            raise TransientError(f"connection reset in the part at {lo}")
        if lo == 3 * part:
            time.sleep(1)
        yield b"d" * (hi - lo)

    with open(tmp_path / "part", "w+b") as out, pytest.raises(TransientError, match="connection reset"):
        fetch_ranges(open_range, 0, 4 * part, part, 4, SlowHash(out), None)  # not a hashing error about offsets


def test_a_write_error_wins_over_a_read_error_that_followed_it() -> None:
    """Else a broken connection right after a failed write would be resumed at the wrong offset."""
    from fedml_storage.backends.base import pipelined_copy

    wrote = threading.Event()

    class Failing:
        def stages(self):
            def disk(data: bytes) -> None:
                wrote.set()
                raise OSError(5, "Input/output error")
            return [lambda data: None, disk]

    def chunks() -> Iterator[bytes]:
        yield b"x" * 100
        assert wrote.wait(5)  # the write failed before the connection broke
        raise TransientError("connection reset")

    with pytest.raises(OSError, match="Input/output error"):
        pipelined_copy(chunks(), Failing(), None)
