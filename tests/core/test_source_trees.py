"""Folders as users have them: links, pipes, sockets, odd but valid names, far-future times, files written to while
they upload."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from fedml_storage.api.fedml_response import ResponseCode

from .conftest import Store, run_without_root, tree_bytes


def test_links_are_followed_and_what_is_no_data_is_left_out_and_said(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "mnt"
    (outside / "shards").mkdir(parents=True)
    (outside / "shards" / "s0.bin").write_bytes(b"\x00shard")
    (outside / "labels.csv").write_text("a,1\n")
    src = tmp_path / "proj"
    src.mkdir()
    (src / "README").write_text("read me")
    os.symlink(outside / "shards", src / "data")  # the usual layout: data lives elsewhere, linked in
    os.symlink(outside / "labels.csv", src / "labels.csv")
    os.mkfifo(src / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(src / "sock"))
    try:
        up = store.client().upload(src)
    finally:
        server.close()
    assert up.ok, up.message
    assert up.data.left_out == ["pipe", "sock"] and up.data.file_count == 3
    assert "left out 2 that are not data (FIFOs, sockets, devices, fedml-storage's own folder) or link to a folder " \
        "it already holds: pipe, sock" \
        in up.message
    down = Path(store.client().download("proj", tmp_path / "out").data)
    assert tree_bytes(down) == {"README": b"read me", "data": None, "data/s0.bin": b"\x00shard",
                                "labels.csv": b"a,1\n"}
    assert not (down / "data").is_symlink()


def test_links_never_loop_or_multiply_the_tree(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "runs"
    (src / "run-7").mkdir(parents=True)
    (src / "run-7" / "w.bin").write_bytes(b"w")
    os.symlink("run-7", src / "latest")  # the usual pointer to a folder the upload holds anyway
    os.symlink(src, src / "run-7" / "back")  # back up to the folder being uploaded
    chain = tmp_path / "chain"  # 30 levels, each linking twice to the next: 2**30 paths, 31 folders
    for level in range(30, -1, -1):
        (chain / str(level)).mkdir(parents=True)
        if level < 30:
            for twin in "ab":
                os.symlink(chain / str(level + 1), chain / str(level) / twin)
    (chain / "30" / "end.txt").write_text("end")
    os.symlink(chain / "0", src / "chain")
    up = store.client().upload(src)
    assert up.ok, up.message
    assert up.data.file_count == 2  # w.bin once, end.txt once
    assert "latest" in up.data.left_out and "run-7/back" in up.data.left_out
    assert len(up.data.left_out) == 32  # latest, back, and the second twin at each of the 30 levels
    down = Path(store.client().download("runs", tmp_path / "out").data)
    assert (down / "run-7" / "w.bin").read_bytes() == b"w" and not (down / "latest").exists()
    assert (down / "chain" / "a" / "a").is_dir()


def test_a_link_to_itself_is_refused_before_anything_is_stored(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "looped"
    src.mkdir()
    (src / "f.txt").write_text("x")
    os.symlink("self", src / "self")
    response = store.client().upload(src)
    assert response.reason == "invalid_input" and "leads back to itself" in response.message
    assert [k for k in store.keys() if "/data/" in k] == []


def test_names_valid_here_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "runs"
    (src / "12:30").mkdir(parents=True)  # a run folder named by its time
    (src / "12:30" / "metrics.json").write_text("{}")
    (src / "a\\b.txt").write_text("backslash")
    (src / "..\\up.txt").write_text("not a way out here")
    future = src / "future.txt"
    future.write_text("2200")
    os.utime(future, (7258118400, 7258118400))  # after 2107, past what zip can record
    assert store.client().upload(src).ok
    down = Path(store.client().download("runs", tmp_path / "out").data)
    assert tree_bytes(down) == tree_bytes(src)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs"]


def test_trees_as_deep_as_packed_round_trip_and_deeper_ones_are_refused(store: Store, tmp_path: Path) -> None:
    deepest = tmp_path / "ok" / Path(*["d"] * 512)  # a file in a folder 512 levels down: the most allowed
    deepest.mkdir(parents=True)
    (deepest / "f.txt").write_text("deep")
    client = store.client()
    up = client.upload(tmp_path / "ok")
    assert up.ok, up.message
    down = client.download("ok", tmp_path / "out")
    assert down.ok, down.message
    assert (Path(down.data) / Path(*["d"] * 512) / "f.txt").read_text() == "deep"

    (deepest / "d").mkdir()  # one level more
    (deepest / "d" / "f.txt").write_text("too deep")
    response = client.upload(tmp_path / "ok", name="deeper")
    assert response.reason == "invalid_input" and "more than 512 folders deep" in response.message
    assert client.get_metadata("deeper").code == ResponseCode.FAILURE  # nothing stored under that name


def _upload_meeting_a_pipe(store: Store, src: Path, pipe: Path) -> object:
    """The upload of `src`, which meets `pipe` where a file was; fails the test if it waits on the pipe."""
    import threading

    result: list = []
    worker = threading.Thread(target=lambda: result.append(store.client().upload(str(src))), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # stuck opening the pipe: a writer releases it
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(60)
        pytest.fail("the upload waited on a pipe")
    return result[0]


def test_a_file_replaced_by_a_pipe_during_the_upload_fails_it_instead_of_waiting(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedml_storage import uploads

    src = tmp_path / "ds"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "b.txt").write_text("beta")
    scanned = uploads.tree_state

    def then_swap(*args):  # after the folder was read, before its files are
        found = scanned(*args)
        (src / "b.txt").unlink()
        os.mkfifo(src / "b.txt")
        return found

    monkeypatch.setattr(uploads, "tree_state", then_swap)
    response = _upload_meeting_a_pipe(store, src, src / "b.txt")
    assert response.code == ResponseCode.FAILURE and "b.txt is no longer a plain file" in response.message
    assert response.reason == "conflict" and response.retryable  # written meanwhile: another try may succeed
    assert "nothing was published" in response.message
    assert store.client().list().data == []


def test_a_single_file_replaced_by_a_pipe_fails_its_s3_upload(s3_store: Store, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fedml_storage.backends.s3 import S3Store

    src = tmp_path / "w.bin"
    src.write_bytes(b"w" * 1000)
    real = S3Store.put_file

    def swap_then_send(self, key, path, progress=None):  # s3transfer opens the path itself
        path.unlink()
        os.mkfifo(path)
        return real(self, key, path, progress)

    monkeypatch.setattr(S3Store, "put_file", swap_then_send)
    response = _upload_meeting_a_pipe(s3_store, src, src)
    assert response.code == ResponseCode.FAILURE and "w.bin changed while it was being uploaded" in response.message
    assert response.reason == "conflict" and response.retryable  # another try, once the writer is done
    assert s3_store.keys() == []

def test_fedml_storages_own_files_and_folders_are_never_uploaded(isolated_home: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from fedml_storage import StorageClient
    from fedml_storage.api import fedml_login
    from tests.conftest import TEST_API_KEY

    src = tmp_path / "project"
    src.mkdir()
    (src / "data.csv").write_text("a,b\n")
    monkeypatch.setenv("FEDML_STORAGE_HOME", str(src / ".fedml-storage"))  # e.g. uploading ~ itself
    assert fedml_login(TEST_API_KEY).ok  # a config file holding the key, inside the folder
    (src / "settings.json").symlink_to(src / ".fedml-storage" / "config.json")  # and a link to it
    client = StorageClient(service="LOCAL", local_root=str(src / "store"))  # and the store the upload goes to
    first = client.upload(str(src))
    assert first.ok, first.message
    assert first.data.left_out == [".fedml-storage", "settings.json", "store"]
    assert "fedml-storage's own folder" in first.message and "fedml-storage's own" in caplog.text
    again = client.upload(str(src))  # the store grew by the first upload: no part of the data
    assert again.ok and again.data.skipped
    down = client.download("project", tmp_path / "out")
    assert tree_bytes(Path(down.data)) == {"data.csv": b"a,b\n"}
    for inside in (src / ".fedml-storage" / "config.json", src / ".fedml-storage" / "cache", src / "store"):
        refused = client.upload(str(inside))
        assert refused.code == ResponseCode.FAILURE and refused.reason == "invalid_input"
        assert "is fedml-storage's own" in refused.message and "may hold your key" in refused.message
    assert [m.dataName for m in client.list().data] == ["project"]


def test_a_home_set_to_a_project_folder_still_uploads_its_data(isolated_home: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fedml_storage import StorageClient
    from fedml_storage.api import fedml_login
    from tests.conftest import TEST_API_KEY

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "rows.csv").write_text("1\n")
    monkeypatch.setenv("FEDML_STORAGE_HOME", str(project))  # config, cache and store live in the project
    assert fedml_login(TEST_API_KEY).ok
    client = StorageClient(service="LOCAL")
    assert client.upload(str(project / "data")).ok  # the user's data beside them
    whole = client.upload(str(project))
    assert whole.ok and sorted(whole.data.left_out) == [".config.lock", "cache", "config.json", "store"]
    down = Path(client.download("project", tmp_path / "out").data)
    assert tree_bytes(down) == {"data": None, "data/rows.csv": b"1\n"}


_UPLOAD_AS_NON_ROOT = """
import json, sys
from fedml_storage import StorageClient

