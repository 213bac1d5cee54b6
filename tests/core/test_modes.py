"""File and folder modes in folder datasets: the zip keeps them, downloads give them back, so they are part of a
version."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedml_storage.catalog import Catalog

from .conftest import Store, make_tree, run_without_root


def test_a_mode_change_alone_is_a_new_version(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "tools"
    src.mkdir()
    script = src / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    client = store.client()
    first = client.upload(src).data
    script.chmod(0o755)  # the archive keeps modes: the stored folder no longer matches this one
    second = client.upload(src).data
    assert not second.skipped and second.version != first.version
    assert second.content_digest == first.content_digest  # the bytes are the same
    mask = os.umask(0o022)
    os.umask(mask)
    down = Path(client.download("tools", tmp_path / "out").data)
    assert (down / "run.sh").stat().st_mode & 0o777 == 0o755 & ~mask
    assert client.upload(src).data.skipped


def test_a_folder_stored_before_modes_were_recorded_stays_unchanged(store: Store, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "legacy")
    client = store.client()
    first = client.upload(src).data
    key = "default/manifests/legacy.json"
    manifest = json.loads(store.read(key))
    assert manifest["versions"][0].pop("modes") and manifest["versions"][0].pop("folder_modes")  # as earlier
    assert manifest["versions"][0].pop("top_mode") is not None
    store.write(key, json.dumps(manifest).encode())
    again = client.upload(src).data
    assert again.skipped and again.version == first.version  # no upload of every folder after the upgrade


def test_a_metadata_only_upload_never_lands_on_a_mode_change_made_meanwhile(store: Store, tmp_path: Path,
                                                                            monkeypatch) -> None:
    src = tmp_path / "tools"
    src.mkdir()
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o644)
    assert store.client().upload(src).ok
    other = tmp_path / "elsewhere" / "tools"  # the same bytes, executable
    other.mkdir(parents=True)
    (other / "run.sh").write_text("#!/bin/sh\n")
    (other / "run.sh").chmod(0o755)
    real_commit = Catalog.commit
    raced: list[bool] = []

    def another_upload_first(self, name, build, *read):
        if not raced:
            raced.append(True)
            assert store.client().upload(other).ok  # publishes a new version between this upload's read and commit
        return real_commit(self, name, build, *read)

    monkeypatch.setattr(Catalog, "commit", another_upload_first)
    got = store.client().upload(src, description="re-run")  # unchanged here: only its description would be new
    assert got.reason == "conflict" and got.retryable, got.message
    meta = store.client().get_metadata("tools").data
    assert meta.description != "re-run"  # not written on top of a version whose modes are not this tree's
    down = Path(store.client().download("tools", tmp_path / "out").data)
    assert (down / "run.sh").stat().st_mode & 0o100


def _masked(mode: int) -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mode & ~mask


def test_folder_modes_come_back_so_a_private_folder_stays_private(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "ds"
    (src / "private" / "keys").mkdir(parents=True)
    (src / "private" / "keys" / "k.pem").write_text("secret")
    (src / "private" / "keys" / "k.pem").chmod(0o644)  # protected by its folders, as many trees are
    (src / "readonly").mkdir()
    (src / "readonly" / "r.txt").write_text("r")
    (src / "private").chmod(0o700)
    (src / "private" / "keys").chmod(0o750)
    (src / "readonly").chmod(0o555)
    client = store.client()
    first = client.upload(src).data
    dest = tmp_path / "out"
    for _ in range(2):  # again: replacing a copy with a read-only folder in it
        down = Path(client.download("ds", dest).data)
        assert (down / "private").stat().st_mode & 0o777 == _masked(0o700)
        assert (down / "private" / "keys").stat().st_mode & 0o777 == _masked(0o750)
        assert (down / "readonly").stat().st_mode & 0o777 == _masked(0o555)
        assert (down / "private" / "keys" / "k.pem").read_text() == "secret"
    assert sorted(p.name for p in dest.iterdir()) == ["ds"]
    (src / "private").chmod(0o755)  # a folder's mode alone: a new version
    second = client.upload(src).data
    assert not second.skipped and second.version != first.version
    assert client.upload(src).data.skipped
    down = Path(client.download("ds", dest).data)
    assert (down / "private").stat().st_mode & 0o777 == _masked(0o755)
    (src / "readonly").chmod(0o755)  # so that pytest can remove it
    (down / "readonly").chmod(0o755)


def test_the_folder_itself_keeps_its_mode_and_a_mode_of_nothing_stays_so(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "ds"
    (src / "locked").mkdir(parents=True)
    (src / "open.txt").write_text("readable by all, guarded by the folder")
    (src / "open.txt").chmod(0o644)
    (src / "locked" / "none.txt").write_text("no one's")
    (src / "locked" / "none.txt").chmod(0o000)  # (root reads it all the same, as the upload here runs)
    (src / "locked").chmod(0o000)
    src.chmod(0o700)
    client = store.client(keep_versions=2)
    try:
        first = client.upload(src).data
        assert client.upload(src).data.skipped
        dest = tmp_path / "out"
        for _ in range(2):  # again: replacing such a copy
            down = Path(client.download("ds", dest).data)
            assert down.stat().st_mode & 0o777 == _masked(0o700)  # was 0755 whatever the folder's own mode
            assert (down / "locked").stat().st_mode & 0o777 == 0  # was 0755: a mode of 0 was taken for none
            assert (down / "locked" / "none.txt").stat().st_mode & 0o777 == 0
            assert (down / "open.txt").read_text().startswith("readable")
            (down / "locked").chmod(0o755)  # so that it can be checked, then replaced
            assert (down / "locked" / "none.txt").read_text() == "no one's"
        src.chmod(0o755)  # the folder's own mode alone: a new version
        second = client.upload(src).data
        assert not second.skipped and second.version != first.version
        assert Path(client.download("ds", dest).data).stat().st_mode & 0o777 == _masked(0o755)
        assert Path(client.download("ds", tmp_path / "old", version=first.version).data).stat().st_mode & 0o777 \
            == _masked(0o700)
    finally:
        for path in (src / "locked", *(tmp_path.glob("*/ds/locked"))):  # so that pytest can remove them
            path.chmod(0o755)


_DOWNLOAD_TWICE = """
import json, os, stat, sys
from fedml_storage import StorageClient

