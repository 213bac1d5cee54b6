"""S3-compatible stores that lack a feature fedml-storage uses (conditional requests): emulated by a proxy in
front of moto that answers those requests itself, as such a store does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.backends.s3 import S3Store
from fedml_storage.config import StorageSettings
from fedml_storage.errors import PreconditionFailed
from tests.conftest import TEST_API_KEY
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

NOT_IMPLEMENTED = ("501 Not Implemented", "NotImplemented", "A header you provided implies functionality that is not "
                   "implemented")
CONDITIONAL_DELETE = rb"(?is)^DELETE .*\r\nif-match:"


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[CuttingProxy]:
    url = urlsplit(moto_endpoint)
    proxy = CuttingProxy((url.hostname, url.port))
    yield proxy
    proxy.close()


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
    assert "does not support conditional writes" in resp.message and "AWS S3" in resp.message
    assert "try again" not in resp.message  # retrying cannot help
    assert s3_store.keys() == []  # neither a catalog entry nor the data it would have named


def test_a_store_refusing_conditional_deletes_still_deletes(s3_store: Store, proxy: CuttingProxy,
                                                             tmp_path: Path) -> None:
    for name in ("one.csv", "two.csv"):
        (tmp_path / name).write_text(name)
        assert s3_store.client().upload(str(tmp_path / name)).ok
    proxy.answer(CONDITIONAL_DELETE, *NOT_IMPLEMENTED, times=10)
    with s3_store.client(endpoint_url=proxy.endpoint) as client:
        assert client.delete("one.csv").data is True
        assert client.delete("two.csv").data is True
        assert client.list().data == []
    assert s3_store.keys() == []
    assert _conditional_deletes(proxy) == 1  # the store said no once; the client stops asking


def test_without_conditional_deletes_a_changed_entry_is_not_deleted(s3_store: Store, proxy: CuttingProxy,
                                                                     tmp_path: Path) -> None:
    """The check the store cannot make is made by the client: a manifest written since it was read stays."""
    (tmp_path / "one.csv").write_text("v1")
    assert s3_store.client().upload(str(tmp_path / "one.csv")).ok
    manifest = next(k for k in s3_store.keys() if k.endswith(".json"))
    proxy.answer(CONDITIONAL_DELETE, *NOT_IMPLEMENTED, times=10)
    store = S3Store(StorageSettings(service="S3", bucket=s3_store.bucket, endpoint_url=proxy.endpoint,
                                    api_key=TEST_API_KEY, region="us-east-1"))
    _, etag = store.read_bytes(manifest)
    s3_store.write(manifest, s3_store.read(manifest) + b" ")  # another writer, between read and delete
    with pytest.raises(PreconditionFailed):
        store.delete(manifest, if_match=etag)
    assert _conditional_deletes(proxy) == 1
    assert manifest in s3_store.keys()
