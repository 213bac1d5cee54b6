"""Downloads into a folder that other downloads use too, or that a kill or Ctrl-C interrupts while the old copy
is replaced: one whole copy stays, and nothing is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedml_storage import StorageClient, dest_temps

from .conftest import make_tree, tree_bytes


def _downloaded_twice(tmp_path: Path) -> tuple[StorageClient, Path, Path]:
    """A LOCAL dataset with a copy of its earlier version already downloaded to out/ds."""
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    src = make_tree(tmp_path / "ds")
    assert client.upload(src).ok
    assert client.download("ds", tmp_path / "out").ok
    (src / "next-version.txt").write_text("new in the version the next download fetches\n")
    assert not client.upload(src).unwrap().skipped
    return client, src, tmp_path / "out" / "ds"


@pytest.mark.parametrize("race", ["another copy renamed in", "old copy moved away by another"])
def test_downloads_into_one_folder_race_without_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          race: str) -> None:
    client, src, target = _downloaded_twice(tmp_path)
    monkeypatch.setattr(dest_temps, "_renameat2", None)  # where the system has no one-step swap
    real_rename = os.rename
    fired: list[str] = []

    def racing_rename(a, b) -> None:  # what another download into the folder does at the worst moment
        if not fired and race == "another copy renamed in" and Path(b) == target:
            fired.append(race)
            theirs = tmp_path / "theirs"
            theirs.mkdir()
            (theirs / "a.txt").write_text("their copy\n")
            real_rename(theirs, target)
        elif not fired and race == "old copy moved away by another" and Path(a) == target:
            fired.append(race)
            real_rename(target, tmp_path / "moved-by-other")
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", racing_rename)
    got = client.download("ds", target.parent)
    monkeypatch.undo()
    assert fired and got.ok, got.message
    assert tree_bytes(target) == tree_bytes(src)
    assert [p.name for p in target.parent.iterdir()] == ["ds"]  # nothing moved aside stays behind


def test_an_old_copy_that_cannot_be_put_back_is_kept_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    client, src, target = _downloaded_twice(tmp_path)
    old = tree_bytes(target)
    monkeypatch.setattr(dest_temps, "_renameat2", None)
    real_rename = os.rename

    def no_rename_onto_target(a, b) -> None:  # e.g. permissions changed mid-way
        if Path(b) == target:
            raise PermissionError(13, "Permission denied", str(b))
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", no_rename_onto_target)
    got = client.download("ds", target.parent)
    monkeypatch.undo()
    assert not got.ok and got.reason == "access_denied"
    kept = [p / "ds" for p in target.parent.iterdir() if p.name.endswith(".old")]
    assert len(kept) == 1 and tree_bytes(kept[0]) == old  # never deleted
    assert f"could not put {target} back; it is kept at {kept[0]}" in caplog.text
    dest_temps.sweep(target.parent)  # the next download into the folder puts it back first
    assert [p.name for p in target.parent.iterdir()] == ["ds"] and tree_bytes(target) == old


@pytest.mark.skipif(sys.platform != "linux", reason="the one-step swap is Linux's renameat2")
def test_one_step_swap_survives_the_old_copy_vanishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, src, target = _downloaded_twice(tmp_path)
    real_exchange = dest_temps._exchange
    calls: list[bool] = []

    def exchange_after_another_moved_it(a: Path, b: Path) -> bool:
        if not calls:
            os.rename(target, tmp_path / "moved-by-other")
        calls.append(True)
        return real_exchange(a, b)

    monkeypatch.setattr(dest_temps, "_exchange", exchange_after_another_moved_it)
    got = client.download("ds", target.parent)
    assert calls and got.ok, got.message
    assert tree_bytes(target) == tree_bytes(src) and [p.name for p in target.parent.iterdir()] == ["ds"]


_KILL_WHILE_REPLACING = """
import os, signal, sys
from pathlib import Path
from fedml_storage import StorageClient, dest_temps

target = Path(sys.argv[2]) / "ds"

