"""check_store: what a store does of what fedml-storage relies on, tried on a probe object that is removed after;
stores that refuse or silently ignore conditional requests are emulated by a proxy in front of moto."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest

from fedml_storage.api import check_store
from fedml_storage.api.fedml_response import ResponseCode
from tests.cutting_proxy import CuttingProxy

from .conftest import Store
from .test_store_features import CONDITIONAL_DELETE, NOT_IMPLEMENTED

FEATURES = ["write", "read", "list", "If-None-Match", "If-Match on writes", "If-Match on deletes", "delete"]


def _verdicts(response) -> dict[str, bool]:
    return {f.feature: f.ok for f in response.data.findings}


def test_a_store_that_does_everything_passes_and_keeps_no_probe(store: Store) -> None:
    response = check_store(store.service, store.api_key)
    assert response.code == ResponseCode.SUCCESS, response.message
    assert _verdicts(response) == dict.fromkeys(FEATURES, True)
    assert response.data.ok and response.data.to_dict()["ok"] is True
    assert "does all fedml-storage needs" in response.message
    assert store.keys() == []  # the probe is gone
    assert store.client().list().data == []  # and never was a dataset


def test_a_store_ignoring_conditional_requests_fails_naming_each(s3_store: Store,
                                                                 moto_proxy: CuttingProxy) -> None:
    moto_proxy.strip_headers("if-none-match", "if-match")  # accepted, and acted on as if absent
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.check()
    assert response.code == ResponseCode.FAILURE and response.reason == "not_configured"
    verdicts = _verdicts(response)
    assert [f for f, ok in verdicts.items() if not ok] == ["If-None-Match", "If-Match on writes",
                                                           "If-Match on deletes"]
    details = {f.feature: f.detail for f in response.data.findings}
    assert "one is lost" in details["If-None-Match"] and "one writer at a time" in details["If-None-Match"]
    assert "MinIO does" in details["If-Match on deletes"]
    assert "If-None-Match" in response.message and "If-Match on deletes" in response.message
    assert s3_store.keys() == []


def test_a_store_refusing_conditional_deletes_fails_that_check_only(s3_store: Store,
                                                                   moto_proxy: CuttingProxy) -> None:
    moto_proxy.answer(CONDITIONAL_DELETE, *NOT_IMPLEMENTED, times=10)
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.check()
    assert response.code == ResponseCode.FAILURE
    assert [f for f, ok in _verdicts(response).items() if not ok] == ["If-Match on deletes"]
    assert "refused a conditional request" in response.message
    assert s3_store.keys() == []


def test_a_store_refusing_conditional_writes_is_still_checked_for_the_rest(s3_store: Store,
                                                                            moto_proxy: CuttingProxy) -> None:
    moto_proxy.answer(rb"(?is)^PUT .*\r\nif-(none-)?match:", *NOT_IMPLEMENTED, times=10)
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.check()
    assert response.code == ResponseCode.FAILURE and response.data is not None  # findings, not only the first error
    verdicts = _verdicts(response)
    assert [f for f, ok in verdicts.items() if not ok] == ["If-None-Match", "If-Match on writes"], verdicts
    assert set(verdicts) == set(FEATURES)  # write, read, list, delete and conditional deletes tried all the same
    assert "refused a conditional request" in response.message
    assert s3_store.keys() == []


def test_a_store_that_cannot_be_written_fails_with_the_reason(s3_store: Store) -> None:
    with s3_store.client(bucket="no-such-bucket") as client:
        response = client.check()
    assert response.code == ResponseCode.FAILURE and response.data is None
    assert "no-such-bucket" in response.message
    assert s3_store.keys() == []


def test_probes_a_killed_check_left_are_removed_by_cleanup(store: Store) -> None:
    client = store.client()
    probe = "default/probes/0123456789abcdef"
    if store.root is not None:
        path = store.root / probe
        path.parent.mkdir(parents=True)
        path.write_bytes(b"created")
        assert client.cleanup(3600).data["orphaned_objects_removed"] == 0  # young: a check may be running
        hour_ago = time.time() - 3700
        os.utime(path, (hour_ago, hour_ago))
        assert client.cleanup(3600).data["orphaned_objects_removed"] == 1
    else:
        from tests.conftest import s3_client

        s3_client(store.endpoint).put_object(Bucket=store.bucket, Key=probe, Body=b"created")
        assert client.cleanup(3600).data["orphaned_objects_removed"] == 0
        assert client.cleanup(0).data["orphaned_objects_removed"] == 1
    assert store.keys() == []
    store.write("default/probes/notes.txt", b"not a probe")  # not named as check_store names probes
    assert client.cleanup(0).data["orphaned_objects_removed"] == 0 and store.keys() == ["default/probes/notes.txt"]


def test_cleanup_goes_on_where_the_key_may_not_list_probes(s3_store: Store, moto_proxy: CuttingProxy,
                                                           tmp_path: Path) -> None:
    """A key scoped to the data and manifests (denied the probes' folder) still has its leftovers removed."""
    (tmp_path / "f.txt").write_text("kept")
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        client.upload(str(tmp_path / "f.txt")).unwrap()
        kept = s3_store.keys()
        s3_store.write("default/data/f.txt/20200101T000000000000Z-0123abcd/f.txt", b"an interrupted upload's")
        moto_proxy.answer(rb"(?is)^GET [^ ]*prefix=default%2Fprobes", "403 Forbidden", "AccessDenied",
                          "Access Denied", times=10)
        result = client.cleanup(0)
    assert result.ok and result.data["orphaned_objects_removed"] == 1, result.message
    assert s3_store.keys() == kept
    assert any(b"prefix=default%2Fprobes" in head for head in moto_proxy.request_heads)  # it was denied


def test_a_key_that_may_not_list_multipart_uploads_still_has_its_leftovers_removed(
        s3_store: Store, moto_proxy: CuttingProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Denied ListMultipartUploads, cleanup failed after removing the orphans, every time (helper-91)."""
    (tmp_path / "f.txt").write_text("kept")
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        client.upload(str(tmp_path / "f.txt")).unwrap()
        kept = s3_store.keys()
        s3_store.write("default/data/f.txt/20200101T000000000000Z-0123abcd/f.txt", b"an interrupted upload's")
        moto_proxy.answer(rb"(?is)^GET [^ ]*\?uploads", "403 Forbidden", "AccessDenied", "Access Denied", times=10)
        with caplog.at_level(logging.WARNING, "fedml_storage"):
            result = client.cleanup(0)
    assert result.ok and result.data["orphaned_objects_removed"] == 1, result.message
    assert s3_store.keys() == kept
    assert any(re.match(rb"GET [^ ]*\?uploads", head) for head in moto_proxy.request_heads)  # it was denied
    assert "s3:ListBucketMultipartUploads" in caplog.text


def test_a_key_that_may_not_delete_fails_the_check_as_denied(s3_store: Store, moto_proxy: CuttingProxy) -> None:
    moto_proxy.answer(CONDITIONAL_DELETE, "403 Forbidden", "AccessDenied", "Access Denied", times=10)
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.check()
    assert response.code == ResponseCode.FAILURE and response.reason == "access_denied", response.message
    assert "If-Match" not in response.message  # the key's rights, not a missing store feature
    assert "probe" not in response.message  # the plain delete removed it
    assert s3_store.keys() == []


def test_a_key_that_may_not_delete_at_all_is_told_where_the_probe_is(s3_store: Store,
                                                                     moto_proxy: CuttingProxy) -> None:
    moto_proxy.answer(rb"(?is)^DELETE ", "403 Forbidden", "AccessDenied", "Access Denied", times=10)
    with s3_store.client(endpoint_url=moto_proxy.endpoint) as client:
        response = client.check()
    assert response.code == ResponseCode.FAILURE and response.reason == "access_denied", response.message
    [probe] = s3_store.keys()
    assert f"probe object {probe!r} is left" in response.message and "cleanup()" in response.message
    assert s3_store.client().cleanup(0).ok and s3_store.keys() == []  # what the message says
