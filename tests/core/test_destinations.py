"""What a download finds at its destination and must cope with: copies the user changed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedml_storage import ResponseCode, dest_temps

from .conftest import Store

SCENARIO = """
import json, os, sys
from fedml_storage import api
src, dest = sys.argv[1], sys.argv[2]
assert api.upload(src, service="LOCAL").ok
assert api.download("ds", service="LOCAL", dest_path=dest).ok
os.chmod(os.path.join(dest, "ds", "sub"), 0o555)  # the user protected part of the copy
r = api.download("ds", service="LOCAL", dest_path=dest)
print(json.dumps([r.code.value, r.message, sorted(os.listdir(dest)), sorted(os.listdir(os.path.join(dest, "ds", "sub")))]))
"""


def test_replacing_a_copy_with_a_read_only_folder_leaves_no_hidden_copy(isolated_home: Path, tmp_path: Path) -> None:
    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("x")
    dest = tmp_path / "dest"
    cmd = [sys.executable, "-c", SCENARIO, str(src), str(dest)]
    if os.geteuid() == 0:  # root ignores permissions: run without the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permissions cannot be enforced")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    run = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=120)
    assert run.returncode == 0, run.stderr
    code, message, listing, inside = json.loads(run.stdout)
    assert code == "SUCCESS", message
    assert listing == ["ds"] and inside == ["f.txt"]  # no .fedml-download-* copy left behind


def test_a_file_and_a_folder_never_replace_each_other(store: Store, tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("a")
    (tmp_path / "w.bin").write_bytes(b"weights")
    client = store.client()
    assert client.upload(tmp_path / "ds").ok and client.upload(tmp_path / "w.bin").ok
    dest = tmp_path / "dest"
    (dest / "w.bin").mkdir(parents=True)
    (dest / "w.bin" / "mine.txt").write_text("the user's folder")
    (dest / "ds").write_text("the user's file")
    for name, kind in (("w.bin", "is a folder"), ("ds", "is a file")):
        response = client.download(name, dest)
        assert response.reason == "invalid_input" and kind in response.message, response.message
    assert (dest / "w.bin" / "mine.txt").read_text() == "the user's folder"
    assert (dest / "ds").read_text() == "the user's file"
    assert sorted(p.name for p in dest.iterdir()) == ["ds", "w.bin"]


def test_a_file_made_at_the_target_during_a_folder_download_is_kept(store: Store, tmp_path: Path, monkeypatch) -> None:
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.backends.s3 import S3Store

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("a")
    client = store.client()
    assert client.upload(tmp_path / "ds").ok
    dest = tmp_path / "dest"
    backend = LocalStore if store.service == "LOCAL" else S3Store
    fetch = backend.get_into

    def user_writes_meanwhile(self, *args, **kwargs):
        (dest / "ds").write_text("written by the user while the download ran")
        return fetch(self, *args, **kwargs)

    monkeypatch.setattr(backend, "get_into", user_writes_meanwhile)
    response = client.download("ds", dest)
    assert response.reason == "invalid_input" and "is a file" in response.message, response.message
    assert (dest / "ds").read_text() == "written by the user while the download ran"
    assert sorted(p.name for p in dest.iterdir()) == ["ds"]


def test_the_sweep_reports_only_what_it_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    stem = dest_temps.TEMP_PREFIX + "killed"
    (tmp_path / f"{stem}.d").mkdir()  # a killed download's unpacked folder: removed, and said so
    (tmp_path / f"{stem}2.sha").write_text("note")  # a live download's note, gone with it once listed
    real_lstat = Path.lstat

    def listed_then_gone(path: Path):
        st = real_lstat(path)
        if path.suffix == ".sha":
            path.unlink()  # its download finished between the sweep's listing and its look at the file
        return st

    monkeypatch.setattr(Path, "lstat", listed_then_gone)
    with caplog.at_level(logging.INFO, logger="fedml_storage"):
        dest_temps.sweep(tmp_path)
    assert list(tmp_path.iterdir()) == []
    removed = [r.getMessage() for r in caplog.records if "left by an interrupted download" in r.getMessage()]
    assert removed == [f"removed {tmp_path / f'{stem}.d'}, left by an interrupted download"]


def _mount(args: list[str]) -> bool:
    """Mount as asked; False where this machine does not let the tests mount (no root, a container)."""
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="mounts made by the test")
def test_a_volume_mounted_at_the_target_is_refused_before_fetching_and_kept(store: Store, tmp_path: Path) -> None:
    from .conftest import make_tree

    assert store.client().upload(str(make_tree(tmp_path / "ds"))).ok
    (tmp_path / "data.bin").write_bytes(b"new weights")
    assert store.client().upload(str(tmp_path / "data.bin")).ok
    dest = tmp_path / "dest"
    (dest / "ds").mkdir(parents=True)
    (dest / "data.bin").write_bytes(b"")
    host_file = tmp_path / "host.bin"
    host_file.write_bytes(b"the host's copy")
    if not _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(dest / "ds")]):
        pytest.skip("this machine does not let the tests mount")
    try:
        (dest / "ds" / "on-volume.txt").write_text("kept")
        folder = store.client().download("ds", dest)
        assert folder.code.value == "FAILURE" and folder.reason == "invalid_input"
        assert "is a mount point" in folder.message and "another dest_path" in folder.message
        assert os.listdir(dest / "ds") == ["on-volume.txt"]
        assert _mount(["--bind", str(host_file), str(dest / "data.bin")])  # docker run -v ./host.bin:/dest/data.bin
        try:
            file = store.client().download("data.bin", dest)
            assert file.code.value == "FAILURE" and file.reason == "invalid_input"  # not "please report"
            assert "busy" in file.message and "mount point" in file.message
            assert host_file.read_bytes() == b"the host's copy"
        finally:
            subprocess.run(["umount", str(dest / "data.bin")], check=True)
        assert sorted(os.listdir(dest)) == ["data.bin", "ds"]  # nothing of the downloads was left
    finally:
        subprocess.run(["umount", str(dest / "ds")], check=True)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts made by the test")
def test_a_folder_mounted_inside_the_target_is_never_emptied(store: Store, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A bind mount inside dest/<name> (helper-90): replacing the copy emptied the mounted folder, and every later
    download's sweep again; with the store's own folder mounted there, the whole store."""
    from fedml_storage.dest_temps import swap_in
    from fedml_storage.removal import mount_points, remove_tree

    from .conftest import make_tree

    assert store.client().upload(str(make_tree(tmp_path / "ds"))).ok
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("no dataset's")
    (tmp_path / "dest" / "ds" / "share").mkdir(parents=True)
    if not _mount(["--bind", str(elsewhere), str(tmp_path / "dest" / "ds" / "share")]):
        pytest.skip("this machine does not let the tests mount")
    os.chmod(elsewhere, 0o555)  # its modes are not opened up either (helper-93)
    try:
        response = store.client().download("ds", tmp_path / "dest")
        assert response.code.value == "FAILURE" and response.reason == "invalid_input", response.message
        assert "holds a mount point" in response.message and "unmount it" in response.message
        with pytest.raises(OSError, match="is mounted inside it"):  # what sweeps and swaps remove with
            remove_tree(tmp_path / "dest" / "ds")
        remove_tree(tmp_path / "dest" / "ds", ignore_errors=True)
        assert (elsewhere / "precious.txt").read_text() == "no dataset's"
        fresh = tmp_path / "dest" / ".fresh"  # a mount made after the download's checks: the swap leaves it, and says
        fresh.mkdir()
        with caplog.at_level(logging.WARNING, "fedml_storage"):
            swap_in(fresh, tmp_path / "dest" / "ds", tmp_path / "dest" / ".aside")
        assert "could not be removed entirely" in caplog.text and str(fresh) in caplog.text
        assert (elsewhere / "precious.txt").read_text() == "no dataset's"
        assert stat.S_IMODE(os.stat(elsewhere).st_mode) == 0o555
    finally:
        for point in reversed(mount_points(tmp_path)):
            subprocess.run(["umount", point], check=True)


