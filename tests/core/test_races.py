"""Races with other writers of a dataset, and lost answers: one complete version, or a failure that says why."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fedml_storage import ResponseCode, StorageClient
from fedml_storage.backends.local import LocalStore
from fedml_storage.catalog import Catalog

from .conftest import Store, make_tree, tree_bytes


def _current_key(store: Store, name: str) -> str:
    return json.loads(store.read(f"default/manifests/{name}.json"))["versions"][0]["key"]


def _replace_during_first_fetch(reader: StorageClient, replace) -> list[str]:
    """Make `replace()` run just after `reader` has read the catalog, before it fetches any data."""
    reader.exists("warm-up")  # opens the store
    real = reader._store.get_into
    fetched: list[str] = []

    def fetch(key, sink, size, progress=None, start=0):
        if not fetched:
            replace()
        fetched.append(key)
        return real(key, sink, size, progress, start)

    reader._store.get_into = fetch
    return fetched


def test_a_download_racing_a_reupload_gets_the_new_version(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ds")
    assert store.client().upload(src).ok

    def reupload() -> None:  # keep_versions=1: the version the reader chose loses its data
        (src / "a.txt").write_text("the new version\n")
        assert store.client().upload(src).ok

    reader = store.client()
    fetched = _replace_during_first_fetch(reader, reupload)
    got = reader.download("ds", tmp_path / "out")
    assert got.ok, got.message
    assert len(fetched) == 2 and fetched[0] != fetched[1]
    assert tree_bytes(tmp_path / "out" / "ds") == tree_bytes(src)
    assert got.data.version == store.client().get_metadata("ds").data.version
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ds"]


def test_a_download_of_a_version_dropped_meanwhile_says_it_is_not_kept(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"one")
    first = store.client().upload(src).data.version

    def reupload() -> None:
        src.write_bytes(b"two")
        assert store.client().upload(src).ok

    reader = store.client()
    _replace_during_first_fetch(reader, reupload)
    got = reader.download("w.bin", tmp_path / "out", version=first)
    assert not got.ok and got.data is None
    assert f"version {first!r}" in got.message and "not kept" in got.message and "keep_versions" in got.message
    assert not (tmp_path / "out").exists()  # made for this call, removed with it


def test_a_dataset_replaced_during_every_fetch_is_a_retryable_conflict(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"0")
    assert store.client().upload(src).ok
    reader = store.client()
    reader.exists("warm-up")
    real = reader._store.get_into

    def always_replaced(key, sink, size, progress=None, start=0):
        src.write_bytes(os.urandom(8))
        assert store.client().upload(src).ok  # drops the data the reader is about to fetch
        return real(key, sink, size, progress, start)

    reader._store.get_into = always_replaced
    got = reader.download("w.bin", tmp_path / "out")
    assert not got.ok and got.reason == "conflict" and got.retryable and "kept being replaced" in got.message
    assert not (tmp_path / "out").exists()


def test_data_lost_from_the_store_is_reported_and_a_reupload_stores_it_again(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(5000))
    client = store.client()
    assert client.upload(src).ok
    store.remove(_current_key(store, "w.bin"))  # removed outside fedml-storage (or by a too eager cleanup)
    lost = client.download("w.bin", tmp_path / "out")
    assert not lost.ok and "missing from the store" in lost.message and "upload the dataset again" in lost.message
    assert not (tmp_path / "out").exists()
    again = client.upload(src)  # unchanged content, but its data is gone: sent again, not skipped
    assert again.ok and not again.data.skipped, again.message
    got = client.download("w.bin", tmp_path / "out")
    assert got.ok and (tmp_path / "out" / "w.bin").read_bytes() == src.read_bytes()


def test_not_found_hint_never_suggests_the_name_asked_for(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    catalog = Catalog(store, "default")
    store.write_bytes("default/manifests/x.bin.json", b"{}")  # stored again just after a miss
    assert catalog.similar("x.bin") == ""
    assert "'x.bin'" in catalog.similar("x")


def test_cleanup_removes_empty_folders_killed_uploads_left(tmp_path: Path) -> None:
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    src = tmp_path / "w.bin"
    src.write_bytes(b"kept")
    assert client.upload(src).ok
    data = tmp_path / "store" / "default" / "data"
    killed, recent = data / "gone" / "20260101T000000000000Z-dead", data / "busy" / "20990101T000000000000Z-live"
    killed.mkdir(parents=True)
    recent.mkdir(parents=True)  # an upload that has just started
    past = time.time() - 7200
    for folder in (killed, killed.parent):
        os.utime(folder, (past, past))
    assert client.cleanup(3600).ok
    assert not killed.parent.exists() and recent.is_dir()
    assert client.download("w.bin", tmp_path / "out").ok  # folders holding data stay


def test_an_unchanged_upload_trusts_the_catalog_when_the_data_cannot_be_checked(store: Store, tmp_path: Path) -> None:
    from fedml_storage.errors import AccessDenied

    src = tmp_path / "w.bin"
    src.write_bytes(b"kept")
    client = store.client()
    assert client.upload(src).ok
    client._store.head = lambda key: (_ for _ in ()).throw(AccessDenied("may write but not read data"))
    again = client.upload(src)
    assert again.ok and again.data.skipped, again.message  # as before the check existed: nothing is sent


def test_data_replaced_between_reading_the_catalog_and_checking_it_is_no_false_alarm(
        store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "w.bin"
    src.write_bytes(b"one")
    client = store.client()
    assert client.upload(src).ok
    real_head = client._store.head
    replaced: list[bool] = []

    def head_after_a_replace(key):
        if not replaced:  # another writer replaces the dataset (dropping the data just read about) right now
            replaced.append(True)
            other = tmp_path / "other" / "w.bin"
            other.parent.mkdir()
            other.write_bytes(b"two")
            assert store.client().upload(other).ok
        return real_head(key)

    client._store.head = head_after_a_replace
    src.write_bytes(b"two")  # the same content the other writer stored
    again = client.upload(src)
    assert again.ok and again.data.skipped, again.message  # judged against the entry there now
    assert "missing or damaged" not in caplog.text


@pytest.mark.parametrize("keep", [1, 2])
def test_a_commit_whose_answer_was_lost_and_was_built_upon_is_never_published_twice(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    """Our manifest write lands but its answer is lost; another upload commits on top before our retry, which
    then fails its precondition. Ours must not be put back in front (with its data already dropped, for keep=1)."""
    from fedml_storage.backends.s3 import S3Store
    from fedml_storage.errors import PreconditionFailed

    for label in ("base", "a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "ds.txt").write_text(f"content {label}")
    assert store.client(keep_versions=keep).upload(tmp_path / "base" / "ds.txt").ok
    backend = LocalStore if store.service == "LOCAL" else S3Store
    write = backend.write_bytes
    lost: list[bool] = []

    def landed_but_answer_lost(self, key, data, **kw):
        etag = write(self, key, data, **kw)
        if key.endswith("/manifests/ds.txt.json") and not lost:
            lost.append(True)
            monkeypatch.setattr(backend, "write_bytes", write)
            assert store.client(keep_versions=keep).upload(tmp_path / "b" / "ds.txt").ok  # b commits on top
            raise PreconditionFailed(key)  # what the retry of our write, sent after b's, answers
        return etag

    monkeypatch.setattr(backend, "write_bytes", landed_but_answer_lost)
    a = store.client(keep_versions=keep).upload(tmp_path / "a" / "ds.txt")
    client = store.client(keep_versions=keep)
    meta = client.get_metadata("ds.txt").data
    assert len(set(meta.versions)) == len(meta.versions) == keep
    for version in meta.versions:  # every kept version is there and whole
        assert client.download("ds.txt", tmp_path / version, version=version).ok
    assert (Path(client.download("ds.txt", tmp_path / "now").data)).read_text() == "content b"  # b is current
    if keep == 1:  # a was published, then replaced by b, which dropped its data
        assert a.reason == "conflict" and "replaced by another upload" in a.message, a.message
    else:  # a was published and b kept it
        assert a.ok and a.data.version == meta.versions[1], a.message


def test_a_delete_whose_answer_was_lost_reports_success(store: Store, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedml_storage.backends.s3 import S3Store
    from fedml_storage.errors import PreconditionFailed

    (tmp_path / "gone.txt").write_text("x")
    client = store.client()
    assert client.upload(tmp_path / "gone.txt").ok
    backend = LocalStore if store.service == "LOCAL" else S3Store
    delete = backend.delete

    def deleted_but_answer_lost(self, key, **kw):
        delete(self, key, **kw)
        raise PreconditionFailed(key)  # what a retry of the delete may answer

    monkeypatch.setattr(backend, "delete", deleted_but_answer_lost)
    response = client.delete("gone.txt")
    monkeypatch.undo()
    assert response.ok and response.data is True, response.message
    assert [k for k in store.keys() if "gone" in k] == []  # its data went too


@pytest.mark.parametrize("keep_versions", [1, 3])
def test_a_delete_keeps_what_another_writer_published_meanwhile(store: Store, tmp_path: Path,
                                                                keep_versions: int) -> None:
    """The delete's conditional request failed on the newer catalog entry, and the delete then retried on that
    entry: an upload that had reported success was erased, unseen by whoever asked for the delete. Not retryable
    either: a retry (Airflow's, Prefect's) would erase it just the same."""
    (tmp_path / "ds.csv").write_text("one")
    deleter = store.client(keep_versions=keep_versions)
    assert deleter.upload(tmp_path / "ds.csv").ok
    published = _publish_before_the_delete(deleter, lambda: store.client(keep_versions=keep_versions).upload(
        _write(tmp_path / "ds.csv", "two, newer")))
    response = deleter.delete("ds.csv")
    assert published and published[0].ok, published
    assert response.code == ResponseCode.FAILURE and response.reason == "changed" and not response.retryable
    assert response.message.startswith("delete of 'ds.csv' failed: nothing was deleted: another writer published")
    assert "delete again" in response.message
    assert len(store.client().get_metadata("ds.csv").data.versions) == min(2, keep_versions)  # all still there
    got = store.client().download("ds.csv", dest_path=str(tmp_path / "out"))
    assert got.ok and Path(got.data).read_text() == "two, newer", got.message
    assert deleter.delete("ds.csv").data is True  # deleting again removes it, data and all
    assert [k for k in store.keys() if "ds.csv" in k] == []


def test_a_delete_whose_answer_was_lost_before_a_new_publish_reports_success(store: Store, tmp_path: Path) -> None:
    """The delete went through, its answer was lost, and its retry met an entry published anew meanwhile: that was
    reported as a conflict with nothing deleted, and the data of what was deleted was left behind."""
    from fedml_storage.errors import PreconditionFailed

    (tmp_path / "ds.csv").write_text("one")
    deleter = store.client()
    assert deleter.upload(tmp_path / "ds.csv").ok
    first = [k for k in store.keys() if "/data/" in k]
    real = deleter._store.delete

    def lost_answer(key: str, **kw) -> None:
        real(key, **kw)
        if key.endswith("manifests/ds.csv.json"):
            assert store.client().upload(_write(tmp_path / "ds.csv", "two, newer")).ok
            raise PreconditionFailed(key)  # what the resent delete answers

    deleter._store.delete = lost_answer
    response = deleter.delete("ds.csv")
    assert response.ok and response.data is True, response.message
    assert not set(first) & set(store.keys())  # the deleted version's data went with it
    got = store.client().download("ds.csv", dest_path=str(tmp_path / "out"))
    assert got.ok and Path(got.data).read_text() == "two, newer", got.message


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _publish_before_the_delete(deleter: StorageClient, publish) -> list:
    """Make `publish()` run once the delete has read the catalog entry, just before its conditional delete."""
    real = deleter._store.delete
    published: list = []

    def publish_first(key: str, **kw) -> None:
        if not published and key.endswith(".json"):
            published.append(publish())
        return real(key, **kw)

    deleter._store.delete = publish_first
    return published


def test_an_unchanged_re_upload_reports_the_version_it_described(store: Store, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Others publish other content, then this content again, between its read and its commit (keep_versions 1):
    the version it read is gone, and the one it wrote its description onto is what it must report."""
    from fedml_storage import uploads

    a, b = tmp_path / "a" / "w.bin", tmp_path / "b" / "w.bin"
    for path, byte in ((a, b"A"), (b, b"B")):
        path.parent.mkdir()
        path.write_bytes(byte * 100)
    client = store.client()
    client.upload(a).unwrap()
    read_first = client.upload(b).unwrap().version
    real = uploads._read_stored
    republished: list[str] = []

    def then_others_write(catalog, name):
        found = real(catalog, name)
        if not republished:
            republished.append("")  # the others' own reads pass through
            store.client().upload(a).unwrap()  # drops read_first
            republished[0] = store.client().upload(b).unwrap().version  # B's content again, a new version
        return found

    monkeypatch.setattr(uploads, "_read_stored", then_others_write)
    up = client.upload(b, description="B, described").unwrap()
    assert up.skipped and up.version == republished[0] != read_first
    meta = client.get_metadata("w.bin").data
    assert (meta.version, meta.description) == (up.version, "B, described")
    pinned = client.download("w.bin", tmp_path / "out", version=up.version)  # the hand-off downstream
    assert pinned.ok and (tmp_path / "out" / "w.bin").read_bytes() == b"B" * 100
