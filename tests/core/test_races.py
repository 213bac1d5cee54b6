"""Races with other writers and other downloads: the user gets one complete version, or a failure that says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedml_storage import StorageClient, dest_temps
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


def _downloaded_twice(tmp_path: Path) -> tuple[StorageClient, Path, Path]:
    """A LOCAL dataset with an earlier copy already downloaded to out/ds."""
    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    src = make_tree(tmp_path / "ds")
    assert client.upload(src).ok
    assert client.download("ds", tmp_path / "out").ok
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


def test_not_found_hint_never_suggests_the_name_asked_for(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    catalog = Catalog(store, "default")
    store.write_bytes("default/manifests/x.bin.json", b"{}")  # stored again just after a miss
    assert catalog._similar("x.bin") == ""
    assert "'x.bin'" in catalog._similar("x")


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


_KILL_WHILE_UNPACKING = """
import os, signal, sys
from fedml_storage import StorageClient

def kill_when_unpacking(event, args):  # at the first file written into the unpacked folder
    if event == "open" and args and ".d" + os.sep in str(args[0]):
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(kill_when_unpacking)
StorageClient(service="LOCAL", local_root=sys.argv[1]).download("ds", sys.argv[2])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="live downloads are told by file locks (Windows waits a day)")
def test_what_a_killed_download_left_goes_at_the_next_one_not_a_day_later(tmp_path: Path) -> None:
    import fcntl

    client = StorageClient(service="LOCAL", local_root=str(tmp_path / "store"))
    assert client.upload(make_tree(tmp_path / "ds")).ok
    dest = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", _KILL_WHILE_UNPACKING, str(tmp_path / "store"), str(dest)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
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
