"""cleanup: what interrupted uploads left is removed once older than the grace period; published data never is."""

from __future__ import annotations

import os
import time as time_module
from pathlib import Path

import pytest

from fedml_storage import StorageClient
from tests.conftest import s3_client

from .conftest import Store, make_tree


def test_cleanup_counts_only_what_the_store_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.catalog import Catalog
    from fedml_storage.catalog_cleanup import cleanup

    class Stubborn(LocalStore):  # a store that refuses some deletions, as S3 reports per key
        def delete_many(self, keys: list[str]) -> list[str]:
            super().delete_many(keys[1:])
            return keys[:1]

    store = Stubborn(tmp_path / "store")
    for n in range(3):
        store.write_bytes(f"default/data/gone{n}/20260101T000000000000Z-0123abc{n}/f", b"x")
    result = cleanup(Catalog(store, "default"), older_than_seconds=0)
    assert result["orphaned_objects_removed"] == 2 and result["objects_not_removed"] == 1
    assert "could not remove 1 object" in caplog.text


def test_cleanup_refuses_a_grace_period_that_is_not_a_number(store: Store, tmp_path: Path) -> None:
    client = store.client()
    assert client.upload(make_tree(tmp_path / "kept")).ok
    keys = store.keys()
    for bad in (-1, "3600", None, True, float("nan")):
        response = client.cleanup(older_than_seconds=bad)
        assert not response.ok and response.reason == "invalid_input" and "older_than_seconds" in response.message
    assert store.keys() == keys


def test_cleanup_with_nothing_old_reads_no_catalog_entry(store: Store, tmp_path: Path, monkeypatch) -> None:
    from fedml_storage.catalog import Catalog

    client = store.client()
    for i in range(3):
        assert client.upload(make_tree(tmp_path / f"ds{i}")).ok
    reads = []
    original = Catalog._read_raw
    monkeypatch.setattr(Catalog, "_read_raw", lambda self, name: reads.append(name) or original(self, name))
    done = client.cleanup(older_than_seconds=3600)
    assert done.ok and done.data["orphaned_objects_removed"] == 0 and reads == []
    keys = store.keys()
    assert client.cleanup(older_than_seconds=0).ok and sorted(reads) == ["ds0", "ds1", "ds2"]
    assert store.keys() == keys  # all of it referenced


