"""A failed download keeps what it fetched (outside dest_path) and the next download of the same data goes on from
there: over a real TCP proxy that breaks connections in front of moto, and on LOCAL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fedml_storage import partials
from fedml_storage.api.fedml_response import ResponseCode
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

MiB = 1024 * 1024
SIZE = 24 * MiB
STREAM = {"stream_min_rate": 0}  # one streamed GET (moto would never be found slow anyway)
RANGES = {"download_threshold": 1 * MiB, "download_part_size": 4 * MiB, "concurrency": 2}


@pytest.fixture(params=[False], ids=["serves-ranges"])
def proxy(moto_endpoint: str, request) -> Iterator[CuttingProxy]:
    url = urlsplit(moto_endpoint)
    proxy = CuttingProxy((url.hostname, url.port), strip_ranges=request.param)
    yield proxy
    proxy.close()


def _upload(store: Store, tmp_path: Path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "blob.bin").write_bytes(data)
    assert store.client().upload(str(tmp_path / "blob.bin")).ok
    return data


@pytest.fixture
def stored(s3_store: Store, tmp_path: Path) -> bytes:
    return _upload(s3_store, tmp_path)


@pytest.fixture
def stored_anywhere(store: Store, tmp_path: Path) -> bytes:
    return _upload(store, tmp_path)


def _kept(home: Path, data: bytes) -> Path:
    return home / "partial" / hashlib.sha256(data).hexdigest()


def _fail_midway(s3_store: Store, proxy: CuttingProxy, out: Path, **settings) -> None:
    """A download that breaks after 10 MiB, and then every 256 KiB until its own tries to go on are used up (in
    parallel ranges: every answer for the range from 16 MiB is cut)."""
    if settings.get("download_threshold") == RANGES["download_threshold"]:
        proxy.cut_headers(f"bytes={16 * MiB}-", 0, times=10)
        settings = {**settings, "max_attempts": 1}
    else:
        proxy.cut_after(10 * MiB, *[256 * 1024] * 8)
    with s3_store.client(endpoint_url=proxy.endpoint, **settings) as client:
        response = client.download("blob.bin", str(out))
    proxy.disarm()
    assert response.code == ResponseCode.ERROR and response.retryable, response.message
    assert not out.exists()  # the folder it made is gone: nothing at dest_path


def _data_gets(proxy: CuttingProxy) -> list[bytes]:
    return [h for h in proxy.request_heads if h.startswith(b"GET ") and b"/data/" in h]


@pytest.mark.parametrize("settings", [STREAM, RANGES], ids=["stream", "ranges"])
def test_a_retry_goes_on_from_what_the_failed_download_fetched(
    s3_store: Store, stored: bytes, proxy: CuttingProxy, isolated_home: Path, tmp_path: Path, settings: dict
) -> None:
    _fail_midway(s3_store, proxy, tmp_path / "out", **settings)
    kept = _kept(isolated_home, stored)
    got = kept.stat().st_size
    assert partials.MIN_BYTES <= got < SIZE and kept.read_bytes() == stored[:got]  # only bytes known in order
    assert oct(kept.stat().st_mode & 0o777) == oct(0o600)

    proxy.request_heads.clear()
    before = proxy.bytes_down
    with s3_store.client(endpoint_url=proxy.endpoint, **settings) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.ok, response.message
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored
    ranges = [re.search(rb"(?i)\r\nrange: bytes=(\d+)-", h) for h in _data_gets(proxy)]
    assert ranges and all(ranges) and min(int(m.group(1)) for m in ranges) == got  # nothing before it asked again
    assert proxy.bytes_down - before < SIZE - got + MiB  # the rest, and answers' headers
    assert not kept.exists() and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blob.bin"]


def test_kept_bytes_that_do_not_match_are_fetched_anew(
    s3_store: Store, stored: bytes, proxy: CuttingProxy, isolated_home: Path, tmp_path: Path, caplog
) -> None:
    _fail_midway(s3_store, proxy, tmp_path / "out", **STREAM)
    kept = _kept(isolated_home, stored)
    with open(kept, "r+b") as fh:  # a bit flipped on disk since
        fh.seek(MiB)
        byte = fh.read(1)
        fh.seek(MiB)
        fh.write(bytes([byte[0] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="fedml_storage"), s3_store.client(**STREAM) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.ok, response.message  # not "the stored data is corrupt"
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored
    assert "does not match; fetching it from its start" in caplog.text
    assert not kept.exists()


@pytest.mark.parametrize("proxy", [True], ids=["no-ranges"], indirect=True)
def test_a_server_without_ranges_fetches_everything_again(
    s3_store: Store, stored: bytes, proxy: CuttingProxy, isolated_home: Path, tmp_path: Path
) -> None:
    _fail_midway(s3_store, proxy, tmp_path / "out", **STREAM)
    assert _kept(isolated_home, stored).exists()
    with s3_store.client(endpoint_url=proxy.endpoint, **STREAM) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.ok, response.message
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored


def test_what_was_kept_serves_only_the_same_data_and_only_for_a_day(
    s3_store: Store, stored: bytes, proxy: CuttingProxy, isolated_home: Path, tmp_path: Path
) -> None:
    _fail_midway(s3_store, proxy, tmp_path / "out", **STREAM)
    kept = _kept(isolated_home, stored)
    assert kept.exists()
    new = os.urandom(SIZE)  # the dataset is replaced: its data has another SHA-256
    (tmp_path / "blob.bin").write_bytes(new)
    assert s3_store.client().upload(str(tmp_path / "blob.bin")).ok
    with s3_store.client(**STREAM) as client:
        assert client.download("blob.bin", str(tmp_path / "out")).ok
        assert (tmp_path / "out" / "blob.bin").read_bytes() == new
        assert kept.exists()  # another dataset's: left for its own retry ...
        aged = time.time() - partials.KEEP_SECONDS - 60
        os.utime(kept, (aged, aged))
        assert client.download("blob.bin", str(tmp_path / "again")).ok
    assert not kept.exists()  # ... for a day


def test_a_corrupt_stored_object_keeps_nothing(store: Store, stored_anywhere: bytes, isolated_home: Path,
                                               tmp_path: Path) -> None:
    stored = stored_anywhere
    client = store.client()
    key = json.loads(store.read("default/manifests/blob.bin.json"))["versions"][0]["key"]
    damaged = bytearray(stored)
    damaged[-1] ^= 1
    store.write(key, bytes(damaged))
    response = client.download("blob.bin", str(tmp_path / "out"))
    assert not response.ok and "corrupt" in response.message, response.message
    assert not (isolated_home / "partial").exists() or not any((isolated_home / "partial").iterdir())
    assert not (tmp_path / "out").exists()


def test_ctrl_c_keeps_what_was_fetched_and_the_next_download_goes_on(
    store: Store, stored_anywhere: bytes, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = stored_anywhere
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.backends.s3 import S3Store

    backend = LocalStore if store.service == "LOCAL" else S3Store
    fetch = backend.get_into
    starts: list[int] = []
    passed: list[int] = []  # bytes passed on before the interrupt

    def interrupted(self, key, sink, size, progress=None, start=0):
        starts.append(start)
        if len(starts) > 1:
            return fetch(self, key, sink, size, progress, start)

        class Interrupting:  # the user presses Ctrl-C after about 12 MiB
            def write(self, data: bytes) -> int:
                if sum(passed) + len(data) > 12 * MiB:
                    raise KeyboardInterrupt
                passed.append(len(data))
                return sink.write(data)

            def stages(self):
                return [self.write]

        return fetch(self, key, Interrupting(), size, progress, start)

    monkeypatch.setattr(backend, "get_into", interrupted)
    client = store.client(stream_min_rate=0)
    with pytest.raises(KeyboardInterrupt):
        client.download("blob.bin", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    kept = _kept(isolated_home, stored)
    got = sum(passed)
    assert got >= partials.MIN_BYTES and kept.stat().st_size == got and kept.read_bytes() == stored[:got]
    response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.ok, response.message
    assert starts == [0, got]
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored
    assert not kept.exists()


def test_nothing_is_kept_across_filesystems(s3_store: Store, stored: bytes, proxy: CuttingProxy, tmp_path: Path) -> None:
    elsewhere = Path("/dev/shm")
    if not elsewhere.is_dir() or elsewhere.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem")
    partial_dir = Path(os.path.join(elsewhere, f"fedml-storage-test-{os.getpid()}"))
    try:
        _fail_midway(s3_store, proxy, tmp_path / "out", partial_dir=str(partial_dir), **STREAM)
        assert not partial_dir.exists() or not any(partial_dir.iterdir())  # never copied across
    finally:
        if partial_dir.exists():
            for p in partial_dir.iterdir():
                p.unlink()
            partial_dir.rmdir()


_KILLED_MIDWAY = """
import json, os, signal, sys, time
from fedml_storage import StorageClient, partials