client = StorageClient(service="LOCAL", local_root=sys.argv[1])
modes = []
for _ in range(2):  # the second replaces a copy whose top folder is read-only and holds a 0000 folder
    down = client.download("ds", sys.argv[2])
    assert down.ok, down.message
    modes.append([stat.S_IMODE(os.stat(p).st_mode) for p in (down.data, os.path.join(down.data, "locked"))])
print(json.dumps(modes))
"""


def test_a_read_only_folder_with_a_locked_one_inside_downloads_and_is_replaced_without_root(tmp_path: Path) -> None:
    from fedml_storage import StorageClient

    src = tmp_path / "ds"
    (src / "locked").mkdir(parents=True)
    (src / "locked" / "k.txt").write_text("k")
    (src / "locked").chmod(0o000)
    src.chmod(0o500)
    try:
        assert StorageClient(service="LOCAL", local_root=str(tmp_path / "store")).upload(src).ok
    finally:
        src.chmod(0o755)
        (src / "locked").chmod(0o755)
    (tmp_path / "out").mkdir()
    run = run_without_root(_DOWNLOAD_TWICE, str(tmp_path / "store"), str(tmp_path / "out"))
    try:
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == [[_masked(0o500), 0], [_masked(0o500), 0]]
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ds"]  # the replaced copy is gone
    finally:
        for path in (tmp_path / "out" / "ds", tmp_path / "out" / "ds" / "locked"):
            if path.exists():
                path.chmod(0o755)


_FAIL_AFTER_UNPACKING = """
import json, os, sys
from fedml_storage import StorageClient, downloads

def fail(*args):  # e.g. a Ctrl-C between unpacking and renaming into place
    raise KeyboardInterrupt

downloads.swap_in = fail
try:
    StorageClient(service="LOCAL", local_root=sys.argv[1]).download("ds", sys.argv[2])
except KeyboardInterrupt:
    pass
print(json.dumps(sorted(os.listdir(sys.argv[2]))))
"""


def test_a_download_unpacked_with_read_only_folders_and_then_stopped_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    (src / "readonly").mkdir(parents=True)
    (src / "readonly" / "r.txt").write_text("r")
    (src / "readonly").chmod(0o555)
    from fedml_storage import StorageClient

    assert StorageClient(service="LOCAL", local_root=str(tmp_path / "store")).upload(src).ok
    (src / "readonly").chmod(0o755)
    (tmp_path / "out").mkdir()
    run = run_without_root(_FAIL_AFTER_UNPACKING, str(tmp_path / "store"), str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []  # not even the unpacked folder, read-only inside


def test_a_folder_being_unpacked_is_private_until_it_is_in_place(store: Store, tmp_path: Path, monkeypatch) -> None:
    from fedml_storage import downloads

    src = tmp_path / "ds"
    (src / "private").mkdir(parents=True)
    (src / "private" / "k.pem").write_text("secret")
    (src / "private").chmod(0o700)
    assert store.client().upload(src).ok
    seen: list[int] = []
    real = downloads.safe_extract

    def watched(archive, dest, max_bytes, *more):
        seen.append(dest.stat().st_mode & 0o777)  # before any file lands: others may not enter
        return real(archive, dest, max_bytes, *more)

    monkeypatch.setattr(downloads, "safe_extract", watched)
    down = Path(store.client().download("ds", tmp_path / "out").data)
    assert seen == [0o700] and down.stat().st_mode & 0o777 == _masked(0o777)
