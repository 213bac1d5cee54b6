"""Downloads over a network that breaks connections mid-response: a real TCP proxy in front of moto."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fedml_storage.api.fedml_response import ResponseCode
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
    if mode == "stream":  # not fetched again from the start (SIZE + 5 MiB); the chunk being read is (1 MiB)
        assert proxy.bytes_down < SIZE + 2 * MiB


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
