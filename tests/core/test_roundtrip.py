"""Every API function on LOCAL and S3: files, trees, metadata, list, delete, overwrite, versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedml_storage import StorageClient, api
from fedml_storage.api.fedml_response import ResponseCode

from .conftest import Store, make_tree, tree_bytes


def test_directory_round_trip_with_metadata(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "mydata")
    up = api.upload(str(src), api_key=store.api_key, service=store.service, description="nested tree",
                    metadata={"owner": "ml-team", "split": "train"}, tag_list=["images", "v1"])
    assert up.code == ResponseCode.SUCCESS, up.message
    assert up.data.endswith("/mydata.zip") and up.data.name == "mydata" and up.data.kind == "directory"
    assert up.data.file_count == 5 and not up.data.skipped

    down = api.download("mydata", api_key=store.api_key, service=store.service, dest_path=str(tmp_path / "out"),
                        show_progress=False)
    assert down.code == ResponseCode.SUCCESS, down.message
    assert down.data == str((tmp_path / "out" / "mydata").resolve())
    assert tree_bytes(Path(down.data)) == tree_bytes(src)

    meta = api.get_storage_metadata("mydata", api_key=store.api_key, service=store.service)
    assert meta.code == ResponseCode.SUCCESS
    m = meta.data
    assert (m.dataName, m.description, m.tag_list, m.kind) == ("mydata", "nested tree", ["images", "v1"], "directory")
    assert m.createdAt and m.updatedAt and m.size.endswith("KB") and m.download_url == up.data
    assert m.version == up.data.version and m.sha256 == up.data.sha256 and m.service == store.service
    json.dumps(m.to_dict())
    json.dumps(up.data.to_dict())

    user = api.get_storage_user_defined_metadata("mydata", api_key=store.api_key, service=store.service)
    assert user.data == {"owner": "ml-team", "split": "train"}


def test_file_naming_and_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    src.write_bytes(os.urandom(300_000))
    up = api.upload(str(src), api_key=store.api_key, service=store.service, name="weights")
    assert up.code == ResponseCode.SUCCESS, up.message
    assert up.data.name == "weights.pt"  # the file's extension is kept, as the reference does
    down = api.download("weights.pt", api_key=store.api_key, service=store.service, dest_path=str(tmp_path / "d"))
    assert Path(down.data) == (tmp_path / "d" / "weights.pt").resolve()
    assert Path(down.data).read_bytes() == src.read_bytes()
    assert api.get_storage_user_defined_metadata("weights.pt", store.api_key, service=store.service).data == {}
    missed = api.download("weights", api_key=store.api_key, service=store.service, dest_path=str(tmp_path / "m"))
    assert missed.code == ResponseCode.FAILURE and missed.reason == "not_found"
    assert f"on {store.service} (did you mean 'weights.pt'? a file keeps its extension)" in missed.message
    assert not (tmp_path / "m").exists()


def test_empty_file_and_unicode_name(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "leere Datei ü.txt"
    src.touch()
    client = store.client()
    up = client.upload(src)
    assert up.ok, up.message
    down = client.download("leere Datei ü.txt", tmp_path / "out")
    assert down.ok and Path(down.data).read_bytes() == b""


def test_list_delete_and_unknown_names(store: Store, tmp_path: Path) -> None:
    client = store.client()
    for name in ("b-set", "a-set"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text(name)
        assert client.upload(tmp_path / name, description=f"desc {name}").ok
    listed = api.list_storage_objects(store.api_key, service=store.service)
    assert listed.code == ResponseCode.SUCCESS
    assert [(o.dataName, o.description) for o in listed.data] == [("a-set", "desc a-set"), ("b-set", "desc b-set")]

    deleted = api.delete("a-set", store.service, api_key=store.api_key)
    assert deleted.code == ResponseCode.SUCCESS and deleted.data is True
    assert [o.dataName for o in client.list().data] == ["b-set"]
    assert not any("/a-set/" in k or "/a-set." in k for k in store.keys())  # data and manifest gone

    again = api.delete("a-set", store.service, api_key=store.api_key)
    assert again.code == ResponseCode.FAILURE and again.data is False and "a-set" in again.message
    missing = api.download("a-set", store.api_key, store.service, dest_path=str(tmp_path / "o"))
    assert missing.code == ResponseCode.FAILURE and missing.reason == "not_found"
    assert "list_storage_objects" in missing.message
    assert not (tmp_path / "o" / "a-set").exists()
    assert api.get_storage_metadata("a-set", store.api_key, service=store.service).reason == "not_found"


def test_overwrite_creates_version_and_drops_old_data(store: Store, tmp_path: Path) -> None:
    client = store.client()
    src = tmp_path / "data.txt"
    src.write_text("one")
    first = client.upload(src).data
    src.write_text("two!")
    second = client.upload(src).data
    assert second.version != first.version and not second.skipped
    assert client.download("data.txt", tmp_path / "o").data and (tmp_path / "o" / "data.txt").read_text() == "two!"
    old = client.download("data.txt", tmp_path / "o2", version=first.version)
    assert old.code == ResponseCode.FAILURE and "is not kept" in old.message and "keep_versions" in old.message
    data_keys = [k for k in store.keys() if "/data/" in k]
    assert data_keys == [f"default/data/data.txt/{second.version}/data.txt"]  # replaced data removed


def test_a_version_not_kept_names_the_newest_kept_not_all(tmp_path: Path) -> None:
    from fedml_storage.catalog import Manifest, VersionRecord, new_version_id
    from fedml_storage.errors import InvalidInput, NotFound

    versions = [VersionRecord(version=new_version_id(), key=f"k{i}", kind="file", size=1, sha256="0" * 64,
                              content_digest="0" * 64, source_size=1, file_count=1, created_at="t") for i in range(1000)]
    manifest = Manifest(name="big", created_at="t", updated_at="t", versions=versions)
    with pytest.raises(NotFound) as gone:
        manifest.find(new_version_id())
    message = str(gone.value)
    assert all(v.version in message for v in versions[:5]) and versions[5].version not in message
    assert "and 995 older" in message and len(message) < 600
    with pytest.raises(InvalidInput) as bad:
        manifest.find("v" * 100_000)  # a wrong value pasted in: the message quotes its start only
    assert "not a version id" in str(bad.value) and len(str(bad.value)) < 700


def test_keep_versions_lets_downstream_pin_a_version(store: Store, tmp_path: Path) -> None:
    client = store.client(keep_versions=2)
    src = tmp_path / "d"
    src.mkdir()
    (src / "f.txt").write_text("v1")
    v1 = client.upload(src).data.version
    (src / "f.txt").write_text("v2 longer")
    v2 = client.upload(src).data.version
    assert client.get_metadata("d").data.versions == [v2, v1]
    pinned = client.download("d", tmp_path / "pinned", version=v1)
    assert pinned.ok, pinned.message
    assert (tmp_path / "pinned" / "d" / "f.txt").read_text() == "v1"
    (src / "f.txt").write_text("v3 longest")
    client.upload(src)
    assert client.download("d", tmp_path / "gone", version=v1).reason == "not_found"


def test_a_lowered_keep_versions_applies_at_the_next_change_never_on_a_no_op(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "w.txt"
    src.write_text("v1")
    v1 = store.client(keep_versions=3).upload(src).data
    src.write_text("v2 longer")
    v2 = store.client(keep_versions=3).upload(src).data
    again = store.client(keep_versions=1).upload(src)  # a retry, or another writer's default: drops nothing
    assert again.ok and again.data.skipped
    assert store.client().get_metadata("w.txt").data.versions == [v2.version, v1.version]
    # nor does one that only updates the description, tags or metadata (a templated description, say)
    described = store.client(keep_versions=1).upload(src, description="re-run", tag_list=["b", "a"])
    assert described.ok and described.data.skipped
    meta = store.client().get_metadata("w.txt").data
    assert (meta.description, meta.versions) == ("re-run", [v2.version, v1.version])
    assert store.client().download("w.txt", tmp_path / "old", version=v1.version).ok
    assert (tmp_path / "old" / "w.txt").read_text() == "v1"
    src.write_text("v3 longest")
    v3 = store.client(keep_versions=1).upload(src).data
    assert store.client().get_metadata("w.txt").data.versions == [v3.version]
    assert [k for k in store.keys() if "/data/" in k] == [f"default/data/w.txt/{v3.version}/w.txt"]


def test_client_settings_repr_and_settings_hide_secret(store: Store) -> None:
    client = StorageClient(service=store.service, api_key="AKIAXXXXXXXX:very-secret-value-123")
    assert "very-secret" not in repr(client)
    if store.service != "LOCAL":
        assert "very-secret" not in repr(client.settings)
        assert client.settings.masked_dict()["api_key"] == "****"


def test_empty_directory_round_trip(store: Store, tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    client = store.client()
    up = client.upload(tmp_path / "nothing")
    assert up.ok and up.data.file_count == 0
    assert client.upload(tmp_path / "nothing").data.skipped
    down = client.download("nothing", tmp_path / "out")
    assert down.ok and list(Path(down.data).iterdir()) == []
    root = client.upload("/")
    assert root.reason == "invalid_input" and "pass name=" in root.message


def test_digest_cache_never_hides_a_change(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "cached")
    old = 1_600_000_000
    for p in src.rglob("*"):
        os.utime(p, (old, old))  # old enough that the cache trusts these stats
    client = store.client()
    first = client.upload(src).data
    assert client.upload(src).data.skipped  # served by the tree digest cache
    (src / "sub" / "deeper" / "c.csv").write_text("x,y\n9,9\n")  # same size, new mtime
    changed = client.upload(src).data
    assert not changed.skipped and changed.content_digest != first.content_digest
    down = client.download("cached", tmp_path / "out")
    assert (Path(down.data) / "sub" / "deeper" / "c.csv").read_text() == "x,y\n9,9\n"


def test_downloads_get_the_usual_permissions(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "perm"
    src.mkdir()
    (src / "a.txt").write_text("shared")
    (tmp_path / "single.txt").write_text("one")
    client = store.client()
    assert client.upload(src).ok and client.upload(tmp_path / "single.txt").ok
    mask = os.umask(0o022)
    os.umask(mask)
    folder = Path(client.download("perm", tmp_path / "out").data)
    single = Path(client.download("single.txt", tmp_path / "out").data)
    assert (folder.stat().st_mode & 0o777) == 0o777 & ~mask
    assert (single.stat().st_mode & 0o777) == 0o666 & ~mask


def test_asset_uri_forms() -> None:
    from fedml_storage import asset_uri

    assert asset_uri("team", "café data") == "fedml://team/caf%C3%A9%20data"  # Airflow: ASCII only
    assert asset_uri("team", "café data", iri=True) == "fedml://team/café%20data"  # Prefect: no '%' for letters
    assert asset_uri("team", "plain-1.csv", iri=True) == asset_uri("team", "plain-1.csv") == "fedml://team/plain-1.csv"
    assert asset_uri("team", "a+b(1)&c", iri=True) == "fedml://team/a+b(1)%26c"  # Prefect refuses '&', not '+()'
    assert asset_uri("team", "a\u00a0b", iri=True) == "fedml://team/a%C2%A0b"  # invisible spaces stay visible
    assert asset_uri("team", "データ・セット–€", iri=True) == "fedml://team/データ・セット–€"  # non-ASCII symbols too


def test_ready_says_whether_a_downstream_step_can_start(store: Store, tmp_path: Path) -> None:
    client = store.client()
    src = tmp_path / "f.txt"
    src.write_text("x")
    waiting = client.ready("f.txt")
    assert waiting.ok and waiting.data == (False, "dataset 'f.txt' not stored yet", None, None)
    assert client.upload(src, metadata={"status": "writing"}).ok
    assert client.ready("f.txt").data.ready
    assert client.ready("f.txt", "status", "done").data[:2] == (False, "dataset 'f.txt': status='writing' (waiting "
                                                                     "for 'done')")
    assert not client.ready("f.txt", "owner").data.ready
    assert client.upload(src, metadata={"status": "done"}).ok
    done = client.ready("f.txt", "status", "done")
    assert done.data.ready and "status='done'" in done.data.detail
    bad = client.ready("../x")
    assert not bad.ok and bad.reason == "invalid_input"


def test_ready_waits_for_a_version_and_tells_which_one_a_download_gets(store: Store, tmp_path: Path) -> None:
    client = store.client(keep_versions=2)
    src = tmp_path / "f.txt"
    src.write_text("one")
    first = client.upload(src).data
    now = client.ready("f.txt").data
    assert now.ready and (now.version, now.sha256) == (first.version, first.sha256)
    src.write_text("two")
    second = client.upload(src).data
    assert client.ready("f.txt").data.version == second.version
    pinned = client.ready("f.txt", version=first.version).data  # still kept: ready, and that one
    assert pinned.ready and (pinned.version, pinned.sha256) == (first.version, first.sha256)
    later = client.ready("f.txt", version="20991231T000000000000Z-00000000").data
    assert not later.ready and "not stored" in later.detail and later.version == second.version
    src.write_text("three")
    assert client.upload(src).ok  # keep_versions=2: the first is dropped
    gone = client.ready("f.txt", version=first.version)  # older than the current one: it can never come
    assert gone.reason == "not_found" and not gone.retryable and "is not kept" in gone.message, gone.message
    for name in ("f.txt", "not-stored-yet"):  # malformed: refused at once, also before the name is stored
        bad = client.ready(name, version="None")
        assert bad.reason == "invalid_input" and "not a version id" in bad.message, bad.message


def test_delete_with_missing_ok_succeeds_for_a_name_already_gone(store: Store, tmp_path: Path) -> None:
    client = store.client()
    (tmp_path / "f.txt").write_text("x")
    assert client.upload(tmp_path / "f.txt").ok
    assert client.delete("f.txt", missing_ok=True).data is True
    again = client.delete("f.txt", missing_ok=True)  # a retry after the first went through
    assert again.ok and again.data is False and "nothing to delete" in again.message
    strict = client.delete("f.txt")
    assert not strict.ok and strict.reason == "not_found"
    assert not client.delete("../x", missing_ok=True).ok  # bad input stays bad input


def test_downloaded_folders_keep_modes_only_as_the_umask_allows(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "modes"
    src.mkdir()
    for name, mode in (("open.sh", 0o777), ("plain.txt", 0o644)):
        (src / name).write_text(name)
        os.chmod(src / name, mode)
    client = store.client()
    assert client.upload(src).ok
    mask = os.umask(0o027)
    try:
        down = Path(client.download("modes", tmp_path / "out").data)
    finally:
        os.umask(mask)
    assert (down / "open.sh").stat().st_mode & 0o777 == 0o750  # never world-writable by the uploader's choice
    assert (down / "plain.txt").stat().st_mode & 0o777 == 0o640


def test_the_digest_cache_stays_bounded_and_keeps_the_newest(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    import fedml_storage.digests
    from fedml_storage.config import storage_home

    monkeypatch.setattr(fedml_storage.digests, "RACY_SECONDS", 0)
    monkeypatch.setattr(fedml_storage.digests, "MAX_FILES", 5)
    monkeypatch.setattr(fedml_storage.digests, "MAX_TREES", 2)
    client = StorageClient(service="LOCAL")
    for run in range(4):  # a pipeline uploading from a fresh temp folder each run
        src = tmp_path / f"run-{run}" / "batch"
        src.mkdir(parents=True)
        for i in range(3):
            (src / f"{i}.txt").write_text(f"{run}-{i}")
        assert client.upload(src).ok
    db = sqlite3.connect(storage_home() / "cache" / "digests.sqlite")
    paths = sorted(p for (p,) in db.execute("SELECT path FROM file_digests"))
    roots = sorted(r for (r,) in db.execute("SELECT root FROM trees"))
    db.close()
    assert len(paths) == 5 and all(f"run-3{os.sep}" in p for p in paths[-3:])  # the newest run's files kept
    assert all(f"run-2{os.sep}" in p for p in paths[:2])
    assert roots == [str(tmp_path / "run-2" / "batch"), str(tmp_path / "run-3" / "batch")]
    assert client.upload(tmp_path / "run-3" / "batch").data.skipped  # still served from the cache
    client.close()

    from fedml_storage.trees import Entry

    def state(mtime: int, ino: int) -> Entry:
        return Entry("f", "/", False, 1, mtime, mtime, ino, 0o644)
    from fedml_storage.digests import DigestCache

    cache = DigestCache(tmp_path / "counted.sqlite")
    cache.store([(f"/stable/{i}", state(1, i), "0" * 64) for i in range(4)])
    for n in range(5):  # one file changed and stored again and again: rewrites are not new rows
        cache.store([("/hot", state(n, 9), str(n) * 64)])
    items = [(f"/stable/{i}", state(1, i)) for i in range(4)] + [("/hot", state(4, 9))]
    assert len(cache.lookup(items)) == 5  # all five distinct files kept under a cap of five
    cache.close()


def test_ready_fails_at_once_for_a_version_dropped_though_newer_than_the_kept_one(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fedml_storage.uploads

    client = store.client()
    src = tmp_path / "f.txt"
    src.write_text("one")
    later = client.upload(src).data  # committed first, though its writer started second
    monkeypatch.setattr(fedml_storage.uploads, "new_version_id", lambda: "20000101T000000000000Z-00000000")
    src.write_text("two")
    earlier = client.upload(src).data  # started first, committed last: current, and keep_versions=1 drops `later`
    assert earlier.version < later.version and client.get_metadata("f.txt").data.version == earlier.version
    gone = client.ready("f.txt", version=later.version)  # newer than every kept version, yet it can never come
    assert gone.reason == "not_found" and "is not kept" in gone.message, gone.message
    assert not client.ready("f.txt", version="20991231T000000000000Z-00000000").data.ready  # a future one waits
