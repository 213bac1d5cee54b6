"""Faults between the client and the store that say nothing about what is stored: answers lost after a request was
carried out, requests never answered, bytes damaged in transit once. Through moto and a proxy in front of it
(helper-91's findings): none of them may be reported as a failure of the data, nor repeat botocore's retries."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import pytest

from fedml_storage.api.fedml_response import ResponseCode
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

MiB = 1024 * 1024


@pytest.fixture
def stored(s3_store: Store, tmp_path: Path) -> bytes:
    data = os.urandom(12 * MiB)
    (tmp_path / "blob.bin").write_bytes(data)
    assert s3_store.client().upload(str(tmp_path / "blob.bin")).ok
    return data


def requests(proxy: CuttingProxy, pattern: str) -> int:
    return sum(1 for head in proxy.request_heads if re.match(pattern.encode(), head))


def data_keys(s3_store: Store) -> list[str]:
    return [k for k in s3_store.keys() if "/data/" in k]


def test_a_commit_whose_every_answer_is_lost_is_found_written(s3_store: Store, stored: bytes, moto_proxy: CuttingProxy,
                                                             tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "blob.bin").write_bytes(b"new content")
    # every attempt at the catalog entry's write is carried out by the store, and its answer never arrives
    moto_proxy.cut_headers(f"PUT /{s3_store.bucket}/default/manifests/blob.bin.json", 0, times=3)
    with s3_store.client(endpoint_url=moto_proxy.endpoint, max_attempts=3) as client:
        response = client.upload(str(tmp_path / "new" / "blob.bin"))
    assert moto_proxy.cut == 3
    assert response.ok, response.message  # it was published: not "failed, try again"
    with s3_store.client() as direct:
        meta = direct.get_metadata("blob.bin").data
    assert meta.version == response.data.version and meta.sha256 == hashlib.sha256(b"new content").hexdigest()
    assert data_keys(s3_store) == [k for k in data_keys(s3_store) if meta.version in k]  # the replaced data dropped


def test_a_delete_whose_every_answer_is_lost_is_found_done(s3_store: Store, stored: bytes,
                                                           moto_proxy: CuttingProxy) -> None:
    moto_proxy.cut_headers(f"DELETE /{s3_store.bucket}/default/manifests/blob.bin.json", 0, times=3)
    with s3_store.client(endpoint_url=moto_proxy.endpoint, max_attempts=3) as client:
        response = client.delete("blob.bin")
    assert moto_proxy.cut == 3
    assert response.ok and response.data is True, response.message
    assert s3_store.keys() == []  # the entry is gone, and its data with it


def test_a_refused_delete_is_not_taken_for_done_on_one_stray_404(s3_store: Store, stored: bytes,
                                                                  moto_proxy: CuttingProxy, tmp_path: Path) -> None:
    """Reading back after a failed delete, one 404 (a proxy's) made it 'gone': the data went, the entry stayed
    (helper-93)."""
    moto_proxy.answer(rf"DELETE /{s3_store.bucket}/default/manifests/".encode(), "503 Slow Down", "SlowDown",
                      "Please reduce your request rate.", times=2)
    stray_404 = (rf"GET /{s3_store.bucket}/default/manifests/blob.bin.json".encode(), "404 Not Found", "NoSuchKey",
                 "The specified key does not exist.")
    moto_proxy.on_request(rb"^DELETE ", lambda: moto_proxy.answer(*stray_404))  # for the read after the delete
    with s3_store.client(endpoint_url=moto_proxy.endpoint, max_attempts=2) as client:
        response = client.delete("blob.bin")
    assert response.code == ResponseCode.ERROR and response.retryable, response.message
    with s3_store.client() as direct:
        assert direct.download("blob.bin", str(tmp_path / "out")).ok  # entry and data both still there


@pytest.mark.parametrize("mode", ["stream", "ranges"])
def test_a_read_botocore_gave_up_on_is_not_asked_again_three_times(s3_store: Store, stored: bytes,
                                                                   moto_proxy: CuttingProxy, tmp_path: Path,
                                                                   mode: str) -> None:
    data_get = rf"GET /{s3_store.bucket}/default/data/"
    moto_proxy.answer(data_get.encode(), "503 Slow Down", "SlowDown", "Please reduce your request rate.", times=50)
    settings = {"stream": {"stream_min_rate": 0},
                "ranges": {"download_threshold": MiB, "download_part_size": 6 * MiB, "concurrency": 2}}[mode]
    with s3_store.client(endpoint_url=moto_proxy.endpoint, max_attempts=2, **settings) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.code == ResponseCode.ERROR and response.retryable, response.message
    assert "busy or failing (SlowDown, 2 tries)" in response.message  # botocore's retries are silent (helper-103)
    # max_attempts per request (per part: two here), not that again for every resumption botocore already retried
    assert requests(moto_proxy, data_get) <= {"stream": 2, "ranges": 4}[mode]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["stream", "ranges"])
def test_an_error_botocore_does_not_retry_is_asked_again(s3_store: Store, stored: bytes, moto_proxy: CuttingProxy,
                                                        tmp_path: Path, mode: str) -> None:
    """A 520 from a CDN in front of the store: transient to us, not to botocore's standard mode (helper-93)."""
    data_get = rf"GET /{s3_store.bucket}/default/data/"
    moto_proxy.answer(data_get.encode(), "520 Origin Error", "InternalError", "We encountered an internal error.")
    settings = {"stream": {"stream_min_rate": 0},
                "ranges": {"download_threshold": MiB, "download_part_size": 6 * MiB, "concurrency": 2}}[mode]
    with s3_store.client(endpoint_url=moto_proxy.endpoint, max_attempts=2, **settings) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.ok, response.message
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored


def test_data_damaged_in_transit_once_is_fetched_again(s3_store: Store, stored: bytes, moto_proxy: CuttingProxy,
                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    moto_proxy.flip_byte(f"GET /{s3_store.bucket}/default/data/", 1000)
    with caplog.at_level(logging.WARNING, "fedml_storage"), \
            s3_store.client(endpoint_url=moto_proxy.endpoint, stream_min_rate=0) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert moto_proxy.flipped == 1
    assert response.ok, response.message  # not "corrupt: delete it and upload it again"
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored
    assert "does not match its manifest; fetching it again" in caplog.text


def test_data_answered_missing_once_is_fetched_again(s3_store: Store, stored: bytes, moto_proxy: CuttingProxy,
                                                     tmp_path: Path) -> None:
    moto_proxy.answer(rf"GET /{s3_store.bucket}/default/data/".encode(), "404 Not Found", "NoSuchKey",
                      "The specified key does not exist.")
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.download("blob.bin", str(tmp_path / "out"))
    assert response.ok, response.message  # not "missing from the store: upload the dataset again"
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored


def test_a_catalog_entry_damaged_in_transit_once_is_read_again(s3_store: Store, stored: bytes,
                                                               moto_proxy: CuttingProxy) -> None:
    moto_proxy.flip_byte(f"GET /{s3_store.bucket}/default/manifests/blob.bin.json", 0)
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.get_metadata("blob.bin")
    assert moto_proxy.flipped == 1
    assert response.ok, response.message  # not "unreadable: delete it"
    assert response.data.sha256 == hashlib.sha256(stored).hexdigest()


def test_a_file_cut_short_while_its_parts_go_up_fails_at_once_as_changed(
        s3_store: Store, moto_proxy: CuttingProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """s3transfer reads each part by name: a file cut meanwhile sent parts shorter than their declared length, and
    each waited read_timeout x max_attempts for the rest (6 minutes by default; helper-90)."""
    source = tmp_path / "growing-log.bin"
    source.write_bytes(os.urandom(24 * MiB))
    moto_proxy.on_request(rb"^PUT [^ ]*partNumber=", lambda: os.truncate(source, 7 * MiB))  # as the first part goes
    with caplog.at_level(logging.WARNING, "fedml_storage"), s3_store.client(
            endpoint_url=moto_proxy.endpoint, part_size=5 * MiB, concurrency=1, read_timeout=3, max_attempts=2) as client:
        response = client.upload(str(source))
    assert response.code == ResponseCode.FAILURE and response.reason == "conflict", response.message
    assert "changed while it was being uploaded" in response.message or "became shorter" in response.message
    assert "no answer from" not in caplog.text  # no part waited for bytes that were never coming
    assert s3_store.keys() == []  # nothing published, no object left


@pytest.mark.parametrize("say_every", [60, 0])
def test_botocores_retries_are_said_as_they_happen(s3_store: Store, stored: bytes, moto_proxy: CuttingProxy,
                                                   tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch,
                                                   say_every: float) -> None:
    """A step waiting on a busy store showed nothing while botocore asked again with backoff (helper-103): a note
    for a retry, unless one was said within SAY_EVERY seconds."""
    from fedml_storage.backends import s3_retries

    monkeypatch.setattr(s3_retries, "SAY_EVERY", say_every)
    data_get = rf"GET /{s3_store.bucket}/default/data/"
    moto_proxy.answer(data_get.encode(), "503 Slow Down", "SlowDown", "Please reduce your request rate.", times=2)
    with caplog.at_level(logging.INFO, logger="fedml_storage"), \
            s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        assert client.download("blob.bin", str(tmp_path / "out")).ok
    notes = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
    said = f"{moto_proxy.endpoint}/{s3_store.bucket} answered SlowDown (503) to GetObject: asking again"
    assert notes == [f"{said} (try {n} of 6)" for n in ([2] if say_every else [2, 3])], notes
    assert (tmp_path / "out" / "blob.bin").read_bytes() == stored


def test_retries_not_said_are_counted_in_the_next_note(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    from types import SimpleNamespace

    from fedml_storage.backends import s3_retries

    clock = iter([0.0, 1.0, 2.0, 6.0])
    monkeypatch.setattr(s3_retries, "_now", lambda: next(clock))
    notes = s3_retries._RetryNotes("s3://b")
    retry = {"context": {}}
    notes.answered(retry, caught_exception=ConnectionResetError())
    with caplog.at_level(logging.INFO, logger="fedml_storage"):
        for attempt in (2, 3, 2, 4):  # the third of another request
            retry["context"]["retries"] = {"attempt": attempt, "max": 6}
            notes.asking_again(SimpleNamespace(context=retry["context"]), "UploadPart")
    assert [r.getMessage() for r in caplog.records] == [
        "s3://b gave no usable answer (ConnectionResetError) to UploadPart: asking again (try 2 of 6)",
        "s3://b gave no usable answer (ConnectionResetError) to UploadPart: asking again (try 4 of 6); "
        "3 retries since the last note"]


def test_a_retry_of_an_answer_cut_short_says_so_and_a_timed_out_one_is_said_once(
        s3_store: Store, stored: bytes, moto_proxy: CuttingProxy, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """A 200 cut inside its headers was noted as "answered HTTP 200", as if the store had said something wrong; a
    request nobody answered in time had its retry said twice, by the WARNING of the silence and by a note (helper-107)."""
    from fedml_storage.backends import s3_retries

    monkeypatch.setattr(s3_retries, "SAY_EVERY", 0)
    manifest = f"GET /{s3_store.bucket}/default/manifests/blob.bin.json"
    moto_proxy.cut_headers(manifest, 40)
    moto_proxy.cut_headers(manifest, 0, stall=2)  # the next attempt: no answer within read_timeout
    with caplog.at_level(logging.INFO, logger="fedml_storage"), \
            s3_store.client(endpoint_url=moto_proxy.endpoint, read_timeout=1, max_attempts=4) as client:
        assert client.get_metadata("blob.bin").ok
    notes = [r.getMessage() for r in caplog.records if "asking again (try" in r.getMessage()]
    assert notes == [f"{moto_proxy.endpoint}/{s3_store.bucket} sent an answer cut short in transit (HTTP 200) to "
                     "GetObject: asking again (try 2 of 4)"], notes
    assert len([r for r in caplog.records if r.getMessage().startswith("no answer from")]) == 1, caplog.text
