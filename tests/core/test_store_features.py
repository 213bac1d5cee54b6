"""S3-compatible stores that lack a feature fedml-storage uses (conditional requests): emulated by a proxy in
front of moto that answers those requests itself, as such a store does."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedml_storage.api.fedml_response import ResponseCode
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

NOT_IMPLEMENTED = ("501 Not Implemented", "NotImplemented", "A header you provided implies functionality that is not "
                   "implemented")
CONDITIONAL_DELETE = rb"(?is)^DELETE .*\r\nif-match:"


@pytest.fixture
def proxy(moto_proxy: CuttingProxy) -> CuttingProxy:
    return moto_proxy


def _conditional_deletes(proxy: CuttingProxy) -> int:
    return sum(1 for head in proxy.request_heads if head.startswith(b"DELETE ") and b"if-match:" in head.lower())


def test_a_store_refusing_conditional_writes_fails_clearly_and_publishes_nothing(
    s3_store: Store, proxy: CuttingProxy, tmp_path: Path
) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    proxy.answer(rb"(?is)^PUT .*\r\nif-none-match:", *NOT_IMPLEMENTED, times=10)
    with s3_store.client(endpoint_url=proxy.endpoint) as client:
        resp = client.upload(str(tmp_path / "data.csv"))
    assert resp.code == ResponseCode.FAILURE and resp.reason == "not_configured"
    assert "refused a conditional request" in resp.message and "AWS S3" in resp.message
    assert "try again" not in resp.message  # retrying cannot help
    assert s3_store.keys() == []  # neither a catalog entry nor the data it would have named


def test_a_store_refusing_conditional_deletes_fails_the_delete_and_keeps_the_dataset(
    s3_store: Store, proxy: CuttingProxy, tmp_path: Path
) -> None:
    """An etag check before an unconditional delete would remove an upload published in between (one that had
    reported success); so a store that refuses If-Match on DELETE gets a FAILURE, not a retry loop."""
    (tmp_path / "one.csv").write_text("one")
    assert s3_store.client().upload(str(tmp_path / "one.csv")).ok
    keys = s3_store.keys()
    proxy.answer(CONDITIONAL_DELETE, *NOT_IMPLEMENTED, times=10)
    with s3_store.client(endpoint_url=proxy.endpoint) as client:
        response = client.delete("one.csv")
        assert response.code == ResponseCode.FAILURE and response.reason == "not_configured"
        assert "refused a conditional request" in response.message and "delete remove another" in response.message
        assert "try again" not in response.message
        assert [m.dataName for m in client.list().data] == ["one.csv"]
    assert s3_store.keys() == keys
    assert _conditional_deletes(proxy) == 1  # refused once: not retried


def test_an_expired_session_token_says_to_renew_it(s3_store: Store, proxy: CuttingProxy) -> None:
    proxy.answer(rb"(?is)^GET ", "400 Bad Request", "ExpiredToken", "The provided token has expired.", times=10)
    with s3_store.client(endpoint_url=proxy.endpoint) as client:
        response = client.list()
    assert response.code == ResponseCode.FAILURE and response.reason == "access_denied", response
    assert "expired session token" in response.message and "renew them" in response.message
