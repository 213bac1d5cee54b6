"""Uploading again: unchanged data is not sent (its catalog fields still update); changed data always is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedml_storage.backends.local import LocalStore
from fedml_storage.backends.s3 import S3Store
from fedml_storage.results import human_size

from .conftest import Store, make_tree


def test_unchanged_reupload_sends_no_data(store: Store, tmp_path: Path, monkeypatch) -> None:
    src = make_tree(tmp_path / "tree")
    client = store.client()
    first = client.upload(src, description="first").data
    sent: list[str] = []
    backend = LocalStore if store.service == "LOCAL" else S3Store
    for method in ("put_file", "put_stream"):
        original = getattr(backend, method)

        def spy(self, key, *a, _original=original, **kw):
            sent.append(key)
            return _original(self, key, *a, **kw)

        monkeypatch.setattr(backend, method, spy)
    keys_before = store.keys()
    again = client.upload(src, description="second", metadata={"run": "2"})
    assert again.ok and again.data.skipped and again.data.version == first.version
    assert again.data.updated == ["description", "metadata"]
    assert again.message.endswith("data unchanged, none sent (version %s, %s at %s); updated its description and "
                                  "metadata" % (first.version, human_size(first.size), first.uri)), again.message
    # (it said "unchanged", as if nothing was; and no location, which a retry's log then lacked: helper-103)
    assert sent == []
    assert [k for k in store.keys() if "/data/" in k] == [k for k in keys_before if "/data/" in k]
    meta = client.get_metadata("tree").data
    assert meta.description == "second" and meta.user_metadata == {"run": "2"}  # metadata still updated
    same = client.upload(src, description="second")
    assert same.data.skipped and same.data.updated == [] and "updated" not in same.message
    (src / "a.txt").write_text("changed")
    changed = client.upload(src)
    assert not changed.data.skipped and len(sent) == 1


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_rewrite_that_puts_the_mtime_back_is_not_taken_for_unchanged(store: Store, tmp_path: Path, monkeypatch,
                                                                      kind: str) -> None:
    import fedml_storage.digests

    monkeypatch.setattr(fedml_storage.digests, "RACY_SECONDS", 0)  # cache at once instead of after 2 s
    src = make_tree(tmp_path / "t") if kind == "folder" else tmp_path / "t.csv"
    target = src / "sub" / "deeper" / "c.csv" if kind == "folder" else src
    target.write_text("cat,1\n")
    client = store.client()
    assert client.upload(src).ok
    assert client.upload(src).data.skipped  # served by the digest cache
    before = target.stat()
    with open(target, "r+") as fh:  # what tar, unzip or cp -p do: new bytes, then the old mtime back
        fh.write("dog,2\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = client.upload(src)
    assert again.ok and not again.data.skipped, again.message
    down = Path(client.download(src.name, tmp_path / "out").data)
    assert (down / "sub" / "deeper" / "c.csv" if kind == "folder" else down).read_text() == "dog,2\n"


def test_updated_names_what_the_commit_wrote_over_not_what_was_read_first(store: Store, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """helper-98: another writer retagged the dataset between this upload's read and its commit; the commit wrote
    the tags back, and the result said only "updated its description"."""
    from fedml_storage.catalog import Catalog

    src = tmp_path / "f.txt"
    src.write_text("x")
    client = store.client()
    assert client.upload(src, description="A", tag_list=["t"]).ok
    original = Catalog.commit

    def retagged_meanwhile(self, *args, **kwargs):
        monkeypatch.setattr(Catalog, "commit", original)
        assert store.client().upload(src, tag_list=["x"]).ok
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Catalog, "commit", retagged_meanwhile)
    again = client.upload(src, description="B", tag_list=["t"])
    assert again.ok and again.data.skipped and again.data.updated == ["description", "tags"], again.message
    assert client.get_metadata("f.txt").data.tag_list == ["t"]