def kill_at_the_swap(event, args):
    touches = [str(a) for a in args[:2] if isinstance(a, (str, os.PathLike))]
    # just before a copy is renamed onto the target, or the replaced copy is removed
    if (event == "os.rename" and touches[1:] == [str(target)]) or (
            event == "shutil.rmtree" and touches and Path(touches[0]).parent == target.parent):
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill_at_the_swap)
StorageClient(service="LOCAL", local_root=sys.argv[1]).download("ds", sys.argv[2])
"""


def _exchange_works_in(folder: Path) -> bool:
    a, b = folder / "probe-a", folder / "probe-b"
    a.mkdir(), b.mkdir()
    return dest_temps._exchange(a, b)


@pytest.mark.skipif(sys.platform != "linux", reason="the one-step swap is Linux's renameat2")
def test_a_download_killed_while_replacing_a_folder_leaves_a_whole_copy(tmp_path: Path) -> None:
    if not _exchange_works_in(tmp_path):
        pytest.skip("this filesystem has no RENAME_EXCHANGE (the move-aside fallback is used)")
    client, src, target = _downloaded_twice(tmp_path)
    (src / "a.txt").write_text("the new version\n")
    assert client.upload(src).ok
    child = subprocess.run([sys.executable, "-c", _KILL_WHILE_REPLACING, str(tmp_path / "store"), str(target.parent)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr  # killed in the middle of replacing the folder
    assert tree_bytes(target) == tree_bytes(src)  # swapped in one step before the kill: never without a copy


def test_many_downloads_into_one_folder_at_once(tmp_path: Path) -> None:
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    src = make_tree(tmp_path / "ds")
    assert client.upload(src).ok
    dest = tmp_path / "out"
    failures: list[str] = []

    def fetch() -> None:
        for _ in range(15):
            got = client.download("ds", dest)
            if not got.ok:
                failures.append(got.message)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert [p.name for p in dest.iterdir()] == ["ds"] and tree_bytes(dest / "ds") == tree_bytes(src)


_KILLED_DOWNLOAD = """
import os, signal, sys
from fedml_storage import StorageClient

def kill(event, args):
    if {condition}:
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill)
StorageClient(service="LOCAL", local_root=sys.argv[1]).download("ds", sys.argv[2])
"""
KILL_WHILE_UNPACKING = 'event == "open" and args and ".d" + os.sep in str(args[0])'  # its first unpacked file
KILL_BEFORE_THE_PART_NAME = 'event == "os.rename" and str(args[0]).endswith(".new")'  # its first moments


def _killed_download(tmp_path: Path, condition: str) -> tuple[StorageClient, Path]:
    """A LOCAL dataset 'ds', and the folder a download of it was killed in (when `condition` held)."""
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    assert client.upload(make_tree(tmp_path / "ds")).ok
    dest = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", _KILLED_DOWNLOAD.format(condition=condition),
                            str(tmp_path / "store"), str(dest)], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    return client, dest


@pytest.mark.skipif(sys.platform == "win32", reason="live downloads are told by file locks (Windows waits a day)")
def test_what_a_killed_download_left_goes_at_the_next_one_not_a_day_later(tmp_path: Path) -> None:
    import fcntl

    client, dest = _killed_download(tmp_path, KILL_WHILE_UNPACKING)
    left = sorted(p.name for p in dest.iterdir())
    assert len(left) == 2 and left[0].endswith(".d") and left[1].endswith(".part")  # a whole archive, and more
    live = dest / ".fedml-download-live.part"  # another download, still running, quiet for over a day
    live.write_bytes(b"busy")
    days_ago = time.time() - 3 * 24 * 3600
    os.utime(live, (days_ago, days_ago))
    with open(live, "rb") as held:  # rerun at once: no grace period to wait out
        fcntl.flock(held, fcntl.LOCK_EX)
        assert client.download("ds", dest).ok
        assert sorted(p.name for p in dest.iterdir()) == [".fedml-download-live.part", "ds"]


@pytest.mark.skipif(sys.platform == "win32", reason="live downloads are told by file locks (Windows waits a day)")
def test_a_download_killed_before_naming_its_part_file_is_cleared_within_seconds(tmp_path: Path) -> None:
    import fcntl

    client, dest = _killed_download(tmp_path, KILL_BEFORE_THE_PART_NAME)
    [killed] = list(dest.iterdir())
    assert killed.suffix == ".new"
    assert client.download("ds", dest).ok
    assert killed.exists()  # just made: it may be a live download's, a moment before it locks it
    live = dest / ".fedml-download-live.new"  # a live download's, locked, its clock minutes off
    live.write_bytes(b"")
    ago = time.time() - dest_temps.NEW_GRACE_SECONDS - 1
    os.utime(killed, (ago, ago))
    os.utime(live, (ago - 600, ago - 600))
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert client.download("ds", dest).ok
        assert sorted(p.name for p in dest.iterdir()) == [".fedml-download-live.new", "ds"]
    assert dest_temps.NEW_GRACE_SECONDS <= 10  # "within seconds", not the minute it was


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_new_part_file_is_locked_before_a_kept_one_is_moved_onto_it(tmp_path: Path) -> None:
    seen: list[str] = []
    kept = tmp_path / "kept"
    kept.write_bytes(b"kept bytes")

    def adopt(new: Path) -> int:
        seen.append(dest_temps._lock_state(new))  # what another download's sweep would find now
        os.rename(kept, new)
        return len(b"kept bytes")

    fd, part, lock, length = dest_temps.new_part(tmp_path, adopt)
    try:
        assert seen == ["held"] and length == 10 and part.read_bytes() == b"kept bytes"
        assert dest_temps._lock_state(part) == "held"  # the adopted file, locked in turn
    finally:
        os.close(fd)
        os.close(lock)


_KILL_AT_THE_FALLBACK_RENAME = """
import os, signal, sys
from pathlib import Path
import fedml_storage.dest_temps as dest_temps
from fedml_storage import StorageClient

