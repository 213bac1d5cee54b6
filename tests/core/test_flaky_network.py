"""Downloads over a network that breaks connections mid-response: a real TCP proxy in front of moto."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fedml_storage.api.fedml_response import ResponseCode
from tests.conftest import s3_client
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

MiB = 1024 * 1024
SIZE = 12 * MiB


@pytest.fixture(params=[False], ids=["serves-ranges"])
def proxy(moto_endpoint: str, request) -> Iterator[CuttingProxy]:
    url = urlsplit(moto_endpoint)
    proxy = CuttingProxy((url.hostname, url.port), strip_ranges=request.param)
    yield proxy
    proxy.close()


@pytest.fixture
def stored(s3_store: Store, tmp_path: Path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "blob.bin").write_bytes(data)
    assert s3_store.client().upload(str(tmp_path / "blob.bin")).ok
    return data


MODES = {  # one streamed GET; parallel ranges (4 MiB parts) from the start. Then: where the connection breaks
    "stream": ({"stream_min_rate": 0}, 5 * MiB),
    "ranges": ({"download_threshold": 1 * MiB, "download_part_size": 4 * MiB, "concurrency": 2}, 3 * MiB),
}


@pytest.mark.parametrize("mode", MODES)
def test_a_broken_download_goes_on_from_where_it_broke(s3_store: Store, stored: bytes, proxy: CuttingProxy,
                                                        tmp_path: Path, mode: str) -> None:
    settings, cut_at = MODES[mode]
    proxy.cut_after(cut_at)
    with s3_store.client(endpoint_url=proxy.endpoint, **settings) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.code == ResponseCode.SUCCESS, response.message
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored
    assert proxy.cut == 1
    if mode == "stream":  # not fetched again from the start (SIZE + 5 MiB); the chunk being read is, and a reset
        assert proxy.bytes_down < SIZE + 4 * MiB  # drops what the client had not read yet


def test_a_stream_that_keeps_breaking_fails_retryably_and_leaves_nothing(
    s3_store: Store, stored: bytes, proxy: CuttingProxy, tmp_path: Path
) -> None:
    proxy.cut_after(2 * MiB, 2 * MiB, 2 * MiB, 2 * MiB)  # every try breaks
    with s3_store.client(endpoint_url=proxy.endpoint, **MODES["stream"][0]) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.code == ResponseCode.ERROR and response.retryable, response.message
    assert proxy.cut == 3
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("proxy", [True], ids=["no-ranges"], indirect=True)
def test_a_break_on_a_server_without_ranges_stays_retryable(s3_store: Store, stored: bytes, proxy: CuttingProxy,
                                                            tmp_path: Path) -> None:
    proxy.cut_after(5 * MiB)
    with s3_store.client(endpoint_url=proxy.endpoint, **MODES["stream"][0]) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.code == ResponseCode.ERROR and response.retryable, response.message  # not "ignored a range"
    assert not (tmp_path / "out").exists()


HEADER_CUTS = {  # what the client does: the request whose answer is cut inside its headers, and how often
    "download": ("GET /{bucket}/default/data/", 2),  # fewer than the download's own tries: it must succeed
    "get_metadata": ("GET /{bucket}/default/manifests/blob.bin.json", 8),  # more than the 3 attempts per request
    "list": ("list-type=2", 8),
    "cleanup": ("prefix=default%2Fmanifests", 8),
    "upload": ("PUT /{bucket}/default/manifests/blob.bin.json", 8),
    "upload_part": ("partNumber=2", 8),
    "delete": ("DELETE /{bucket}/default/manifests/blob.bin.json", 1),
}


@pytest.mark.parametrize("at", [40, 120])
@pytest.mark.parametrize("call", HEADER_CUTS)
def test_an_answer_cut_inside_its_headers_is_never_trusted(s3_store: Store, stored: bytes, proxy: CuttingProxy,
                                                           tmp_path: Path, call: str, at: int) -> None:
    """A clean close inside the headers reads, to http.client, as a complete answer without ETag, length or body."""
    request, times = HEADER_CUTS[call]
    proxy.cut_headers(request.format(bucket=s3_store.bucket), at, times=times)
    new = os.urandom(SIZE)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "blob.bin").write_bytes(new)
    with s3_store.client(endpoint_url=proxy.endpoint, stream_min_rate=0, part_size=5 * MiB, keep_versions=2,
                         max_attempts=3) as client:
        response = {
            "download": lambda: client.download("blob.bin", str(tmp_path / "out")),
            "get_metadata": lambda: client.get_metadata("blob.bin"),
            "list": lambda: client.list(),
            "cleanup": lambda: client.cleanup(older_than_seconds=0),
            "upload": lambda: client.upload(str(tmp_path / "new" / "blob.bin")),
            "upload_part": lambda: client.upload(str(tmp_path / "new" / "blob.bin")),
            "delete": lambda: client.delete("blob.bin"),
        }[call]()
    assert proxy.cut >= 1
    # never a wrong success, a FAILURE that blames the data, or an internal error: done, or retryable
    assert response.ok or (response.code == ResponseCode.ERROR and response.retryable), response.message
    if call == "download":
        assert response.ok and (tmp_path / "out" / "blob.bin").read_bytes() == stored, response.message
    if call in ("list", "cleanup", "get_metadata"):
        assert not response.ok  # an empty listing or a metadata-less answer is not taken for the truth
    with s3_store.client() as direct:  # what is stored is whole: the old dataset, the new one, or (deleted) none
        if call == "delete":
            assert response.ok and not direct.get_metadata("blob.bin").ok
            return
        meta = direct.get_metadata("blob.bin").data
        assert len(set(meta.versions)) == len(meta.versions)  # a commit whose answer was lost is not counted twice
        for version in meta.versions:  # every kept version is whole
            got = direct.download("blob.bin", str(tmp_path / version), version=version)
            assert got.ok, got.message
            assert (tmp_path / version / "blob.bin").read_bytes() in (stored, new)


def test_a_server_that_stops_sending_is_given_up_on_after_read_timeout(s3_store: Store, stored: bytes,
                                                                       proxy: CuttingProxy, tmp_path: Path) -> None:
    proxy.cut_headers(f"GET /{s3_store.bucket}/default/manifests/blob.bin.json", 0, times=2, stall=3)  # each attempt
    with s3_store.client(endpoint_url=proxy.endpoint, read_timeout=1, max_attempts=2) as client:
        response = client.get_metadata("blob.bin")
    assert response.code == ResponseCode.ERROR and response.retryable, response.message
    assert "stopped sending data" in response.message and "read_timeout" in response.message


@pytest.mark.parametrize("call", ["get_metadata", "list", "upload"])
def test_an_answer_cut_once_is_simply_asked_again(s3_store: Store, stored: bytes, proxy: CuttingProxy,
                                                  tmp_path: Path, call: str) -> None:
    request = {"get_metadata": f"GET /{s3_store.bucket}/default/manifests/blob.bin.json", "list": "list-type=2",
               "upload": f"PUT /{s3_store.bucket}/default/manifests/blob.bin.json"}[call]
    proxy.cut_headers(request, 40)
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "blob.bin").write_bytes(b"new content")
    with s3_store.client(endpoint_url=proxy.endpoint, max_attempts=3) as client:
        response = {"get_metadata": lambda: client.get_metadata("blob.bin"), "list": lambda: client.list(),
                    "upload": lambda: client.upload(str(tmp_path / "new" / "blob.bin"))}[call]()
    assert proxy.cut == 1 and response.ok, response.message
    if call == "list":
        assert [m.dataName for m in response.data] == ["blob.bin"]
    if call == "get_metadata":
        assert response.data.sha256 == hashlib.sha256(stored).hexdigest()
    if call == "upload":
        assert response.data.sha256 == hashlib.sha256(b"new content").hexdigest()
        with s3_store.client() as direct:
            assert direct.get_metadata("blob.bin").data.version == response.data.version


def test_a_catalog_entry_whose_body_breaks_off_once_is_read_again(s3_store: Store, stored: bytes,
                                                                  proxy: CuttingProxy) -> None:
    proxy.cut_headers(f"GET /{s3_store.bucket}/default/manifests/blob.bin.json", 400)  # past the headers
    with s3_store.client(endpoint_url=proxy.endpoint) as client:
        response = client.get_metadata("blob.bin")
    assert proxy.cut == 1 and response.ok, response.message
    assert response.data.sha256 == hashlib.sha256(stored).hexdigest()


def test_uploads_do_not_wait_for_100_continue(s3_store: Store, proxy: CuttingProxy, tmp_path: Path) -> None:
    """botocore loops for ever on an interim '100 Continue' cut short, so none is asked for."""
    (tmp_path / "big.bin").write_bytes(os.urandom(11 * MiB))  # multipart: parts and the manifest are PUTs
    with s3_store.client(endpoint_url=proxy.endpoint, part_size=5 * MiB) as client:
        assert client.upload(str(tmp_path / "big.bin")).ok
    puts = [head for head in proxy.request_heads if head.startswith(b"PUT ")]
    assert len(puts) >= 4 and not any(b"expect:" in head.lower() for head in puts)


def test_an_answer_botocore_cannot_parse_is_retryable() -> None:
    from botocore.utils import parse_timestamp

    from fedml_storage.backends.s3_errors import translate as _translate
    from fedml_storage.errors import TransientError

    with pytest.raises(TransientError, match="broke"), _translate("k", "s3://b"):
        parse_timestamp("Wed, 25 N")  # a Last-Modified cut inside its value
    with pytest.raises(ValueError), _translate("k", "s3://b"):
        int("not from botocore")  # our own mistakes stay visible


@pytest.mark.parametrize("mode", MODES)
def test_a_length_cut_inside_its_value_is_not_taken_for_corrupt_data(s3_store: Store, stored: bytes,
                                                                      proxy: CuttingProxy, tmp_path: Path,
                                                                      mode: str) -> None:
    """'Content-Length: 12582912' cut after '12' reads as a 12-byte object (the connection then closes)."""
    proxy.rewrite_answer(f"GET /{s3_store.bucket}/default/data/", rb"(?i)(content-length: )\d+", rb"\g<1>12")
    with s3_store.client(endpoint_url=proxy.endpoint, **MODES[mode][0]) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert proxy.rewritten == 1
    assert response.ok or response.retryable, response.message  # asked again, or to be: never "corrupt, upload again"
    assert "corrupt" not in response.message and "ranges" not in response.message
    with s3_store.client() as direct:
        assert direct.download("blob.bin", str(tmp_path / "out")).ok  # the data was fine all along
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_ctrl_c_while_an_upload_completes_leaves_no_object(s3_store: Store, proxy: CuttingProxy, tmp_path: Path,
                                                          kind: str) -> None:
    src = tmp_path / "big"
    if kind == "file":
        src.write_bytes(os.urandom(12 * MiB))
    else:
        src.mkdir()
        for i in range(3):
            (src / f"{i}.bin").write_bytes(os.urandom(4 * MiB))
    main = threading.main_thread().ident

    def ctrl_c() -> None:  # pressed just as the last request goes out, which the server then carries out
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.3)

    proxy.on_request(rb"^POST [^ ]*\?uploadId=", ctrl_c)  # CompleteMultipartUpload
    with s3_store.client(endpoint_url=proxy.endpoint, part_size=5 * MiB, max_attempts=1) as client:
        with pytest.raises(KeyboardInterrupt):
            client.upload(src)
    time.sleep(1)  # anything still in flight has landed by now
    s3 = s3_client(s3_store.endpoint)
    assert s3.list_objects_v2(Bucket=s3_store.bucket).get("KeyCount") == 0  # no manifest, and no data either
    assert not s3.list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads")


class _Deadline(BaseException):
    """What a framework's task timeout raises in the main thread (Airflow's AirflowTaskTimeout is a BaseException)."""


def test_a_task_timeout_during_an_upload_does_not_wait_for_a_stuck_request(s3_store: Store, proxy: CuttingProxy,
                                                                           tmp_path: Path) -> None:
    """The catalog read runs beside the scan; a timeout raised meanwhile waited for that read to time out first."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("a")
    main = threading.main_thread().ident
    proxy.cut_headers(f"GET /{s3_store.bucket}/default/manifests/ds.json", 0, stall=3)  # the server hangs
    proxy.on_request(rb"^GET [^ ]*/manifests/ds\.json", lambda: signal.pthread_kill(main, signal.SIGUSR1))

    def deadline(signum, frame) -> None:
        raise _Deadline()

    previous = signal.signal(signal.SIGUSR1, deadline)
    before = set(threading.enumerate())
    try:
        with s3_store.client(endpoint_url=proxy.endpoint, read_timeout=2, max_attempts=1) as client:
            with pytest.raises(_Deadline):
                client.upload(tmp_path / "ds")
            still_reading = [t for t in threading.enumerate() if t not in before and t.is_alive()
                             and t.name.startswith("fedml-storage-read")]  # the upload's read, not the proxy's threads
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert still_reading, "the timeout waited for the stuck request"
    for thread in still_reading:
        thread.join(10)  # it ends with its request's read timeout
