"""A LOCAL store shared by several users (the README suggests one for Airflow workers): what one user stores the
others can read, as the umask allows; an entry another user keeps private costs the others nothing else."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fedml_storage import StorageClient


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_stored_files_get_the_modes_the_umask_allows(tmp_path: Path, mask: int) -> None:
    (tmp_path / "ds" / "sub").mkdir(parents=True)
    (tmp_path / "ds" / "sub" / "a.txt").write_text("a")
    (tmp_path / "w.bin").write_bytes(b"weights")
    root = tmp_path / "store"
    old = os.umask(mask)
    try:
        with StorageClient(service="LOCAL", local_root=root) as client:
            assert client.upload(tmp_path / "ds").ok and client.upload(tmp_path / "w.bin").ok
    finally:
        os.umask(old)
    stored = [p for p in root.rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(stored) == 4  # two manifests, a zip and a file
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in stored} == {oct(0o666 & ~mask)}


def test_a_file_system_that_refuses_chmod_still_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def refuse(path, mode, *args, **kwargs):  # as vfat or CIFS without 'noperm' do
        raise PermissionError(errno.EPERM, "Operation not permitted", str(path))

    (tmp_path / "f.txt").write_text("kept")
    with StorageClient(service="LOCAL", local_root=tmp_path / "store") as client:
        fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        monkeypatch.setattr(os, "chmod", refuse)
        assert client.upload(tmp_path / "f.txt").ok
        monkeypatch.undo()
        if fds is not None:
            assert len(os.listdir("/proc/self/fd")) == fds  # no descriptor left open
        down = client.download("f.txt", tmp_path / "out")
        assert down.ok and Path(down.data).read_text() == "kept"


SCENARIO = """
import json, logging, sys
from fedml_storage import StorageClient
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("fedml_storage").addHandler(handler)
with StorageClient(service="LOCAL", local_root=sys.argv[1]) as client:
    listed = client.list()
    cleaned = client.cleanup(3600)
    mine = client.download("mine.txt", sys.argv[2])
print(json.dumps({"listed": [m.dataName for m in listed.data or []], "list_message": listed.message,
                  "cleanup": cleaned.code.value, "cleaned": cleaned.data, "download": mine.code.value,
                  "warnings": warnings}))
"""


def test_an_entry_another_user_keeps_private_is_skipped_not_fatal(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to stand for another user's private file")
    root = tmp_path / "store"
    for name in ("mine.txt", "theirs.txt"):
        (tmp_path / name).write_text(name)
        with StorageClient(service="LOCAL", local_root=root) as client:
            assert client.upload(tmp_path / name).ok
    private = root / "default" / "manifests" / "theirs.txt.json"
    os.chown(private, 65534, 65534)  # another user's, readable by them alone
    os.chmod(private, 0o600)
    # a shared store's sticky temp folder holds a stale temp file of that other user, which we may not remove
    temp = root / ".tmp"
    os.chown(temp, 65534, 65534)
    os.chmod(temp, 0o1777)
    (temp / "theirs.tmp").write_bytes(b"x")
    os.chown(temp / "theirs.tmp", 65534, 65534)
    os.utime(temp / "theirs.tmp", (1, 1))
    data_before = sorted(p.relative_to(root).as_posix() for p in (root / "default" / "data").rglob("*") if p.is_file())
    # root ignores permissions: run without the capabilities that let it
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable, "-c", SCENARIO,
           str(root), str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["listed"] == ["mine.txt"], seen["list_message"]
    assert any("'theirs.txt'" in w and "you may not read" in w for w in seen["warnings"]), seen["warnings"]
    assert seen["cleanup"] == "SUCCESS" and seen["download"] == "SUCCESS"
    assert seen["cleaned"]["objects_not_removed"] == 1 and (temp / "theirs.tmp").exists()
    data_after = sorted(p.relative_to(root).as_posix() for p in (root / "default" / "data").rglob("*") if p.is_file())
    assert data_after == data_before  # cleanup left the data of the entry it could not read


def test_another_users_lock_file_does_not_stop_an_upload(tmp_path: Path) -> None:
    """The store's lock file, made by another user with umask 022 (0644): the next user's first upload failed on
    opening it for writing, which a lock does not need (helper-99)."""
    from .conftest import run_without_root

    root = tmp_path / "store"
    (tmp_path / "f.txt").write_text("x")
    with StorageClient(service="LOCAL", local_root=root) as client:
        assert client.upload(tmp_path / "f.txt").ok
    os.chown(root / ".lock", 65534, 65534)
    os.chmod(root / ".lock", 0o644)
    script = ("import sys; from fedml_storage import StorageClient\n"
              "with StorageClient(service='LOCAL', local_root=sys.argv[1], namespace='team-b') as c:\n"
              "    r = c.upload(sys.argv[2]); print(r.message); assert r.ok")
    run = run_without_root(script, str(root), str(tmp_path / "f.txt"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert StorageClient(service="LOCAL", local_root=root, namespace="team-b").get_metadata("f.txt").ok


def test_a_store_the_user_may_not_write_says_so(tmp_path: Path) -> None:
    """With no lock file there and no right to make one, the read-only fallback for another user's lock file said
    "FileNotFoundError ... please report this" instead of the permission problem (helper-101)."""
    from .conftest import run_without_root

    root = tmp_path / "store"
    (tmp_path / "f.txt").write_text("x")
    with StorageClient(service="LOCAL", local_root=root) as client:
        assert client.upload(tmp_path / "f.txt").ok
    (root / ".lock").unlink()
    os.chown(root, 65534, 65534)
    os.chmod(root, 0o755)
    script = ("import sys; from fedml_storage import StorageClient\n"
              "with StorageClient(service='LOCAL', local_root=sys.argv[1]) as c:\n"
              "    r = c.upload(sys.argv[2], description='new'); print(r.reason, r.message)")
    run = run_without_root(script, str(root), str(tmp_path / "f.txt"))
    assert run.returncode == 0 and run.stdout.startswith("access_denied ") and "Permission denied" in run.stdout, \
        run.stdout + run.stderr
    assert "please report" not in run.stdout
