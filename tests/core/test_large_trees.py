"""Folders with more entries than a tree holds in memory: entries spill to sorted runs on disk, the zip's central
directory to a spool file, and uploads, skips and downloads come out exactly as for a small tree."""

from __future__ import annotations

import errno
import gc
import logging
import marshal
import os
import tempfile
from pathlib import Path

import pytest

from fedml_storage import trees, zipformat
from fedml_storage.trees import scan_tree

from .conftest import Store, make_tree, tree_bytes


def _awkward_tree(root: Path) -> Path:
    """Names whose path order differs from a folder-by-folder walk ("a", "a-c", "a/b"), a linked folder (read
    after every real one), and enough files for several runs."""
    make_tree(root)
    (root / "a").mkdir()
    (root / "a" / "b").write_text("in a")
    (root / "a-c").write_text("beside a")
    for i in range(40):
        (root / "sub" / f"n{i:02d}").write_text(str(i))
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("linked in")
    os.symlink(outside, root / "0-link")
    return root


@pytest.fixture
def spill(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Trees hold 7 entries in memory, a zip's central directory none and reads of it 300 bytes; spill files go to
    the folder returned."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(trees, "HELD", 7)
    monkeypatch.setattr(trees, "_RECORD", 3)
    monkeypatch.setattr(zipformat, "_SPOOL_IN_MEMORY", 0)
    monkeypatch.setattr(zipformat, "_READ_BLOCK", 300)  # the central directory read in many blocks (records ~100 B)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_spilled_entries_come_in_the_same_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _awkward_tree(tmp_path / "src")
    held = list(scan_tree(src).entries)
    monkeypatch.setattr(trees, "HELD", 7)
    spilled = scan_tree(src).entries
    assert len(spilled._runs) > 3
    assert list(spilled) == held
    monkeypatch.setattr(trees, "_RUNS", 3)  # runs merged into one whenever there are 3
    spilled = scan_tree(src).entries
    assert 1 <= len(spilled._runs) < 3 and spilled._written > 3
    assert list(spilled) == list(spilled) == held  # readable again and again
    assert held == sorted(held) and [e.rel for e in held][:4] == ["0-link", "0-link/o.txt", "a", "a-c"]
    spilled.close()
    assert not any(os.path.exists(run) for run in spilled._runs)


def test_spilled_upload_stores_what_a_held_one_does(store: Store, tmp_path: Path, spill: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    src = _awkward_tree(tmp_path / "src")
    client = store.client()
    up = client.upload(src, name="spilled")
    assert up.ok, up.message
    assert list(spill.iterdir()) == []  # the runs are removed
    with monkeypatch.context() as m:
        m.setattr(trees, "HELD", 50_000)
        m.setattr(zipformat, "_SPOOL_IN_MEMORY", 4 << 20)
        held = client.upload(src, name="held")
    assert held.ok, held.message
    assert (up.data.sha256, up.data.content_digest) == (held.data.sha256, held.data.content_digest)  # byte for byte
    down = client.download("spilled", tmp_path / "out")
    assert down.ok, down.message
    assert tree_bytes(Path(down.data)) == {**tree_bytes(src), "0-link/o.txt": b"linked in"}  # rglob skips links


def test_spilled_tree_unchanged_is_not_sent_again(store: Store, tmp_path: Path, spill: Path) -> None:
    src = _awkward_tree(tmp_path / "src")
    client = store.client()
    first = client.upload(src)
    assert first.ok, first.message
    os.utime(src / "a-c", ns=(1_000_000_000, 1_000_000_000))  # times change, content does not: digests are compared
    again = client.upload(src)
    assert again.ok and again.data.skipped and again.data.version == first.data.version
    (src / "sub" / "n07").write_text("changed")
    changed = client.upload(src)
    assert changed.ok and not changed.data.skipped and changed.data.content_digest != first.data.content_digest
    assert list(spill.iterdir()) == []


def test_spill_files_go_when_the_scan_fails(store: Store, tmp_path: Path, spill: Path) -> None:
    src = _awkward_tree(tmp_path / "src")
    os.symlink(tmp_path / "missing", src / "zz-broken")  # read last, after several runs were written
    response = store.client().upload(src)
    assert response.reason == "invalid_input" and "broken link" in response.message
    assert list(spill.iterdir()) == []


def test_a_temporary_folder_that_takes_nothing_costs_memory_not_the_upload(
        store: Store, tmp_path: Path, spill: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    src = _awkward_tree(tmp_path / "src")
    client = store.client()
    spilled = client.upload(src, name="spilled")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
    with caplog.at_level(logging.WARNING, logger="fedml_storage"):
        held = client.upload(src, name="held")
    assert held.ok, held.message
    said = [r.getMessage() for r in caplog.records if "holding it in memory" in r.getMessage()]
    assert len(said) == 2 and "TMPDIR" in said[0]  # once for the list of files, once for the zip's directory
    assert held.data.sha256 == spilled.data.sha256
    down = client.download("held", tmp_path / "out")
    assert down.ok and tree_bytes(Path(down.data))["a/b"] == b"in a"


def test_a_temporary_folder_that_fills_up_keeps_the_runs_written(tmp_path: Path, spill: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = _awkward_tree(tmp_path / "src")
    expected = list(scan_tree(src).entries)
    dumps = []

    class Filling:  # the disk fills while run 2 is written: its first record is in, the second fails
        @staticmethod
        def dump(value, fh) -> None:
            dumps.append(1)
            if len(dumps) == 8:  # 7 entries a run, 3 a record: records 7-9 are run 2's
                raise OSError(errno.ENOSPC, "No space left on device")
            marshal.dump(value, fh)

        load = staticmethod(marshal.load)

    monkeypatch.setattr(trees, "marshal", Filling)
    spilled = scan_tree(src).entries
    assert len(spilled._runs) == 2 and len(dumps) == 8  # two runs kept; no more tried once one failed
    assert list(spilled) == expected
    assert sorted(os.listdir(spill / os.listdir(spill)[0])) == ["run-0", "run-1"]  # the failed run is removed
    spilled.close()


def test_spill_files_go_when_the_catalog_cannot_be_read(store: Store, tmp_path: Path, spill: Path) -> None:
    src = _awkward_tree(tmp_path / "src")
    store.write("default/manifests/broken.json", b"{not json")  # read while the tree is scanned: it fails
    gc.disable()  # the files must go with the failure, not whenever the garbage collector comes by
    try:
        response = store.client().upload(src, name="broken")
        assert not response.ok and "broken" in response.message
        assert list(spill.iterdir()) == []
    finally:
        gc.enable()


def test_spilled_entries_count_what_held_ones_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The totals (files, bytes, members, name lengths, newest time) are made as entries leave memory."""
    src = _awkward_tree(tmp_path / "src")

    def totals(entries: trees.Entries) -> tuple[int, ...]:
        return entries.files, entries.size, entries.members, entries.name_chars, entries.newest

    held = totals(scan_tree(src).entries)
    monkeypatch.setattr(trees, "HELD", 7)
    spilled = scan_tree(src).entries
    assert len(spilled._runs) > 3 and totals(spilled) == held and held[0] > 40 and held[4] > 0
    spilled.finish()  # again: nothing counted twice
    assert totals(spilled) == held


def test_a_download_too_large_to_record_is_kept_by_its_digests(store: Store, tmp_path: Path, spill: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Past HELD folders a download keeps no record of what it made (memory stays bounded): a re-run reads and
    hashes the files, and keeps the copy all the same."""
    from fedml_storage import local_match

    src = make_tree(tmp_path / "src")
    for i in range(8):  # with its own 4, more folders than HELD (7)
        (src / f"more-{i}").mkdir()
    client = store.client()
    assert client.upload(src).ok
    read: list[str] = []
    real_sha256 = local_match.sha256_file
    monkeypatch.setattr(local_match, "sha256_file", lambda path, *a, **kw: read.append(path)
                        or real_sha256(path, *a, **kw))
    assert not client.download("src", tmp_path / "out").unwrap().skipped
    assert client.download("src", tmp_path / "out").unwrap().skipped
    files = [str(p) for p in (tmp_path / "out" / "src").rglob("*") if p.is_file()]
    assert sorted(map(str, read)) == sorted(files) and len(list((tmp_path / "out" / "src").rglob("*"))) > 7
