"""Corruption, crashes and concurrent writers: the old or the new dataset, never a mix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time as time_module
from pathlib import Path

import pytest

from fedml_storage import StorageClient
from fedml_storage.api.fedml_response import ResponseCode


from .conftest import Store, make_tree, plant_archive, tree_bytes, zip_of


def _manifest(store: Store, name: str) -> dict:
    return json.loads(store.read(f"default/manifests/{name}.json"))


def test_corrupted_object_fails_and_leaves_nothing(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ds")
    client = store.client()
    assert client.upload(src).ok
    key = _manifest(store, "ds")["versions"][0]["key"]
    data = bytearray(store.read(key))
    data[len(data) // 2] ^= 0xFF
    store.write(key, bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    response = client.download("ds", dest)
    assert not response.ok and "corrupt" in response.message
    assert list(dest.iterdir()) == []
    assert "delete('ds')" in response.message  # the advice works:
    assert client.delete("ds").ok and client.upload(src).ok and client.download("ds", dest).ok


def test_failed_download_removes_the_folders_it_created(store: Store, tmp_path: Path) -> None:
    client = store.client()
    assert client.upload(make_tree(tmp_path / "ds")).ok
    key = _manifest(store, "ds")["versions"][0]["key"]
    store.write(key, store.read(key)[:-10])  # truncated
    (tmp_path / "runs").mkdir()
    response = client.download("ds", tmp_path / "runs" / "today" / "in")
    assert not response.ok and "corrupt" in response.message
    assert list((tmp_path / "runs").iterdir()) == []  # 'today/in' made for this call, and removed with it


def test_download_removes_what_killed_downloads_left(store: Store, tmp_path: Path) -> None:
    client = store.client()
    assert client.upload(make_tree(tmp_path / "ds")).ok
    dest = tmp_path / "out"
    dest.mkdir()
    old_part, old_dir = dest / ".fedml-download-dead.part", dest / ".fedml-download-dead"
    old_part.write_bytes(b"half")
    (old_dir / "half").mkdir(parents=True)
    live_part = dest / ".fedml-download-live.part"  # another download, still writing (and holding its lock)
    live_part.write_bytes(b"busy")
    day_ago = time_module.time() - 25 * 3600
    for p in (old_part, old_dir):
        os.utime(p, (day_ago, day_ago))
    with open(live_part, "rb") as held:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(held, fcntl.LOCK_EX)
        assert client.download("ds", dest).ok
    assert sorted(p.name for p in dest.iterdir()) == [".fedml-download-live.part", "ds"]


def test_crash_between_data_and_manifest_keeps_old_dataset(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "ds"
    src.mkdir()
    (src / "f.txt").write_text("old")
    client = store.client()
    old = client.upload(src).data
    (src / "f.txt").write_text("new content that never gets published")
    # A real crash: the process dies after storing data, before the manifest commit.
    script = textwrap.dedent(
        f"""
        import os, sys
        from fedml_storage import StorageClient
        from fedml_storage.catalog import Catalog
        Catalog.commit = lambda *a, **k: os._exit(17)
        StorageClient(service={store.service!r}, api_key={store.api_key!r}).upload({str(src)!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy(), capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr
    orphans = [k for k in store.keys() if "/data/" in k and old.version not in k]
    assert len(orphans) == 1  # the new data reached the store but is invisible
    meta = client.get_metadata("ds").data
    assert meta.version == old.version
    assert client.download("ds", tmp_path / "out").ok
    assert (tmp_path / "out" / "ds" / "f.txt").read_text() == "old"
    assert client.cleanup(older_than_seconds=3600).data["orphaned_objects_removed"] == 0  # grace period
    cleaned = client.cleanup(older_than_seconds=0)
    assert cleaned.data["orphaned_objects_removed"] == 1
    assert cleaned.message == "cleanup removed 1 unreferenced object(s) and 0 incomplete upload(s)"
    assert [k for k in store.keys() if "/data/" in k] == [k for k in store.keys() if old.version in k]


def test_failed_commit_removes_its_data(store: Store, tmp_path: Path, monkeypatch) -> None:
    from fedml_storage.catalog import Catalog

    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    monkeypatch.setattr(Catalog, "commit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    response = store.client().upload(src)
    assert response.reason == "internal" and "boom" in response.message and "Nothing was published" in response.message
    assert store.keys() == []


def test_commit_applied_but_reported_lost_keeps_its_data(store: Store, tmp_path: Path, monkeypatch) -> None:
    from fedml_storage.catalog import Catalog
    from fedml_storage.errors import TransientError

    src = tmp_path / "f.bin"
    src.write_bytes(b"y" * 1000)
    real_commit = Catalog.commit

    def lost_reply(self, *a, **k):  # the manifest write lands, then the connection drops before the reply
        real_commit(self, *a, **k)
        raise TransientError("connection reset while reading the reply")

    monkeypatch.setattr(Catalog, "commit", lost_reply)
    response = store.client().upload(src)
    assert not response.ok and response.retryable
    monkeypatch.setattr(Catalog, "commit", real_commit)
    client = store.client()
    assert client.download("f.bin", tmp_path / "out").ok  # the manifest's data was not removed
    assert (tmp_path / "out" / "f.bin").read_bytes() == b"y" * 1000
    assert client.upload(src).data.skipped  # and the retry finds it stored


def test_two_concurrent_writers_leave_one_complete_dataset(store: Store, tmp_path: Path) -> None:
    sources = []
    for i in range(2):
        src = tmp_path / f"w{i}" / "shared"
        src.mkdir(parents=True)
        for j in range(30):
            (src / f"part-{j}.bin").write_bytes(bytes([i]) * (2000 + j))
        sources.append(src)
    barrier = threading.Barrier(2)
    results = [None, None]

    def write(i: int) -> None:
        client = store.client(keep_versions=1)
        barrier.wait()
        results[i] = client.upload(sources[i])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.ok for r in results), [r.message for r in results]
    final = store.client().download("shared", tmp_path / "out")
    assert final.ok
    got = tree_bytes(Path(final.data))
    assert got in (tree_bytes(sources[0]), tree_bytes(sources[1]))  # one writer's data, whole
    manifest = _manifest(store, "shared")
    assert len(manifest["versions"]) == 1
    assert [k for k in store.keys() if "/data/" in k] == [manifest["versions"][0]["key"]]


def test_names_stored_before_the_byte_limit_stay_deletable(store: Store, tmp_path: Path) -> None:
    name = "é" * 110 + "x"  # 221 bytes: longer than a new name may be, as older releases allowed
    plant_archive(store, name, zip_of([("a.txt", b"old")]), 100)
    client = store.client()
    assert client.get_metadata(name).ok and client.download(name, tmp_path / "out").ok
    assert client.delete(name).ok and client.list().data == []


def test_unreadable_manifest_is_reported(store: Store, tmp_path: Path) -> None:
    store.write("default/manifests/broken.json", b"{not json")
    client = StorageClient(service=store.service, api_key=store.api_key)
    response = client.get_metadata("broken")
    assert response.code == ResponseCode.FAILURE and "unreadable" in response.message, response.message
    assert "delete('broken')" in response.message and store.keys() == ["default/manifests/broken.json"]
    assert client.delete("broken").ok and store.keys() == []  # what the message advises works


def test_unreadable_manifest_blocks_neither_list_nor_delete(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = store.client()
    assert client.upload(make_tree(tmp_path / "good")).ok and client.upload(make_tree(tmp_path / "hurt")).ok
    hurt_data = _manifest(store, "hurt")["versions"][0]["key"]
    store.write("default/manifests/hurt.json", b"{not json")
    listed = client.list()
    assert listed.ok and [m.dataName for m in listed.data] == ["good"]
    assert "'hurt'" in caplog.text and "unreadable" in caplog.text
    # cleanup must not take the data of an entry it cannot read (it may be a newer format's)
    assert client.cleanup(older_than_seconds=0).ok and hurt_data in store.keys()
    deleted = client.delete("hurt")
    assert deleted.ok and deleted.data is True
    assert "default/manifests/hurt.json" not in store.keys()
    assert client.cleanup(older_than_seconds=0).ok and hurt_data not in store.keys()
    assert client.download("good", tmp_path / "out").ok  # the readable neighbour is untouched


def test_parallel_ranged_download_is_verified_too(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    client = store.client(download_threshold=0, download_part_size=1024 * 1024, concurrency=4)
    assert client.upload(src).ok
    down = client.download("big.bin", tmp_path / "ok")
    assert down.ok and Path(down.data).read_bytes() == src.read_bytes()
    key = _manifest(store, "big.bin")["versions"][0]["key"]
    data = bytearray(store.read(key))
    data[-1] ^= 0x01
    store.write(key, bytes(data))
    bad = client.download("big.bin", tmp_path / "bad")
    assert not bad.ok and "corrupt" in bad.message
    assert not (tmp_path / "bad").exists()  # made for this download, removed with it


@pytest.mark.parametrize("damage", ["empty", "short", "long"])
@pytest.mark.parametrize("threshold", [0, 1 << 30])  # ranged from the start, or one stream
def test_stored_data_of_the_wrong_size_is_reported_as_corrupt(store: Store, tmp_path: Path, damage: str,
                                                              threshold: int) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    client = store.client(download_threshold=threshold, download_part_size=1024 * 1024, concurrency=4)
    assert client.upload(src).ok
    key = _manifest(store, "big.bin")["versions"][0]["key"]
    data = src.read_bytes()
    store.write(key, {"empty": b"", "short": data[: len(data) // 2], "long": data + b"x"}[damage])
    bad = client.download("big.bin", tmp_path / "bad")
    assert bad.code == ResponseCode.FAILURE and "corrupt" in bad.message, bad.message
    assert not (tmp_path / "bad").exists()


def test_a_name_stored_with_the_reserved_prefix_stays_deletable(store: Store, tmp_path: Path) -> None:
    name = ".fedml-download-old"  # reserved later for download temp files
    plant_archive(store, name, zip_of([("a.txt", b"old")]), 3)
    client = store.client()
    assert client.get_metadata(name).ok
    refused = client.download(name, tmp_path / "out")
    assert not refused.ok and "reserved" in refused.message and "download_url" in refused.message
    assert not (tmp_path / "out").exists()
    assert client.delete(name).ok and client.list().data == []


@pytest.mark.parametrize("min_rate", [0, 1, 1 << 50])
def test_slow_stream_hands_the_rest_to_parallel_ranges(s3_store: Store, tmp_path: Path, min_rate: int,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    store = s3_store
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    # 0: never switch; 1 B/s: every stream is fast enough; 2**50 B/s: every stream is slow, and moto's time to
    # first byte is small, so after the first 1 MiB part the rest goes in ranges
    # the probe is one 1 MiB chunk, so its rate counts the first byte's wait: 5 parts on 8 connections then pay
    client = store.client(stream_min_rate=min_rate, download_part_size=1024 * 1024, concurrency=8)
    assert client.upload(src).ok
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        down = client.download("big.bin", tmp_path / "ok")
    assert down.ok and Path(down.data).read_bytes() == src.read_bytes()
    ranged = [r for r in caplog.records if '" 206 ' in r.getMessage()]
    assert len(ranged) == (5 if min_rate == 1 << 50 else 0)  # the 1 MiB parts after the first, and the last 17 B
    key = _manifest(store, "big.bin")["versions"][0]["key"]
    data = bytearray(store.read(key))
    data[-1] ^= 0x01  # in the part a ranged GET fetches
    store.write(key, bytes(data))
    bad = client.download("big.bin", tmp_path / "bad")
    assert not bad.ok and "corrupt" in bad.message and not (tmp_path / "bad").exists()


def test_local_write_survives_a_concurrent_prune(tmp_path: Path, monkeypatch) -> None:
    import fedml_storage.backends.local as local

    store = local.LocalStore(tmp_path / "store")
    real_replace, calls = os.replace, []

    def pruned_first(src, dst) -> None:
        calls.append(dst)
        if len(calls) == 1:  # a delete pruned the folder, still empty, between its mkdir and this rename
            os.rmdir(os.path.dirname(dst))
        real_replace(src, dst)

    monkeypatch.setattr(local.os, "replace", pruned_first)
    store._write_atomic("ns/manifests/a.json", lambda out: out.write(b"data"))
    assert len(calls) == 2
    assert (tmp_path / "store" / "ns" / "manifests" / "a.json").read_bytes() == b"data"
    assert [o.key for o in store.list("ns/")] == ["ns/manifests/a.json"]