client = StorageClient(service="LOCAL", local_root=sys.argv[1])
refused = client.upload(sys.argv[2])
print(json.dumps([refused.reason, refused.message, client.list().data == [],
                  client.upload(sys.argv[2], ignore_patterns=sys.argv[3]).ok]))
"""


def test_a_folder_that_cannot_be_read_says_what_to_do(tmp_path: Path) -> None:
    import json

    src = tmp_path / "ds"
    (src / "locked").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "locked").chmod(0o000)
    try:
        run = run_without_root(_UPLOAD_AS_NON_ROOT, str(tmp_path / "store"), str(src), "locked/")
    finally:
        (src / "locked").chmod(0o755)
    assert run.returncode == 0, run.stderr
    reason, message, nothing_stored, ignored_ok = json.loads(run.stdout)
    assert reason == "invalid_input" and "cannot read" in message and "Permission denied" in message
    assert "nothing was published" in message and "ignore_patterns: 'locked/'" in message
    assert nothing_stored and ignored_ok  # what the message suggests works


def test_a_file_that_cannot_be_read_says_what_to_do(store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fedml_storage import archive

    src = tmp_path / "ds"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "secret.key").write_text("no")
    opened = archive.open_plain

    def refused(path):  # chmod 000 by another user (root, as the tests may run, reads anything)
        if str(path).endswith("secret.key"):
            raise PermissionError(13, "Permission denied", str(path))
        return opened(path)

    monkeypatch.setattr(archive, "open_plain", refused)
    response = store.client().upload(str(src))
    assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input"
    assert "cannot read" in response.message and "secret.key" in response.message
    assert "ignore_patterns" in response.message and "nothing was published" in response.message
    assert store.client().list().data == []
    assert store.client().upload(str(src), ignore_patterns=["*.key"]).ok  # what the message suggests works


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux's /proc")
def test_a_file_whose_size_is_not_its_content_is_refused_and_nothing_is_stored(store: Store, tmp_path: Path) -> None:
    """/proc files say 0 bytes and give more: the upload succeeded, and every download failed as corrupt (the advice,
    delete and upload again, did the same); in a folder it was said to be changing, and upload again never helped."""
    folder = tmp_path / "sysinfo"
    folder.mkdir()
    (folder / "notes.txt").write_text("n")
    (folder / "cpuinfo").symlink_to("/proc/cpuinfo")
    client = store.client()
    for path in ("/proc/cpuinfo", str(folder)):
        response = client.upload(path)
        assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input", response
        assert "cpuinfo gives" in response.message and "where its size says 0" in response.message, response.message
        assert "changed while" not in response.message
        assert store.keys() == [] and client.list().data == []
    (folder / "cpuinfo").unlink()
    (folder / "cpuinfo").write_bytes(Path("/proc/cpuinfo").read_bytes())  # what the message advises
    assert client.upload(str(folder)).ok and client.download("sysinfo", tmp_path / "out").ok
    assert tree_bytes(tmp_path / "out" / "sysinfo") == tree_bytes(folder)


def test_a_folder_written_to_while_uploaded_publishes_nothing_and_may_be_tried_again(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedml_storage import uploads

    src = tmp_path / "growing"
    src.mkdir()
    (src / "log.txt").write_text("first line\n")
    real_scan = uploads.scan_tree

    def scan_then_append(*args, **kwargs):  # a writer appends between the scan and the packing
        tree = real_scan(*args, **kwargs)
        with open(src / "log.txt", "a") as fh:
            fh.write("second line\n")
        return tree

    monkeypatch.setattr(uploads, "scan_tree", scan_then_append)
    response = store.client().upload(str(src))
    assert response.code == ResponseCode.FAILURE and response.reason == "conflict" and response.retryable
    assert "changed while it was being uploaded" in response.message and "no longer being written" in response.message
    assert store.keys() == []
    monkeypatch.setattr(uploads, "scan_tree", real_scan)  # the writer is done: the next try publishes all of it
    assert store.client().upload(str(src)).ok
    assert store.client().download("growing", str(tmp_path / "out")).ok
    assert (tmp_path / "out" / "growing" / "log.txt").read_text() == "first line\nsecond line\n"


SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")  # says 4096 bytes, gives a line


@pytest.mark.skipif(not SYSFS.is_file() or SYSFS.stat().st_size == len(SYSFS.read_bytes()),
                    reason="needs a sysfs file whose size is not its content")
def test_a_file_that_says_more_than_it_gives_is_refused_at_once(store: Store) -> None:
    """On S3 the upload promised its stat's size, waited read_timeout x max_attempts for bytes that never came, and
    then called it a network failure (retried by Airflow and Prefect)."""
    with store.client(read_timeout=5, max_attempts=1) as client:
        response = client.upload(str(SYSFS), "thp")
    assert response.reason == "invalid_input" and not response.retryable, response.message
    assert "where its size says 4096" in response.message and store.keys() == []


@pytest.mark.parametrize("removed", ["b.txt", "sub"])
def test_an_item_removed_while_its_folder_is_read_is_a_change_not_bad_input(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, removed: str) -> None:
    """A file removed between the folder's listing and its stat was called a broken link, a sub-folder removed before
    it was read "cannot read": bad input, so Airflow and Prefect did not retry what another try would upload."""
    import shutil

    from fedml_storage import trees

    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "b.txt").write_text("beta")
    (src / "sub" / "c.txt").write_text("gamma")
    real_listing = trees._listing

    def listing_then_remove(folder: str, prefix: str):
        if removed == "sub" and prefix == "sub/":  # stat'ed as a folder, gone before it is read
            shutil.rmtree(folder)
        items = real_listing(folder, prefix)
        if removed == "b.txt" and prefix == "":  # listed, gone before its stat
            (src / "b.txt").unlink()
        return items

    monkeypatch.setattr(trees, "_listing", listing_then_remove)
    response = store.client().upload(str(src))
    assert response.code == ResponseCode.FAILURE and response.reason == "conflict" and response.retryable
    assert f"{src / removed} was removed or replaced while the folder was being read" in response.message
    assert "broken link" not in response.message and "nothing was published" in response.message
    assert store.keys() == []
    monkeypatch.setattr(trees, "_listing", real_listing)  # nothing moves now: the next try publishes what is there
    assert store.client().upload(str(src)).ok and store.client().download("ds", str(tmp_path / "out")).ok
    assert sorted(p.name for p in (tmp_path / "out" / "ds").rglob("*")) == sorted(p.name for p in src.rglob("*"))


def test_a_folder_of_nothing_but_what_is_no_data_is_refused_not_stored_empty(isolated_home: Path, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Uploading fedml-storage's home itself, or a folder of FIFOs, published an empty dataset (helper-97)."""
    from fedml_storage import StorageClient

    client = StorageClient(service="LOCAL")
    (tmp_path / "f.txt").write_text("x")
    assert client.upload(str(tmp_path / "f.txt")).ok  # the home now holds a store, caches, a lock
    fifos = tmp_path / "fifos"
    fifos.mkdir()
    os.mkfifo(fifos / "pipe")
    for src, said in ((isolated_home, "cache"), (fifos, "pipe")):
        refused = client.upload(str(src))
        assert refused.reason == "invalid_input" and "holds no file or folder to upload, only what is not data: " \
            in refused.message and said in refused.message, refused.message
    assert [m.dataName for m in client.list().data] == ["f.txt"]
    layout = tmp_path / "layout"  # folders are data, even empty: a tree of them with a link is stored (helper-101)
    (layout / "run-1" / "ckpt").mkdir(parents=True)
    os.symlink("run-1", layout / "latest")
    stored = client.upload(str(layout))
    assert stored.ok and stored.data.left_out == ["latest"], stored.message
    # stored, with a warning: an upstream step that wrote nothing looked like any upload (helper-103)
    assert f"{layout} holds no file (only 2 folder(s)): it is stored as a dataset without data" in caplog.text
