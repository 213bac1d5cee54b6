"""Listing by name prefix: only the matching catalog entries are read (a large catalog's listing, or an Airflow
XCom of it, stays small)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedml_storage import api
from fedml_storage.catalog import Catalog

from .conftest import Store


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names whose catalog entry is read from the store, as they are read."""
    read: list[str] = []
    real_read = Catalog._read_raw

    def counted(self, name, *args, **kwargs):
        read.append(name)
        return real_read(self, name, *args, **kwargs)

    monkeypatch.setattr(Catalog, "_read_raw", counted)
    return read


def test_a_listing_reads_again_only_the_entries_that_changed(store: Store, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every listing read every catalog entry: 2,000 datasets took 17 s on moto (helper-87). On S3 an entry is now
    read again only when the ETag listed differs from the one it was read with; LOCAL reads are cheap, and kept."""
    client = store.client()
    for name in ("a.csv", "b.csv", "c.csv"):
        (tmp_path / name).write_text(name)
        assert client.upload(str(tmp_path / name), description="first").ok
    read = _count_reads(monkeypatch)
    assert [m.description for m in client.list().unwrap()] == ["first"] * 3 and sorted(read) == ["a.csv", "b.csv",
                                                                                                   "c.csv"]
    read.clear()
    assert client.upload(str(tmp_path / "b.csv"), description="second").ok  # its entry rewritten: a new ETag
    read.clear()
    listed = client.list().unwrap()
    assert [m.description for m in listed] == ["first", "second", "first"]
    assert sorted(read) == (["b.csv"] if store.service == "S3" else ["a.csv", "b.csv", "c.csv"])
    assert store.client().delete("c.csv").data is True
    assert [m.dataName for m in client.list().unwrap()] == ["a.csv", "b.csv"]  # deleted: not listed, whatever is kept


def test_a_prefix_lists_and_reads_only_the_names_starting_with_it(store: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client = store.client()
    for name in ("mnist", "mnist-small", "cifar", "Mnist-upper"):
        (tmp_path / name).write_text(name)
        assert client.upload(str(tmp_path / name)).ok
    read = _count_reads(monkeypatch)
    listed = client.list(prefix="mnist")
    assert [m.dataName for m in listed.unwrap()] == ["mnist", "mnist-small"] and sorted(read) == ["mnist", "mnist-small"]
    assert listed.message == "2 stored object(s) named mnist*"
    assert [m.dataName for m in client.list(prefix="").unwrap()] == ["Mnist-upper", "cifar", "mnist", "mnist-small"]
    assert [m.dataName for m in client.list().unwrap()] == ["Mnist-upper", "cifar", "mnist", "mnist-small"]
    none = client.list(prefix="zzz")
    assert none.ok and none.data == [] and none.message == "0 stored object(s) named zzz*"
    documented = api.list_storage_objects(api_key=store.api_key, service=store.service, prefix="cif")
    assert [m.dataName for m in documented.unwrap()] == ["cifar"]


def test_a_prefix_is_matched_against_names_not_the_catalog_files_they_are_kept_in(store: Store,
                                                                                 tmp_path: Path) -> None:
    """'mnist.' listed 'mnist' (its catalog entry is 'mnist.json'): a clean-up deleting what 'tmp.' lists would
    also have deleted 'tmp'."""
    client = store.client()
    for name in ("mnist", "mnist.v2", "model", "a.json"):
        (tmp_path / name).write_text(name)
        assert client.upload(str(tmp_path / name)).ok
    for prefix, names in [("mnist.", ["mnist.v2"]), ("mnist.j", []), ("model.json", []), ("model", ["model"]),
                          ("a.js", ["a.json"]), ("a.json", ["a.json"])]:
        assert [m.dataName for m in client.list(prefix=prefix).unwrap()] == names, prefix
    assert "did you mean 'a.json'?" in client.get_metadata("a").message  # the hint for a missing extension


@pytest.mark.parametrize(("prefix", "said"), [(3, "prefix must be a string (the start of dataset names), not int"),
                                              ("data/", "holds a character no dataset name has"),
                                              ("a\\b", "holds a character no dataset name has"),
                                              ("run\n", "a control character or line break"),
                                              ("mn\udcff", "prefix is not valid Unicode"),
                                              (" mn", "starts with a space, as no dataset name does"),
                                              ("x" * 1100, "prefix is longer than any dataset name")])
def test_a_prefix_no_name_can_start_with_is_bad_input(store: Store, prefix: object, said: str) -> None:
    response = store.client().list(prefix=prefix)
    assert not response.ok and response.reason == "invalid_input" and said in response.message


def test_the_local_store_lists_by_key_prefix_across_folders(tmp_path: Path) -> None:
    """Folders that cannot hold a matching key are not walked (a miss among 5,000 names walked every catalog file,
    helper-87): what is listed is still every key that starts with the prefix."""
    from fedml_storage.backends.local import LocalStore

    store = LocalStore(tmp_path / "store")
    keys = ["ns/manifests/a.json", "ns/manifests/ab.json", "ns/manifests/b.json", "ns/data/a/v1/a.zip",
            "ns/data/ab/v2/ab.zip", "ns/data/b/v1/b", "ns-2/manifests/a.json", "top.json"]
    for key in keys:
        store.write_bytes(key, key.encode())
    for prefix in ("", "ns", "ns/", "ns-", "ns/manifests/", "ns/manifests/a", "ns/data/a", "ns/data/a/",
                   "ns/data/ab/v", "ns/data/b/v1/b", "ns/data/c", "t", "x/"):
        assert sorted(o.key for o in store.list(prefix)) == sorted(k for k in keys if k.startswith(prefix)), prefix


@pytest.mark.parametrize("body", ["X'7b'", "42"])
def test_a_damaged_cache_row_is_read_again_from_the_store_and_the_cache_is_private(
        s3_store: Store, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """A bad row hid a healthy dataset from every listing, advising to delete it, or failed the listing (helper-88).
    The cache holds catalog entries: only this user may read it."""
    import sqlite3
    import stat

    (tmp_path / "f.txt").write_text("x")
    client = s3_store.client()
    assert client.upload(str(tmp_path / "f.txt")).ok and len(client.list().unwrap()) == 1
    cache = isolated_home / "cache" / "entries.sqlite"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600 and stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    with sqlite3.connect(cache) as db:
        db.execute(f"UPDATE entries SET body = {body}")
    read = _count_reads(monkeypatch)
    assert [m.dataName for m in client.list().unwrap()] == ["f.txt"] and read == ["f.txt"]
    assert [m.dataName for m in client.list().unwrap()] == ["f.txt"] and read == ["f.txt"]  # the row repaired


def test_a_stop_set_while_listing_ends_the_listing_and_its_reads_not_yet_started(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped listing (a task timeout) went on reading every catalog entry, 40 where one was enough to stop
    (helper-108): the entries not yet read are left, and the caller is told at once."""
    import threading

    from fedml_storage import Stopped, catalog, stop_when

    client = store.client()
    (tmp_path / "f.txt").write_text("x")
    for i in range(40):
        assert client.upload(str(tmp_path / "f.txt"), f"d{i:02}").ok
    stop, parsed = threading.Event(), []
    real_parse = catalog._parse

    def stop_at_the_first(raw: bytes, name: str, own: str) -> catalog.Manifest:
        parsed.append(name)  # (read from the store, or from the cache of entries on S3)
        stop.set()
        return real_parse(raw, name, own)

    monkeypatch.setattr(catalog, "_parse", stop_at_the_first)
    with stop_when(stop), pytest.raises(Stopped):
        client.list()
    assert 1 <= len(parsed) <= 8, parsed  # those running when the stop came (8 threads), no more
    monkeypatch.undo()
    assert len(client.list().unwrap()) == 40  # the same client, outside the block, lists them all
