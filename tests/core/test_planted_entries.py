"""Catalog entries and objects fedml-storage did not write (a shared bucket, a copied or hand-edited entry, a newer
release): whatever they say, a delete, a re-upload or a cleanup removes only this name's own data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedml_storage import ResponseCode, StorageClient

from .conftest import Store


def _entry(store: Store, name: str) -> dict:
    return json.loads(store.read(f"default/manifests/{name}.json"))


def _stored(store: Store, tmp_path: Path, name: str, data: bytes) -> tuple[StorageClient, dict]:
    """A client, and the catalog entry of `name` uploaded with it."""
    (tmp_path / name).write_bytes(data)
    client = store.client()
    assert client.upload(str(tmp_path / name)).ok
    return client, _entry(store, name)


def _plant(store: Store, name: str, entry: dict, **version: object) -> None:
    planted = dict(entry, name=name, versions=[dict(entry["versions"][0], **version)])
    store.write(f"default/manifests/{name}.json", json.dumps(planted).encode())


def test_an_entry_naming_data_outside_its_folder_never_gets_it_deleted(
        store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """delete('stray') removed every key its entry listed: another dataset's data, another team's, any object."""
    client, entry = _stored(store, tmp_path, "model.pt", b"weights")
    real = entry["versions"][0]["key"]
    store.write("exports/report.csv", b"not fedml-storage's")
    store.write("team-b/data/x/20260101T000000000000Z-00000000/x", b"team b's")
    planted = {"alias": real, "stray": "exports/report.csv",
               "other-team": "team-b/data/x/20260101T000000000000Z-00000000/x",
               "dots": f"default/data/dots/../model.pt/{real.split('/')[-2]}/model.pt"}
    for name, key in planted.items():
        _plant(store, name, entry, key=key)
    before = store.keys()

    got = client.download("alias", dest_path=str(tmp_path / "out"))
    assert got.code == ResponseCode.FAILURE and "names data outside default/data/alias/" in got.message, got.message
    assert "delete('alias') removes that entry alone" in got.message and not (tmp_path / "out").exists()
    assert [m.dataName for m in client.list().data] == ["model.pt"]  # the others are skipped, saying why
    assert "skipping 'stray'" in caplog.text and "names data outside" in caplog.text
    (tmp_path / "alias").write_text("a re-upload over it")
    assert not client.upload(str(tmp_path / "alias")).ok  # refused too: it would drop what the entry names
    assert client.cleanup(older_than_seconds=0).ok
    assert store.keys() == before
    for name in planted:
        deleted = client.delete(name)
        assert deleted.ok and deleted.data is True, deleted.message
    assert store.keys() == sorted(set(before) - {f"default/manifests/{name}.json" for name in planted})
    assert client.cleanup(older_than_seconds=0).ok and store.keys() == sorted(
        set(before) - {f"default/manifests/{name}.json" for name in planted})
    got = client.download("model.pt", dest_path=str(tmp_path / "out"))
    assert got.ok and Path(got.data).read_bytes() == b"weights"


def test_objects_under_the_data_prefix_not_shaped_as_ours_survive_cleanup(store: Store, tmp_path: Path) -> None:
    client, _ = _stored(store, tmp_path, "ds.csv", b"a,b\n")
    foreign = ["default/data/stray/blob.bin", "default/data/ds.csv/notes.txt", "default/data/x/not-a-version/x"]
    ours = "default/data/gone/20260101T000000000000Z-0123abcd/gone"  # what a killed upload leaves
    for key in foreign + [ours]:
        store.write(key, b"x")
    assert client.cleanup(older_than_seconds=0).ok
    assert ours not in store.keys() and all(key in store.keys() for key in foreign)
    assert client.download("ds.csv", dest_path=str(tmp_path / "out")).ok


def test_an_entry_of_a_newer_release_is_listed_as_such_not_as_something_to_delete(
        store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """list's warning said to delete it: a teammate's good data, in a format this release cannot read."""
    client, entry = _stored(store, tmp_path, "w.bin", b"w")
    store.write("default/manifests/w.bin.json", json.dumps(dict(entry, format_version=99)).encode())
    listed = client.list()
    assert listed.ok and listed.data == []
    said = [r.getMessage() for r in caplog.records if r.name == "fedml_storage" and "w.bin" in r.getMessage()]
    assert said and all("newer fedml-storage" in m and "upgrade" in m and "delete" not in m for m in said), said
    assert client.cleanup(older_than_seconds=0).ok and entry["versions"][0]["key"] in store.keys()


def _case_blind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LOCAL store on a file system that ignores case (macOS's and Windows' by default): none here, so its
    path lookup is made to find names as such a file system does."""
    from fedml_storage.backends.local import LocalStore

    exact = LocalStore._path

    def path(self, key: str) -> Path:
        found = self.root
        for part in exact(self, key).relative_to(self.root).parts:
            same = [n for n in os.listdir(found) if n.casefold() == part.casefold()] if found.is_dir() else []
            found = found / (same[0] if same else part)
        return found

    monkeypatch.setattr(LocalStore, "_path", path)


@pytest.mark.parametrize("how", ["copied", "case-blind"])
def test_another_names_entry_under_a_name_changes_nothing(store: Store, tmp_path: Path, how: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for 'a.txt', a store that ignores case gives the entry of 'A.txt'. That was taken for an entry naming
    data outside its own, and the message advised delete('a.txt'), which on such a store deleted 'A.txt'; an upload
    of 'a.txt' went ahead. A copy of the entry under another name (by hand) is removed alone."""
    if how == "case-blind" and store.service != "LOCAL":
        pytest.skip("S3 keys are case-sensitive")
    client, entry = _stored(store, tmp_path, "A.txt", b"team A data")
    if how == "copied":
        store.write("default/manifests/a.txt.json", store.read("default/manifests/A.txt.json"))
    else:
        _case_blind(monkeypatch)
    keys = store.keys()
    (tmp_path / "a.txt").write_bytes(b"team a data")
    calls = [client.upload(str(tmp_path / "a.txt")), client.get_metadata("a.txt"),
             client.download("a.txt", tmp_path / "out")]
    deleted = client.delete("a.txt")
    for response in calls + ([deleted] if how == "case-blind" else []):
        assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input", response
        assert "is that of 'A.txt'" in response.message and "nothing was changed" in response.message
    assert not (tmp_path / "out" / "a.txt").exists()
    if how == "copied":
        assert deleted.ok, deleted  # the copy alone
        keys.remove("default/manifests/a.txt.json")
    assert store.keys() == keys
    assert client.download("A.txt", tmp_path / "out").ok and (tmp_path / "out" / "A.txt").read_bytes() == b"team A data"
    assert _entry(store, "A.txt") == entry
    assert [m.dataName for m in client.list().data] == ["A.txt"]
    assert client.cleanup(older_than_seconds=0).ok and store.keys() == keys
