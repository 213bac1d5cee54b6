"""What a download remembers of what it made, so that a re-run's check reads no file: taken only once the
filesystem's clock has passed every time in it, so that any later change shows in a stat."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from fedml_storage import local_match
from fedml_storage.dest_temps import TEMP_PREFIX
from fedml_storage.digests import DigestCache
from fedml_storage.made import MadeTree
from fedml_storage.trees import scan_tree

from .conftest import Store, make_tree


def test_a_folder_is_remembered_only_once_the_filesystem_clock_has_passed_it(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A change in the same clock tick as the download's last write would leave the stats as remembered: the
    download waits for the tick to pass, and remembers nothing if it does not (a filesystem keeping 2 s times)."""
    def made(folder: Path) -> MadeTree:
        tree, made = scan_tree(make_tree(folder)), MadeTree()
        for e in tree.entries:
            made.add(e.rel, e, e.is_dir)
        return made

    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert local_match.folder_made(tmp_path / "made", 0o755, made(tmp_path / "made"), probe) is not None
    assert probe.stat().st_ctime_ns > max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns)
                                          for p in (tmp_path / "made").rglob("*"))
    stuck, later = made(tmp_path / "stuck"), made(tmp_path / "later")  # newer than the probe, whose clock stops
    monkeypatch.setattr(local_match.os, "utime", lambda path: None)
    assert local_match.folder_made(tmp_path / "stuck", 0o755, stuck, probe) is None
    real_stat, probed = os.stat, []

    def whole_seconds(path, *args, **kwargs):  # as ext3, FAT or HFS+ keep times
        st = real_stat(path, *args, **kwargs)
        if os.fspath(path) != str(probe):
            return st
        probed.append(path)
        return os.stat_result(tuple(st[:10]), {"st_ctime_ns": st.st_ctime_ns // 10**9 * 10**9})

    monkeypatch.setattr(local_match.os, "stat", whole_seconds)
    assert local_match.folder_made(tmp_path / "later", 0o755, later, probe) is None and len(probed) == 1


def _part(folder: Path, data: bytes = b"weights" * 1000) -> Path:
    part = folder / f"{TEMP_PREFIX}x.part"
    part.write_bytes(data)
    part.chmod(0o644)
    return part


def test_a_file_is_remembered_once_the_clock_has_passed_its_write_and_its_rename(tmp_path: Path) -> None:
    cache = DigestCache(tmp_path / "digests.sqlite")
    target = tmp_path / "model.bin"
    local_match.place_file(_part(tmp_path), target, "digest-1", cache)
    st = target.stat()
    assert cache.lookup([(str(target), st)]) == {str(target): "digest-1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digests.sqlite", "model.bin"]  # the probe is gone
    assert _now(tmp_path) > st.st_ctime_ns  # the clock has passed the rename: a change now shows in a stat
    local_match.place_file(_part(tmp_path, b"other"), target, "digest-2", None)  # no cache: a plain rename
    assert target.read_bytes() == b"other" and cache.lookup([(str(target), target.stat())]) == {}


def _rows(folder: Path) -> int:
    with contextlib.closing(sqlite3.connect(folder / "digests.sqlite")) as db:
        return db.execute("SELECT COUNT(*) FROM file_digests").fetchone()[0]


def _now(folder: Path) -> int:
    probe = folder / "now"
    probe.write_bytes(b"")
    return probe.stat().st_ctime_ns


def test_a_file_changed_while_the_download_waits_for_the_clock_is_not_remembered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written to after its rename, with the same size and its mtime put back (as tar or cp -p leave a file)."""
    cache = DigestCache(tmp_path / "digests.sqlite")
    target = tmp_path / "model.bin"
    real_utime = os.utime

    def meddle(path, *args, **kwargs):
        if target.exists() and not args and not kwargs:  # the wait after the rename
            st = target.stat()
            target.write_bytes(b"W" + target.read_bytes()[1:])
            real_utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr(local_match.os, "utime", meddle)
    local_match.place_file(_part(tmp_path), target, "digest-1", cache)
    # no row: with coarse ctimes, one taken before the change could still match the file's stat
    assert target.read_bytes().startswith(b"W") and _rows(tmp_path) == 0
    assert not any(p.name.endswith(".d") for p in tmp_path.iterdir())


def test_a_file_is_not_remembered_when_the_clock_does_not_pass(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cache = DigestCache(tmp_path / "digests.sqlite")
    target = tmp_path / "model.bin"
    monkeypatch.setattr(local_match.os, "utime", lambda path: None)
    local_match.place_file(_part(tmp_path), target, "digest-1", cache)
    assert target.read_bytes() == b"weights" * 1000 and _rows(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digests.sqlite", "model.bin"]


def test_the_probe_of_a_killed_download_is_swept_by_the_next(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    client = store.client()
    assert client.upload(str(tmp_path / "model.bin")).ok
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{TEMP_PREFIX}killed.d").write_bytes(b"")  # its part file is gone
    assert client.download("model.bin", str(out)).ok
    assert sorted(p.name for p in out.iterdir()) == ["model.bin"]


def test_a_folder_of_more_files_than_a_tree_holds_in_memory_is_remembered_too(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past HELD (50,000) items the download remembered nothing, so the first re-run hashed every file: slower than
    the download itself for a 100,000-image dataset (helper-87). Files are now hashed into the record as they come."""
    from fedml_storage import trees

    monkeypatch.setattr(trees, "HELD", 4)  # also what a scan keeps in memory: its entries spill to disk past it
    src = tmp_path / "images"
    for folder in ("a", "b", "c"):
        (src / folder).mkdir(parents=True)
        for i in range(5):
            (src / folder / f"{i}.png").write_bytes(os.urandom(100))
    client = store.client()
    assert client.upload(str(src)).ok
    assert not client.download("images", str(tmp_path / "out")).unwrap().skipped
    read: list[str] = []
    real_sha256 = local_match.sha256_file
    monkeypatch.setattr(local_match, "sha256_file", lambda path, *a, **kw: read.append(str(path))
                        or real_sha256(path, *a, **kw))
    assert client.download("images", str(tmp_path / "out")).unwrap().skipped and read == []


def test_files_written_out_of_path_order_are_not_remembered() -> None:
    """An archive fedml-storage did not write may hold its files in any order: its record would not match a scan."""
    made, st = MadeTree(), os.stat(__file__)
    for rel in ("b.txt", "a.txt"):
        made.add(rel, st, False)
    assert made.state() is None
    ordered = MadeTree()
    for rel in ("a.txt", "b.txt"):
        ordered.add(rel, st, False)
    assert ordered.state() is not None


def test_the_probe_is_removed_when_the_wait_for_the_clock_is_interrupted(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or a task's timeout during the wait left the probe in dest_path until the next download (helper-88)."""
    def interrupted(newest: int, probe: Path) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(local_match, "_clock_past", interrupted)
    part = _part(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        local_match.place_file(part, tmp_path / "model.bin", "digest-1", DigestCache(tmp_path / "digests.sqlite"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["digests.sqlite", part.name])  # not placed, no probe


def test_a_thread_held_up_past_the_clock_wait_still_looks_once_more(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy machine holding the thread up for 50 ms between its look at the clock and the deadline check gave up
    on a clock that had long passed: the download was not remembered, and its re-run read every file again."""
    import time
    from types import SimpleNamespace

    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    os.utime(probe)
    if os.stat(probe).st_ctime_ns % 1_000_000 == 0:
        pytest.skip("this filesystem keeps whole milliseconds or coarser")
    newest = os.stat(probe).st_ctime_ns + 5_000_000  # 5 ms ahead of the filesystem's clock
    calls = iter(range(100))

    def held_up() -> float:  # the deadline is set at 0; every later reading comes after a hold-up
        if next(calls):
            time.sleep(0.02)
            return 1.0
        return 0.0

    monkeypatch.setattr(local_match, "time", SimpleNamespace(monotonic=held_up, sleep=time.sleep))
    assert local_match._clock_past(newest, probe)
