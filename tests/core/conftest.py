"""A `store` fixture: the same tests run on the embedded LOCAL store and on moto's S3 over HTTP."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedml_storage import StorageClient
from tests.conftest import TEST_API_KEY, s3_client


@dataclass
class Store:
    """Which service the API calls use, and raw access to the bytes behind them for inspection."""

    service: str
    api_key: str | None
    root: Path | None = None  # LOCAL
    endpoint: str | None = None  # S3
    bucket: str | None = None

    def client(self, **kw) -> StorageClient:
        return StorageClient(service=self.service, api_key=self.api_key, **kw)

    def keys(self) -> list[str]:
        if self.root is not None:
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in self.root.rglob("*")
                if p.is_file() and p.name != ".lock" and ".tmp" not in p.relative_to(self.root).parts
            )
        resp = s3_client(self.endpoint).list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    def read(self, key: str) -> bytes:
        if self.root is not None:
            return (self.root / key).read_bytes()
        return s3_client(self.endpoint).get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def remove(self, key: str) -> None:
        if self.root is not None:
            (self.root / key).unlink()
        else:
            s3_client(self.endpoint).delete_object(Bucket=self.bucket, Key=key)

    def write(self, key: str, data: bytes) -> None:
        if self.root is not None:
            (self.root / key).parent.mkdir(parents=True, exist_ok=True)
            (self.root / key).write_bytes(data)
        else:
            s3_client(self.endpoint).put_object(Bucket=self.bucket, Key=key, Body=data)


@pytest.fixture(params=["LOCAL", "S3"])
def store(request, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    if request.param == "LOCAL":
        root = isolated_home / "store"
        monkeypatch.setenv("FEDML_STORAGE_LOCAL_ROOT", str(root))
        return Store("LOCAL", None, root=root)
    return request.getfixturevalue("s3_store")


@pytest.fixture
def s3_store(moto_endpoint: str, s3_bucket: str, isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Only the S3 side, for what is an S3 matter (ranged GETs)."""
    monkeypatch.setenv("FEDML_STORAGE_BUCKET", s3_bucket)
    monkeypatch.setenv("FEDML_STORAGE_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("FEDML_STORAGE_REGION", "us-east-1")
    return Store("S3", TEST_API_KEY, endpoint=moto_endpoint, bucket=s3_bucket)


def make_tree(root: Path) -> Path:
    """A nested tree with an empty file, an empty folder and unicode names."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (root / "sub" / "deeper" / "c.csv").write_text("x,y\n1,2\n")
    (root / "sub" / "empty.txt").touch()
    (root / "données-ü.txt").write_text("unicode ✓\n", encoding="utf-8")
    return root


def tree_bytes(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes (None for folders) by relative path."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


def plant_archive(store: Store, name: str, archive: bytes, source_size: int) -> None:
    """Put an archive and a manifest that vouches for it, as an attacker with write access could."""
    key = f"default/data/{name}/v1/{name}.zip"
    store.write(key, archive)
    record = {"version": "v1", "key": key, "kind": "directory", "size": len(archive),
              "sha256": hashlib.sha256(archive).hexdigest(), "content_digest": "x", "source_size": source_size,
              "file_count": 1, "created_at": "2026-01-01T00:00:00Z"}
    manifest = {"name": name, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "versions": [record]}
    store.write(f"default/manifests/{name}.json", json.dumps(manifest).encode())


def zip_of(members: list[tuple[str, bytes]]) -> bytes:
    """A zip made by Python's zipfile holding `members` (names ending in / are folders), duplicates allowed."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names these tests need
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def run_without_root(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a Python script as root stripped of its permission overrides, as any user would run it (skips where that
    cannot be done)."""
    import shutil
    import sys

    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run without permission overrides")
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable, "-c", script, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=120)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB file system (tmpfs), where this machine lets us mount one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)