def test_a_busy_local_path_is_named_with_what_to_do() -> None:
    import errno

    from fedml_storage.errors import InvalidInput, local_os_error

    mapped = local_os_error(OSError(errno.EBUSY, "Device or resource busy", "/data/w.bin"))
    assert isinstance(mapped, InvalidInput)
    assert "/data/w.bin" in str(mapped) and "mount point" in str(mapped) and "choose another folder" in str(mapped)


def test_a_download_says_when_it_replaced_a_copy(store: Store, tmp_path: Path) -> None:
    from .conftest import make_tree

    assert store.client().upload(str(make_tree(tmp_path / "ds"))).ok
    first = store.client().download("ds", tmp_path / "out")
    assert first.ok and first.data.replaced is False and "replacing" not in first.message
    (tmp_path / "out" / "ds" / "mine.txt").write_text("the user's own notes")  # what the next download replaces
    second = store.client().download("ds", tmp_path / "out")
    assert second.data.replaced is True and second.message.endswith("replacing what was there")
    assert not (tmp_path / "out" / "ds" / "mine.txt").exists() and second.data.to_dict()["replaced"] is True


def test_a_download_never_replaces_fedml_storages_own_files(store: Store, isolated_home: Path, tmp_path: Path) -> None:
    """A dataset named like the LOCAL store's folder, downloaded beside it, replaced the whole store (every dataset
    gone); one named config.json, downloaded into the home, replaced the saved settings and key."""
    from fedml_storage import api
    from fedml_storage.config import config_path

    client = store.client()
    assert api.configure(keep_versions=2).ok
    saved = config_path().read_bytes()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "x.txt").write_text("not the store")
    (tmp_path / "config.json").write_text('{"evil": 1}')
    for src in ("store", "config.json"):
        assert client.upload(str(tmp_path / src)).ok
    assert client.upload(str(tmp_path / "store"), name=isolated_home.name).ok
    keys = store.keys()
    for name, dest in [("store", isolated_home),  # is the LOCAL store
                       ("config.json", isolated_home),  # is the config file
                       (isolated_home.name, isolated_home.parent),  # holds the home
                       ("config.json", isolated_home / "store" / "default"),  # lies in the store
                       ("config.json", isolated_home / "partial")]:  # lies in the kept partial downloads
        response = client.download(name, dest)
        assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input", (name, dest, response)
        assert "fedml-storage's" in response.message and "another dest_path" in response.message
    assert config_path().read_bytes() == saved and store.keys() == keys
    assert sorted(m.dataName for m in client.list().data) == sorted(["config.json", "store", isolated_home.name])
    # beside them, and onto a link to the store (a download replaces the link itself), a download goes ahead
    assert client.download("config.json", isolated_home / "work").ok
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "store").symlink_to(isolated_home / "store")
    assert client.download("store", tmp_path / "linked").ok
    assert (tmp_path / "linked" / "store" / "x.txt").read_text() == "not the store"
    assert store.keys() == keys


