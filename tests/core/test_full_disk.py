"""A disk that fills while data is written (helper-103): the failure said "no space left on the local disk" without
saying which, or named a temp file of ours."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fedml_storage import StorageClient, api

from .conftest import Store


def test_a_local_store_that_fills_up_names_its_folder(isolated_home: Path, tmp_path: Path, small_disk: Path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(2 << 20))  # larger than the store's disk
    with StorageClient(service="LOCAL", local_root=str(small_disk / "store")) as client:
        response = client.upload(str(tmp_path / "big.bin"))
        assert response.retryable and "no space left on the local disk" in response.message, response
        assert str(small_disk / "store") in response.message and ".tmp" not in response.message
        assert client.list().unwrap() == []  # nothing published
    assert not [p for p in (small_disk / "store").rglob("*") if p.is_file() and p.name != ".lock"]


def test_a_download_whose_disk_fills_up_names_its_folder(store: Store, tmp_path: Path, small_disk: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(2 << 20))
    assert store.client().upload(tmp_path / "big.bin").ok
    real = shutil.disk_usage  # the disk fills after the check: another writer, say
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=real(p).total * 10))
    dest = small_disk / "out"
    response = api.download("big.bin", service=store.service, api_key=store.api_key, dest_path=str(dest))
    assert response.retryable and "no space left on the local disk" in response.message, response
    assert f"({dest})" in response.message and ".fedml-download-" not in response.message
    assert not (dest / "big.bin").exists()
