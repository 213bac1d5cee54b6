"""`fedml-storage cleanup` in a subprocess, against LOCAL and moto S3: what it removes, keeps and says."""

from __future__ import annotations

import json
from pathlib import Path

from tests.core.conftest import make_tree, tree_bytes

from .test_cli import run


def _leave_an_incomplete_upload(store) -> None:
    """What a killed upload leaves behind in the store itself: a temp file (LOCAL), a multipart upload (S3)."""
    if hasattr(store, "root"):
        (store.root / ".tmp" / "default+data+killed").write_bytes(b"the first part")  # named as _write_atomic does
    else:
        key = "default/data/big/20260101T000000000000Z-0123abcd/big.zip"
        upload_id = store._client.create_multipart_upload(Bucket=store.bucket, Key=key)["UploadId"]
        # a part sent now: moto dates every multipart upload's start in 2010
        store._client.upload_part(Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"part")


def test_cleanup_removes_unpublished_leftovers_and_keeps_datasets(backend_env: dict, tmp_path: Path) -> None:
    from fedml_storage import StorageClient

    src = make_tree(tmp_path / "kept")
    assert run("upload", str(src), env=backend_env).returncode == 0
    with StorageClient() as client:  # the same settings, from the environment
        store = client._catalog().store
        ghost = "default/data/ghost/20260101T000000000000Z-0123abcd/ghost.bin"
        store.write_bytes(ghost, b"left by a killed upload")
        _leave_an_incomplete_upload(store)
        keys = sorted(o.key for o in store.list("default/"))
    bad = run("cleanup", "--older-than", "-1", env=backend_env)
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    kept = run("cleanup", env=backend_env)  # the default grace period: an hour, so nothing yet, and it says so
    assert kept.returncode == 0 and kept.stdout.strip() == (
        "cleanup removed 0 unreferenced object(s) and 0 incomplete upload(s); kept 1 incomplete upload(s) written to "
        "in the last 3600 s, which may still be running (once no upload runs, `fedml-storage cleanup --older-than 0` "
        "removes them)"), kept.stdout
    done = json.loads(run("cleanup", "--older-than", "0", "--json", env=backend_env).stdout)
    assert done == {"orphaned_objects_removed": 1, "incomplete_uploads_removed": 1, "objects_not_removed": 0,
                    "incomplete_uploads_kept": 0}
    with StorageClient() as client:
        assert sorted(o.key for o in client._catalog().store.list("default/")) == \
            [k for k in keys if "/ghost/" not in k]
    again = run("cleanup", env=backend_env)
    assert again.stdout.strip() == "cleanup removed 0 unreferenced object(s) and 0 incomplete upload(s)"
    got = run("download", "kept", "--dest", str(tmp_path / "out"), env=backend_env)
    assert got.returncode == 0 and tree_bytes(tmp_path / "out" / "kept") == tree_bytes(src)
