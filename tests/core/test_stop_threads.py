"""What the core's helper threads see of their caller: s3transfer's run in a copy of its context without its stop
(they end by the transfer being cancelled), the range pool's with it (a stopped ranged download ends its ranges)."""

from __future__ import annotations

import contextvars
import os
import threading
from pathlib import Path

import botocore.endpoint
import pytest

from fedml_storage import Stopped, stop_when, stops
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

MiB = 1 << 20
MARK: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_mark", default=None)


def test_transfer_threads_see_the_callers_context_without_its_stop(s3_store: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Prefect run's log is found through the context (s3transfer's threads had none, so their retry notes were
    lost); a stop seen inside s3transfer would leave its futures half done instead of cancelled."""
    seen: list[tuple[str, str, object, object]] = []
    real = botocore.endpoint.Endpoint.make_request

    def spy(self, operation_model, request_dict):
        seen.append((operation_model.name, threading.current_thread().name, stops._EVENT.get(), MARK.get()))
        return real(self, operation_model, request_dict)

    monkeypatch.setattr(botocore.endpoint.Endpoint, "make_request", spy)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f.bin").write_bytes(os.urandom(12 * MiB))
    (tmp_path / "big.bin").write_bytes(os.urandom(12 * MiB))
    MARK.set("caller")
    with s3_store.client(part_size=5 * MiB) as client, stop_when(threading.Event()):
        client.upload(str(tmp_path / "big.bin")).unwrap()  # a file: upload_file
        client.upload(str(tmp_path / "tree")).unwrap()  # a folder's zip as it is written: upload_fileobj
    in_pool = [s for s in seen if s[1].startswith("ThreadPoolExecutor")]
    assert {"CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= {s[0] for s in in_pool}, seen
    assert all(event is None and mark == "caller" for _, _, event, mark in in_pool), in_pool


def test_a_ranged_download_stopped_mid_fetch_keeps_what_it_fetched(s3_store: Store, moto_proxy: CuttingProxy,
                                                                   tmp_path: Path) -> None:
    kw = {"endpoint_url": moto_proxy.endpoint, "download_threshold": MiB, "download_part_size": 2 * MiB,
          "concurrency": 4, "partial_dir": str(tmp_path / "partial")}
    data = os.urandom(48 * MiB)
    (tmp_path / "data.bin").write_bytes(data)
    with s3_store.client(**kw) as client:
        client.upload(str(tmp_path / "data.bin")).unwrap()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    stop, gets = threading.Event(), []

    def on_get() -> None:
        gets.append(1)
        if len(gets) == 9:  # eight ranges (16 MiB) asked for before this one: some are in
            stop.set()
            threading.Event().wait(0.3)

    for _ in range(9):
        moto_proxy.on_request(rb"^GET /[^ ]*/data/", on_get)
    with s3_store.client(**kw) as client, stop_when(stop), pytest.raises(Stopped):
        client.download("data.bin", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    kept = list((tmp_path / "partial").iterdir())
    assert len(kept) == 1 and kept[0].stat().st_size >= 8 * MiB, [(p, p.stat().st_size) for p in kept]
    assert data.startswith(kept[0].read_bytes())  # what it kept is the object's start, to go on from
    assert not [t.name for t in threading.enumerate() if t.name.startswith("fedml-storage-range")]
    with s3_store.client(**kw) as client:
        assert Path(client.download("data.bin", str(dest)).unwrap().path).read_bytes() == data
