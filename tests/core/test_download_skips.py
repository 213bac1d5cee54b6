"""A download into a dest_path/<name> that holds exactly the version asked for keeps it and fetches nothing (a
pipeline's re-run re-fetched every byte); any difference at all is replaced whole, as before."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fedml_storage.backends.local import LocalStore
from fedml_storage.backends.s3 import S3Store
from fedml_storage.modes import umask

from .conftest import Store, make_tree, tree_bytes


def _count_fetches(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    fetched: list[str] = []
    backend = LocalStore if store.service == "LOCAL" else S3Store
    original = backend.get_into

    def spy(self, key, *args, **kwargs):
        fetched.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(backend, "get_into", spy)
    return fetched


def test_a_copy_of_the_version_asked_for_is_kept_and_nothing_is_fetched(
        store: Store, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "ds")
    (tmp_path / "model.bin").write_bytes(os.urandom(300_000))
    client = store.client()
    uris = {r.name: r.uri for r in (client.upload(str(p)).unwrap() for p in (src, tmp_path / "model.bin"))}
    fetched = _count_fetches(store, monkeypatch)
    out = tmp_path / "out"
    for name in ("ds", "model.bin"):
        first = client.download(name, str(out)).unwrap()
        assert not first.skipped and len(fetched) == 1
        inode = os.stat(first).st_ino
        again = client.download(name, str(out)).unwrap()
        assert again.skipped and not again.replaced and len(fetched) == 1, again.summary()
        assert os.stat(again).st_ino == inode  # kept, not replaced by a new copy
        assert (again.version, again.sha256, again.path) == (first.version, first.sha256, first.path)
        assert again.summary().endswith(f"nothing fetched from {uris[name]}") and again.to_dict()["skipped"] is True
        assert f"sha256 verified) from {uris[name]} to {first}" in first.summary()  # which store (helper-103)
        shutil.rmtree(isolated_home / "cache")  # without the digest cache: read and hashed, still kept
        assert client.download(name, str(out)).unwrap().skipped and len(fetched) == 1
        fetched.clear()
    assert tree_bytes(out / "ds") == tree_bytes(src)
    assert (out / "model.bin").read_bytes() == (tmp_path / "model.bin").read_bytes()


def _edit(path: Path) -> None:  # the same size, and the mtime put back (as tar or cp -p leave it)
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace_by_link(path: Path, elsewhere: Path) -> None:  # to a file of the same bytes: not the download's own copy
    elsewhere.mkdir(exist_ok=True)
    twin = elsewhere / path.name
    shutil.copyfile(path, twin)
    path.unlink()
    path.symlink_to(twin)


CHANGES: dict[str, Callable[[Path], None]] = {
    "a byte edited": lambda t: _edit(t / "sub" / "b.bin"),
    "a file added": lambda t: (t / "extra.txt").write_text("mine\n"),
    "a file removed": lambda t: (t / "a.txt").unlink(),
    "an empty folder added": lambda t: (t / "new-dir").mkdir(),
    "a mode changed": lambda t: (t / "a.txt").chmod(0o600),
    "the folder's own mode changed": lambda t: t.chmod(0o700),
    "a pipe added": lambda t: os.mkfifo(t / "pipe"),
    "a file replaced by a link": lambda t: _replace_by_link(t / "sub" / "b.bin", t.parent.parent / "elsewhere"),
    # a hard link: the copy is not the download's own (cp -al, rsync --link-dest, a hard-link cache leave these)
    "a file hard-linked outside": lambda t: os.link(t / "a.txt", t.parent.parent / "a-twin.txt"),
    "a file made setuid": lambda t: (t / "a.txt").chmod(0o4644),
    "a folder made setgid": lambda t: (t / "sub").chmod(0o2755),
    "the folder made sticky": lambda t: t.chmod(0o1755),
    # its owner could rewrite "the downloaded version" at any time
    "a file given to another user": lambda t: os.chown(t / "a.txt", 4242, -1),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_copy_that_differs_in_any_way_is_replaced_whole(store: Store, tmp_path: Path, change: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if change == "a file given to another user" and getattr(os, "geteuid", lambda: 1)() != 0:
        pytest.skip("needs root to give a file away")
    src = make_tree(tmp_path / "ds")
    client = store.client()
    assert client.upload(str(src)).ok
    out = tmp_path / "out"
    assert client.download("ds", str(out)).ok
    CHANGES[change](out / "ds")
    fetched = _count_fetches(store, monkeypatch)
    got = client.download("ds", str(out)).unwrap()
    assert not got.skipped and got.replaced and len(fetched) == 1
    assert tree_bytes(out / "ds") == tree_bytes(src)
    assert not (out / "ds" / "sub" / "b.bin").is_symlink() and (out / "ds" / "a.txt").stat().st_nlink == 1
    assert (out / "ds" / "a.txt").stat().st_uid == os.getuid()
    for path in (out / "ds", out / "ds" / "a.txt", out / "ds" / "sub"):  # the modes a download gives
        assert path.stat().st_mode & 0o7777 == (0o777 if path.is_dir() else 0o666) & (src / path.relative_to(
            out / "ds")).stat().st_mode & ~umask()


@pytest.mark.parametrize("change", ["a byte edited", "a link to the same bytes", "a folder of that name",
                                    "a hard link", "another mode", "setuid"])
def test_a_file_copy_that_differs_is_replaced_or_refused_as_before(store: Store, tmp_path: Path, change: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from fedml_storage import downloads

    # the download remembers what it wrote (any size), and still sees the changes made right after it
    monkeypatch.setattr(downloads, "RECORD_FILE_BYTES", 0)
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(50_000))
    client = store.client()
    assert client.upload(str(src)).ok
    out = tmp_path / "out"
    assert client.download("model.bin", str(out)).ok
    if change == "a byte edited":
        _edit(out / "model.bin")
    elif change == "a link to the same bytes":
        _replace_by_link(out / "model.bin", tmp_path / "elsewhere")
    elif change == "a hard link":
        os.link(out / "model.bin", tmp_path / "elsewhere.bin")
    elif change == "another mode":
        (out / "model.bin").chmod(0o600)
    elif change == "setuid":
        (out / "model.bin").chmod(0o4644)
    else:
        (out / "model.bin").unlink()
        (out / "model.bin").mkdir()
    fetched = _count_fetches(store, monkeypatch)
    got = client.download("model.bin", str(out))
    if change == "a folder of that name":  # as before: a folder is not a copy of a file to replace
        assert not got.ok and "is a folder" in got.message and fetched == []
        return
    assert got.unwrap().replaced and not got.data.skipped and len(fetched) == 1
    assert not (out / "model.bin").is_symlink() and (out / "model.bin").read_bytes() == src.read_bytes()
    st = (out / "model.bin").stat()
    assert st.st_nlink == 1 and st.st_mode & 0o7777 == 0o666 & ~umask()


def test_a_copy_of_another_version_is_replaced_by_the_one_asked_for(store: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "w.txt"
    src.write_text("v1")
    client = store.client(keep_versions=2)
    v1 = client.upload(str(src)).unwrap().version
    src.write_text("v2")  # the same size
    v2 = client.upload(str(src)).unwrap().version
    out = tmp_path / "out"
    fetched = _count_fetches(store, monkeypatch)
    assert client.download("w.txt", str(out), version=v1).unwrap().version == v1
    got = client.download("w.txt", str(out)).unwrap()
    assert (got.version, got.skipped, (out / "w.txt").read_text(), len(fetched)) == (v2, False, "v2", 2)
    assert client.download("w.txt", str(out), version=v2).unwrap().skipped and len(fetched) == 2
    again = client.download("w.txt", str(out), version=v1).unwrap()
    assert (again.skipped, (out / "w.txt").read_text(), len(fetched)) == (False, "v1", 3)


def test_a_version_stored_before_modes_were_recorded_is_fetched_over_a_copy_with_other_modes(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Such a record matches any modes for an upload (no re-upload after an upgrade); a download must be sure."""
    import json

    src = make_tree(tmp_path / "legacy")
    client = store.client()
    assert client.upload(str(src)).ok
    key = "default/manifests/legacy.json"
    manifest = json.loads(store.read(key))
    for field in ("modes", "folder_modes", "top_mode"):
        manifest["versions"][0].pop(field)
    store.write(key, json.dumps(manifest).encode())
    out = tmp_path / "out"
    assert client.download("legacy", str(out)).ok
    (out / "legacy" / "a.txt").chmod(0o600)
    fetched = _count_fetches(store, monkeypatch)
    assert not client.download("legacy", str(out)).unwrap().skipped and len(fetched) == 1
    assert (out / "legacy" / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask()


def test_an_unrelated_folder_at_the_target_is_not_walked_through_its_links(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check followed every link of whatever was at dest_path/<name> (one to /usr took seconds) and read all of
    an unrelated tree before finding it was not the dataset."""
    from fedml_storage import local_match

    src = make_tree(tmp_path / "ds")
    client = store.client()
    assert client.upload(str(src)).ok
    theirs = tmp_path / "out" / "ds"
    (theirs / "many").mkdir(parents=True)
    for i in range(50):
        (theirs / "many" / f"{i}.txt").write_text("not the dataset")
    (theirs / "usr").symlink_to("/usr")
    scanned: list[Path] = []
    real_scan = local_match.scan_tree
    monkeypatch.setattr(local_match, "scan_tree", lambda root, *a, **kw: scanned.append(root) or real_scan(root))
    got = client.download("ds", str(tmp_path / "out")).unwrap()
    assert not got.skipped and got.replaced and scanned == []  # told apart before any full scan
    assert tree_bytes(theirs) == tree_bytes(src)


def test_a_copy_with_bits_this_umask_takes_is_fetched(store: Store, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored by a teammate under umask 002 (files 664), copied here with those modes: this process (umask 022)
    would make 644, so the copy is not what its download gives."""
    before = os.umask(0o002)
    try:
        src = tmp_path / "shared"
        src.mkdir()
        (src / "a.txt").write_text("group-writable")
        client = store.client()
        assert client.upload(str(src)).ok
        assert client.download("shared", str(tmp_path / "out")).ok  # under 002: 664, kept as stored
        assert (tmp_path / "out" / "shared" / "a.txt").stat().st_mode & 0o777 == 0o664
        os.umask(0o022)
        fetched = _count_fetches(store, monkeypatch)
        assert not client.download("shared", str(tmp_path / "out")).unwrap().skipped and len(fetched) == 1
        assert (tmp_path / "out" / "shared" / "a.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(before)


def test_a_later_re_run_reads_no_file_of_a_kept_copy(store: Store, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder's download, and a large file's, remember what they made: no check reads a file. The first check of
    a smaller file reads and hashes it; it stores its digest (once it is old enough to trust its times), so later
    checks take a stat."""
    from fedml_storage import digests, downloads, local_match

    monkeypatch.setattr(digests, "RACY_SECONDS", 0)  # as if each run came a while after the one before
    monkeypatch.setattr(downloads, "RECORD_FILE_BYTES", 60_000)
    src = make_tree(tmp_path / "ds")
    (tmp_path / "model.bin").write_bytes(os.urandom(50_000))
    (tmp_path / "large.bin").write_bytes(os.urandom(60_000))
    client = store.client()
    read: list[str] = []
    real_sha256 = local_match.sha256_file
    monkeypatch.setattr(local_match, "sha256_file", lambda path, *a, **kw: read.append(str(path))
                        or real_sha256(path, *a, **kw))
    for name in ("ds", "model.bin", "large.bin"):
        assert client.upload(str(src if name == "ds" else tmp_path / name)).ok
        assert not client.download(name, str(tmp_path / "out")).unwrap().skipped
        assert client.download(name, str(tmp_path / "out")).unwrap().skipped
        assert bool(read) is (name == "model.bin"), name  # a smaller file is read and hashed once
        read.clear()
        assert client.download(name, str(tmp_path / "out")).unwrap().skipped and read == []


def test_confirm_replace_is_asked_only_before_a_copy_would_be_replaced(store: Store, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI asked "replace?" before any download into an existing DEST/NAME: also over a copy that is kept,
    and for a name that is not stored."""
    client = store.client()
    assert client.upload(str(make_tree(tmp_path / "ds"))).ok
    fetched = _count_fetches(store, monkeypatch)
    asked: list[Path] = []
    answer = {"yes": False}

    def confirm(path: Path) -> bool:
        asked.append(path)
        return answer["yes"]

    out = tmp_path / "out"
    assert client.download("ds", str(out), confirm_replace=confirm).ok and asked == []  # nothing there yet
    assert client.download("ds", str(out), confirm_replace=confirm).unwrap().skipped and asked == []
    (out / "ds" / "mine.csv").write_text("the user's own results")
    declined = client.download("ds", str(out), confirm_replace=confirm)
    assert declined.code.name == "FAILURE" and asked == [out / "ds"] and len(fetched) == 1
    assert "declined" in declined.message and (out / "ds" / "mine.csv").exists()
    answer["yes"] = True
    assert client.download("ds", str(out), confirm_replace=confirm).unwrap().replaced
    assert not (out / "ds" / "mine.csv").exists() and len(asked) == 2 and len(fetched) == 2
    (out / "gone").mkdir()
    assert not client.download("gone", str(out), confirm_replace=confirm).ok and len(asked) == 2
    (tmp_path / "one.txt").write_text("a file dataset")
    assert client.upload(str(tmp_path / "one.txt")).ok
    (out / "one.txt").mkdir()  # a folder where the file goes: refused, so not asked first
    assert "is a folder" in client.download("one.txt", str(out), confirm_replace=confirm).message and len(asked) == 2

    def broken(path: Path) -> bool:
        raise RuntimeError("no terminal")

    (out / "ds" / "mine.csv").write_text("the user's own results")
    failed = client.download("ds", str(out), confirm_replace=broken)
    assert failed.reason == "invalid_input" and "confirm_replace raised RuntimeError: no terminal" in failed.message
    assert (out / "ds" / "mine.csv").exists()


def test_a_folder_downloaded_here_is_kept_by_a_re_run_whatever_its_modes(store: Store, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored under umask 002 (files 664), downloaded under 022 (644): the copy's modes are not the stored ones, so
    every re-run fetched it again (a laptop's upload, a worker's downloads). The download now remembers what it
    made, and a change to the copy after it is still seen."""
    from fedml_storage import local_match

    before = os.umask(0o002)
    try:
        src = tmp_path / "shared"
        (src / "sub").mkdir(parents=True)
        (src / "a.txt").write_text("group-writable")
        (src / "sub" / "b.txt").write_text("and this")
        client = store.client()
        assert client.upload(str(src)).ok
    finally:
        os.umask(0o022)
    try:
        out = tmp_path / "out"
        first = client.download("shared", str(out)).unwrap()
        assert (out / "shared" / "a.txt").stat().st_mode & 0o777 == 0o644 and not first.skipped
        fetched = _count_fetches(store, monkeypatch)
        read: list[str] = []
        real_sha256 = local_match.sha256_file
        monkeypatch.setattr(local_match, "sha256_file", lambda path, *a, **kw: read.append(str(path))
                            or real_sha256(path, *a, **kw))
        again = client.download("shared", str(out)).unwrap()
        assert again.skipped and fetched == [] and read == [], again.summary()
        _edit(out / "shared" / "sub" / "b.txt")  # at once: the same size, the mtime put back
        assert not client.download("shared", str(out)).unwrap().skipped and len(fetched) == 1
        assert tree_bytes(out / "shared") == tree_bytes(src)
        os.chmod(out / "shared", 0o700)  # the folder's own mode is not in its files' stats
        assert not client.download("shared", str(out)).unwrap().skipped and len(fetched) == 2
    finally:
        os.umask(before)


def test_a_version_that_differs_only_in_the_folders_own_mode_is_not_taken_for_the_copy(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder's own mode is not in its archive: two versions can share one, and the copy of one was kept for
    the other (helper-84)."""
    src = make_tree(tmp_path / "ds")
    client = store.client(keep_versions=5)
    os.chmod(src, 0o755)
    open_one = client.upload(str(src)).unwrap()
    os.chmod(src, 0o700)
    private = client.upload(str(src)).unwrap()
    assert open_one.sha256 == private.sha256 and open_one.version != private.version
    out = tmp_path / "out"
    assert not client.download("ds", str(out), version=private.version).unwrap().skipped
    again = client.download("ds", str(out), version=open_one.version).unwrap()
    assert not again.skipped and (out / "ds").stat().st_mode & 0o777 == 0o755 & ~umask()
    assert client.download("ds", str(out), version=open_one.version).unwrap().skipped