def test_cleanup_aborts_idle_multipart_uploads_not_active_ones(s3_store: Store, monkeypatch) -> None:
    from types import SimpleNamespace

    from fedml_storage import catalog_cleanup

    s3 = s3_client(s3_store.endpoint)
    bucket = s3_store.bucket

    def start(key: str) -> str:
        upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"x" * 1024)
        return upload_id

    idle = start("default/data/idle/v1/idle")
    active = s3.create_multipart_upload(Bucket=bucket, Key="default/data/busy/v1/busy")["UploadId"]
    time_module.sleep(2.5)
    now = time_module.time()
    s3.upload_part(Bucket=bucket, Key="default/data/busy/v1/busy", UploadId=active, PartNumber=1, Body=b"y" * 1024)
    # both started over 2 s ago; only the idle one has sent nothing since. The cleanup runs as of `now` (moto keeps
    # whole seconds: a cleanup that came over a second later found the active one's part 2 s old as well)
    monkeypatch.setattr(catalog_cleanup, "time", SimpleNamespace(time=lambda: now))
    result = s3_store.client().cleanup(older_than_seconds=2)
    assert result.ok and result.data["incomplete_uploads_removed"] == 1
    assert result.data["incomplete_uploads_kept"] == 1 and "kept 1 incomplete upload(s)" in result.message
    left = [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert left == [active] and idle not in left


def test_cleanup_counts_an_upload_finished_meanwhile_as_done(s3_store: Store, monkeypatch) -> None:
    from fedml_storage.backends.s3 import S3Store

    s3 = s3_client(s3_store.endpoint)
    key = "default/data/racing/v1/racing"
    s3.create_multipart_upload(Bucket=s3_store.bucket, Key=key)
    real_last_part_at = S3Store._last_part_at

    def finished_meanwhile(self, key: str, upload_id: str) -> float:
        when = real_last_part_at(self, key, upload_id)
        s3.abort_multipart_upload(Bucket=s3_store.bucket, Key=key, UploadId=upload_id)  # another actor ends it
        return when

    monkeypatch.setattr(S3Store, "_last_part_at", finished_meanwhile)
    result = s3_store.client().cleanup(older_than_seconds=0)
    assert result.ok and result.data["incomplete_uploads_removed"] == 0, result.message


def test_cleanup_never_takes_a_short_listing_of_the_catalog_for_the_truth(store: Store, tmp_path: Path,
                                                                            monkeypatch) -> None:
    from fedml_storage.catalog import Catalog

    client = store.client()
    assert client.upload(make_tree(tmp_path / "kept")).ok
    data = [k for k in store.keys() if "/data/" in k]
    monkeypatch.setattr(Catalog, "_listed", lambda self, starting: iter(()))  # the listing came back empty
    response = client.cleanup(older_than_seconds=0)
    assert response.ok and response.data["orphaned_objects_removed"] == 0, response.message
    assert [k for k in store.keys() if "/data/" in k] == data
    monkeypatch.undo()
    assert client.download("kept", tmp_path / "out").ok


def test_local_cleanup_counts_and_removes_only_its_own_namespaces_temp_files(tmp_path: Path) -> None:
    """helper-98: team a's cleanup counted team b's upload in progress as its own and advised older_than_seconds=0,
    which then removed it under team b's feet."""
    root = tmp_path / "store"
    a, b = (StorageClient(service="LOCAL", local_root=str(root), namespace=ns) for ns in ("team-a", "team-b"))
    (tmp_path / "f.txt").write_text("x")
    assert a.upload(str(tmp_path / "f.txt")).ok and b.upload(str(tmp_path / "f.txt")).ok
    temp = root / ".tmp"
    for name in ("team-a+data+young", "team-a+manifests+young", "team-b+data+young", "team-b+data+old", "tmpold"):
        (temp / name).write_bytes(b"part")
    for name in ("team-b+data+old", "tmpold"):  # (a release before temp files were named)
        os.utime(temp / name, (1, 1))
    kept = a.cleanup(older_than_seconds=30 * 86400)  # (it said "2.592e+06 s")
    assert kept.data["incomplete_uploads_kept"] == 1 and kept.data["incomplete_uploads_removed"] == 1, kept.message
    assert "kept 1 incomplete upload(s) written to in the last 2592000 s" in kept.message
    kept = a.cleanup(older_than_seconds=3600)
    assert kept.data["incomplete_uploads_kept"] == 1 and kept.data["incomplete_uploads_removed"] == 0, kept.message
    assert sorted(p.name for p in temp.iterdir()) == ["team-a+data+young", "team-a+manifests+young",
                                                        "team-b+data+old", "team-b+data+young"]
    assert a.cleanup(older_than_seconds=0).data["incomplete_uploads_removed"] == 2
    assert sorted(p.name for p in temp.iterdir()) == ["team-b+data+old", "team-b+data+young"]
    assert b.cleanup(older_than_seconds=3600).data["incomplete_uploads_removed"] == 1
    assert [p.name for p in temp.iterdir()] == ["team-b+data+young"]
    assert a.download("f.txt", tmp_path / "a").ok and b.download("f.txt", tmp_path / "b").ok


def test_temp_file_names_stay_short_for_the_longest_namespace(tmp_path: Path) -> None:
    """A 128-character namespace made 147-character temp names, past eCryptfs's 143 (every commit failed there)."""
    from fedml_storage.backends.local import _temp_prefix

    namespace = "n" * 128
    assert max(len(_temp_prefix(f"{namespace}/{kind}/x")) for kind in ("data", "manifests", "probes")) + 8 <= 143
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"), namespace=namespace)
    (tmp_path / "f.txt").write_text("x")
    assert client.upload(str(tmp_path / "f.txt")).ok
    stale = tmp_path / "store" / ".tmp" / (_temp_prefix(f"{namespace}/data/") + "killed")
    stale.write_bytes(b"part")
    os.utime(stale, (1, 1))
    assert client.cleanup(older_than_seconds=3600).data["incomplete_uploads_removed"] == 1 and not stale.exists()