def test_a_broad_local_root_refuses_downloads_only_into_its_namespace_folders(store: Store, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """local_root may be a broad folder (/data): a download beside the store's namespace folders is the user's."""
    broad = tmp_path / "data"
    (tmp_path / "ds").write_text("d")
    client = store.client()
    assert client.upload(str(tmp_path / "ds")).ok
    monkeypatch.setenv("FEDML_STORAGE_LOCAL_ROOT", str(broad))
    client = store.client()
    if store.service == "LOCAL":  # the store moved: the dataset goes into the broad root's namespace
        assert client.upload(str(tmp_path / "ds")).ok
    assert client.download("ds", broad / "projects").ok
    assert (broad / "projects" / "ds").read_text() == "d"
    inside = client.download("ds", broad / "default" / "data")
    assert inside.code == ResponseCode.FAILURE and "fedml-storage's LOCAL store" in inside.message
    # and what was downloaded there is the user's to upload again (helper-90: uploads refused all of local_root)
    again = client.upload(str(broad / "projects" / "ds"), name="ds-copy")
    assert again.ok, again.message
    (broad / "mnist" / "data").mkdir(parents=True)  # a user's folder shaped like a namespace's (helper-93)
    (broad / "mnist" / "manifests").mkdir()
    (broad / "mnist" / "data" / "train.csv").write_text("1,2")
    assert client.upload(str(broad / "mnist")).ok
    if store.service == "LOCAL":  # the store's own parts under it stay refused
        for own in (broad, broad / "default", broad / "default" / "manifests", broad / ".tmp"):
            own.mkdir(exist_ok=True)
            refused = client.upload(str(own), name="x")
            assert refused.reason == "invalid_input" and "fedml-storage's own" in refused.message, (own, refused)