noted = partials.Note.advance

def advance(self, valid):  # killed (SIGKILL: no handler runs) once 16 MiB are noted, 8 or more on disk
    noted(self, valid)
    if valid >= 16 * 1024 * 1024:
        deadline = time.monotonic() + 10  # writing may trail hashing: what is kept is what both passed
        while os.path.getsize(self.path.with_suffix(".part")) < partials.MIN_BYTES and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

partials.Note.advance = advance
service, api_key, out, settings = sys.argv[1], sys.argv[2] or None, sys.argv[3], json.loads(sys.argv[4])
StorageClient(service=service, api_key=api_key, **settings).download("blob.bin", out)
"""


@pytest.mark.parametrize("settings", [STREAM, RANGES], ids=["stream", "ranges"])
def test_a_killed_download_is_gone_on_from_by_the_next_one_into_that_folder(
    store: Store, stored_anywhere: bytes, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    settings: dict,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, store.service, store.api_key or "", str(out),
                            json.dumps(settings)], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = sorted(p.suffix for p in out.iterdir())
    assert left == [".part", ".sha"]  # what the kill left: the data so far and the note of what it is

    from fedml_storage.backends.local import LocalStore
    from fedml_storage.backends.s3 import S3Store

    backend = LocalStore if store.service == "LOCAL" else S3Store
    fetch, starts = backend.get_into, []

    def recorded(self, key, sink, size, progress=None, start=0):
        starts.append(start)
        return fetch(self, key, sink, size, progress, start)

    monkeypatch.setattr(backend, "get_into", recorded)
    response = store.client(**settings).download("blob.bin", str(out))
    assert response.ok, response.message
    assert (out / "blob.bin").read_bytes() == stored_anywhere
    assert len(starts) == 1 and 8 * MiB <= starts[0] <= 16 * MiB  # went on from what the killed one left
    assert [p.name for p in out.iterdir()] == ["blob.bin"]  # its part file and note are gone
    assert not _kept(isolated_home, stored_anywhere).exists()


def _killed_leftovers(out: Path, note: bytes | None, part_bytes: bytes = b"x" * (9 * MiB)) -> Path:
    """What a killed download leaves in `out`: a part file nobody holds and its note."""
    part = out / ".fedml-download-killed.part"
    part.write_bytes(part_bytes)
    if note is not None:
        (out / ".fedml-download-killed.sha").write_bytes(note)
    return part


def test_a_killed_part_of_other_data_is_removed_not_kept(isolated_home: Path, tmp_path: Path) -> None:
    from fedml_storage.dest_temps import sweep

    out = tmp_path / "out"
    out.mkdir()
    _killed_leftovers(out, b"%s %020d\n" % (b"a" * 64, 9 * MiB))
    sweep(out, lambda part: partials.keep_killed(isolated_home / "partial", "b" * 64, part))
    assert list(out.iterdir()) == [] and not (isolated_home / "partial").exists()  # its space is free again


@pytest.mark.parametrize("planted", ["link", "hard link", "fifo note", "endless note", "garbage note"])
def test_what_another_user_plants_in_a_shared_folder_is_never_kept_nor_followed(
        isolated_home: Path, tmp_path: Path, planted: str) -> None:
    from fedml_storage.dest_temps import sweep

    out = tmp_path / "shared"
    out.mkdir()
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"v" * (20 * MiB))
    sha = "c" * 64
    note = b"%s %020d\n" % (sha.encode(), 9 * MiB)
    part = out / ".fedml-download-planted.part"
    if planted == "link":
        os.symlink(victim, part)
        (out / ".fedml-download-planted.sha").write_bytes(note)
    elif planted == "hard link":
        os.link(victim, part)
        (out / ".fedml-download-planted.sha").write_bytes(note)
    else:
        _killed_leftovers(out, None).rename(part)
        note_path = out / ".fedml-download-planted.sha"
        if planted == "fifo note":
            os.mkfifo(note_path)  # reading it would wait for ever
        elif planted == "endless note":
            os.symlink("/dev/zero", note_path)
        else:
            note_path.write_bytes(b"\\u0669 +1_0\n")
    sweep(out, lambda p: partials.keep_killed(isolated_home / "partial", sha, p))  # returns: nothing waited on
    assert victim.read_bytes() == b"v" * (20 * MiB)  # neither truncated nor moved
    assert list(out.iterdir()) == []
    assert not (isolated_home / "partial" / sha).exists()


@pytest.mark.parametrize("going_on_fails", [False, True])
def test_a_folder_download_stopped_while_unpacking_is_placed_by_the_next_from_what_it_kept(
    store: Store, isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, going_on_fails: bool
) -> None:
    """Stopped after every byte was in (an Airflow timeout while a large folder unpacks): on S3 the next download
    asked for a range past the end and called the stored data corrupt, for good (helper-86). Whatever the store
    says of its data while a download goes on from kept bytes, it is fetched from its start before it is judged."""
    from fedml_storage import downloads
    from fedml_storage.errors import IntegrityError

    src = tmp_path / "ds"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(SIZE))
    (src / "notes.txt").write_text("kept whole")
    client = store.client(stream_min_rate=0)
    assert client.upload(str(src)).ok
    real_extract, stopped = downloads.safe_extract, []

    def stop_once(*args, **kwargs):
        if not stopped:
            stopped.append(True)
            raise KeyboardInterrupt  # as a framework's timeout or SIGTERM handler raises in the task
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(downloads, "safe_extract", stop_once)
    with pytest.raises(KeyboardInterrupt):
        client.download("ds", str(tmp_path / "out"))
    kept = list((isolated_home / "partial").iterdir())
    size = client.get_metadata("ds").unwrap().size_bytes
    assert len(kept) == 1 and kept[0].stat().st_size == size
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.backends.s3 import S3Store

    backend = LocalStore if store.service == "LOCAL" else S3Store
    fetch, starts = backend.get_into, []

    def spy(self, key, sink, n, progress=None, start=0):
        starts.append(start)
        if start and going_on_fails:
            raise IntegrityError("the stored data is corrupt")
        return fetch(self, key, sink, n, progress, start)

    monkeypatch.setattr(backend, "get_into", spy)
    again = client.download("ds", str(tmp_path / "out"))
    assert again.ok and starts == ([size, 0] if going_on_fails else [size]), (again.message, starts)
    assert (tmp_path / "out" / "ds" / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    assert not any((isolated_home / "partial").iterdir())