dest_temps._renameat2 = None  # a system without the one-step swap
target = Path(sys.argv[2]) / "ds"

def kill_at_rename_onto_target(event, args):
    if event == "os.rename" and str(args[1]) == str(target):
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill_at_rename_onto_target)
StorageClient(service="LOCAL", local_root=sys.argv[1]).download("ds", sys.argv[2])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="live downloads are told by file locks (Windows waits a day)")
@pytest.mark.parametrize(("earlier_copy", "next_download"), [(False, "ds"), (True, "ds"), (True, "other")])
def test_a_kill_in_the_fallback_swap_loses_nothing_and_leaves_nothing(tmp_path: Path, earlier_copy: bool,
                                                                       next_download: str) -> None:
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    src = make_tree(tmp_path / "ds")
    assert client.upload(src).ok
    (tmp_path / "other").write_text("another dataset")
    assert client.upload(tmp_path / "other").ok
    dest = tmp_path / "out"
    if earlier_copy:
        assert client.download("ds", dest).ok
        (dest / "ds" / "mine.txt").write_text("the user's own file")  # must not be lost by the kill either
    before = tree_bytes(dest / "ds") if earlier_copy else None
    child = subprocess.run([sys.executable, "-c", _KILL_AT_THE_FALLBACK_RENAME, str(tmp_path / "store"), str(dest)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr  # between moving the old copy aside and renaming in
    assert client.download(next_download, dest).ok  # at once: no grace period to wait out
    expected = ["ds", "other"] if next_download == "other" else ["ds"]
    assert sorted(p.name for p in dest.iterdir()) == expected
    assert tree_bytes(dest / "ds") == (before if next_download == "other" else tree_bytes(src))


@pytest.mark.parametrize("moment", ["before renaming the new copy in", "right after moving the old copy aside"])
def test_a_ctrl_c_in_the_fallback_swap_puts_the_old_copy_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              moment: str) -> None:
    client, src, target = _downloaded_twice(tmp_path)
    old = tree_bytes(target)
    monkeypatch.setattr(dest_temps, "_renameat2", None)
    real_rename = os.rename

    def interrupted(a, b) -> None:  # Ctrl-C, or a task timeout raised from a signal handler, at the worst moment
        if moment.startswith("before") and Path(b) == target and Path(a).suffix == ".d":
            raise KeyboardInterrupt
        real_rename(a, b)
        if moment.startswith("right after") and Path(a) == target:
            raise KeyboardInterrupt  # the signal arrived while the rename ran

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        client.download("ds", target.parent)
    monkeypatch.undo()
    assert [p.name for p in target.parent.iterdir()] == ["ds"] and tree_bytes(target) == old


def test_the_sweep_puts_back_whole_copies_only(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    whole = dest / ".fedml-download-killed1.old" / "a"  # moved aside, then the download was killed
    whole.mkdir(parents=True)
    (whole / "f.txt").write_text("whole")
    partial = dest / ".fedml-download-killed2.drop" / "b"  # killed while a dropped copy was being deleted
    partial.mkdir(parents=True)
    (partial / "g.txt").write_text("half")
    dest_temps.sweep(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["a"] and (dest / "a" / "f.txt").read_text() == "whole"


def test_without_locks_a_part_file_is_made_directly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dest_temps, "fcntl", None)  # Windows: no lock, and no renaming a file still open
    fd, part, lock, _ = dest_temps.new_part(tmp_path)
    os.close(fd)
    assert lock is None and part.suffix == ".part" and [p.name for p in tmp_path.iterdir()] == [part.name]


def test_a_finished_swap_does_not_fail_over_a_copy_it_cannot_delete(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    new, target, aside = tmp_path / "new", tmp_path / "ds", tmp_path / ".fedml-download-x.old"
    for folder, text in ((new, "new"), (target, "old")):
        folder.mkdir()
        (folder / "f.txt").write_text(text)
    monkeypatch.setattr(dest_temps, "_renameat2", None)
    monkeypatch.setattr(dest_temps, "remove", lambda path: None)  # e.g. a read-only folder inside the old copy
    dest_temps.swap_in(new, target, aside)  # its drop leaves the old copy behind
    assert (target / "f.txt").read_text() == "new"
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "f.txt").write_text("newer")
    dest_temps.swap_in(newer, target, aside)  # the same aside name again (a retry): its drop needs a fresh name
    assert (target / "f.txt").read_text() == "newer"


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_filesystem_without_locks_still_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import fcntl

    def no_locks(fd, op):  # NFS without lockd: "No locks available"
        raise OSError(errno.ENOLCK, "No locks available")

    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    assert client.upload(make_tree(tmp_path / "ds")).ok
    monkeypatch.setattr(fcntl, "flock", no_locks)  # where the download lands (the store's own lock is another matter)
    got = client.download("ds", tmp_path / "out")
    assert got.ok, got.message
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["ds"]

