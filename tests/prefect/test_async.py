"""Real async flow runs of the async task variants: awaited, submitted and mapped, the event loop left free."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from fedml_storage import StorageClient
from prefect_tasks import (
    adelete_data,
    adownload_data,
    aget_data_metadata,
    alist_data,
    aupload_data,
    delete_data,
    download_data,
    get_data_metadata,
    list_data,
    upload_data,
)

from .conftest import run_logs


def test_async_variants_are_real_async_tasks_beside_the_sync_ones() -> None:
    pairs = [(upload_data, aupload_data), (download_data, adownload_data), (delete_data, adelete_data),
             (list_data, alist_data), (get_data_metadata, aget_data_metadata)]
    for sync, async_ in pairs:
        assert async_.isasync and not sync.isasync and async_.name == sync.name
        assert all(hasattr(async_, a) for a in ("submit", "map", "with_options"))
        assert async_.task_key != sync.task_key and async_.description == sync.description


def test_awaited_in_an_async_flow_without_blocking_its_event_loop(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "async-ds").mkdir()
    (tmp_path / "async-ds" / "a.txt").write_text("awaited")
    for i in range(2):
        (tmp_path / f"amap{i}.txt").write_text(str(i))
    entered, release = threading.Event(), threading.Event()
    original = StorageClient.upload

    def gated(self, *args, **kwargs):
        entered.set()  # the core call has started: it must not hold the event loop while it runs
        assert release.wait(30), "the flow's event loop was blocked while the core call ran"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StorageClient, "upload", gated)

    @flow
    async def async_flow() -> dict:
        async def let_go() -> None:  # runs only if the loop is free while the upload runs
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
            release.set()

        up, _ = await asyncio.gather(aupload_data(str(tmp_path / "async-ds")), let_go())
        path = await adownload_data("async-ds", dest_path=str(tmp_path / "out"), version=up["version"])
        meta = aget_data_metadata.submit("async-ds").result()
        mapped = [f.result()["name"] for f in aupload_data.map([str(tmp_path / f"amap{i}.txt") for i in range(2)])]
        listed = await alist_data()
        deleted = await adelete_data("async-ds")
        return {"up": up, "path": path, "meta": meta, "mapped": mapped,
                "listed": sorted(m["dataName"] for m in listed), "deleted": deleted}

    got = asyncio.run(async_flow())
    assert (Path(got["path"]) / "a.txt").read_text() == "awaited"
    assert got["meta"]["version"] == got["up"]["version"] and got["mapped"] == ["amap0.txt", "amap1.txt"]
    assert got["listed"] == ["amap0.txt", "amap1.txt", "async-ds"] and got["deleted"] is True

    async def artifact() -> list:  # made from the worker thread too
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["fedml-upload-async-ds"])))

    assert any(got["up"]["sha256"] in a.data for a in asyncio.run(artifact()))


def test_async_variants_retry_transient_failures_and_not_bad_input(tmp_path: Path, monkeypatch) -> None:
    from fedml_storage import FedMLStorageError
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.errors import TransientError

    (tmp_path / "flaky.txt").write_text("stored once")
    calls = {"put": 0, "upload": 0}
    original_put, original_upload = LocalStore.put_file, StorageClient.upload

    def flaky_once(self, *args, **kwargs):
        calls["put"] += 1
        if calls["put"] == 1:
            raise TransientError("injected: storage service busy (503)")
        return original_put(self, *args, **kwargs)

    def counting(self, *args, **kwargs):
        calls["upload"] += 1
        return original_upload(self, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "put_file", flaky_once)
    monkeypatch.setattr(StorageClient, "upload", counting)

    @flow
    async def retried() -> dict:
        return await aupload_data.with_options(retry_delay_seconds=0)(str(tmp_path / "flaky.txt"))

    assert asyncio.run(retried())["name"] == "flaky.txt" and calls == {"put": 2, "upload": 2}

    @flow
    async def bad() -> None:
        await aupload_data.with_options(retry_delay_seconds=0)(str(tmp_path / "missing"))

    calls["upload"] = 0
    try:
        asyncio.run(bad())
    except FedMLStorageError as exc:
        assert "does not exist" in str(exc)
    else:
        raise AssertionError("a missing path must fail the flow")
    assert calls["upload"] == 1  # bad input: no retry


@pytest.mark.parametrize("how", ["awaited async", "submitted sync"])
def test_a_timed_out_upload_in_a_worker_thread_stops_and_publishes_nothing(tmp_path: Path, s3_settings: dict,
                                                                            s3_bucket: str, moto_proxy, monkeypatch,
                                                                            how: str) -> None:
    """No signal reaches a worker thread: the timed-out async task's upload went on and published once its stalled
    part was answered, after the run had said it timed out; it now tells the core to stop. A sync task's timeout,
    which Prefect raises in its thread once that thread runs Python again, lands in the core, which cleans up."""
    from prefect_tasks import FedMLStorage
    from tests.conftest import s3_client

    path = str(tmp_path / "big.bin")
    (tmp_path / "big.bin").write_bytes(os.urandom(12 << 20))
    block = FedMLStorage(service="S3", bucket=s3_bucket, endpoint_url=moto_proxy.endpoint, region="us-east-1",
                         api_key=s3_settings["api_key"], part_size=5 << 20)
    moto_proxy.on_request(rb"^PUT /[^ ]*/data/[^ ]*partNumber=", lambda: time.sleep(3))  # past the timeout
    ended = threading.Event()
    original = StorageClient.upload

    def watched(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        finally:
            ended.set()

    monkeypatch.setattr(StorageClient, "upload", watched)

    @flow
    async def awaited() -> None:
        await aupload_data.with_options(timeout_seconds=1, retries=0)(path, storage=block)

    @flow
    def submitted() -> None:
        upload_data.with_options(timeout_seconds=1, retries=0).submit(path, storage=block).result()

    state = asyncio.run(awaited(return_state=True)) if how == "awaited async" else submitted(return_state=True)
    assert "timed out after 1.0 second" in str(state.message), state
    assert ended.wait(30), "the upload's thread never ended"
    s3 = s3_client(s3_settings["endpoint_url"])
    assert s3.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0  # no catalog entry, no data
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    if how == "awaited async":
        logs = run_logs(state.state_details.flow_run_id)
        assert [m for m in logs if m.startswith("the upload call was stopped: nothing was published")], logs


def test_an_async_task_cancelled_before_its_thread_started_never_runs_its_call(tmp_path: Path, caplog,
                                                                                monkeypatch) -> None:
    """Cancelled while it waited for a worker thread (all busy), it waited the whole grace for a call that had not
    started and said the call was "still waiting for an answer"."""
    import anyio
    import anyio.to_thread

    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    monkeypatch.setenv("FEDML_STORAGE_LOCAL_ROOT", str(tmp_path / "store"))

    async def main() -> None:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1
        release = threading.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, release.wait)  # holds the only worker thread
            await anyio.sleep(0.1)
            with anyio.move_on_after(0.3):
                await aupload_data.fn(str(tmp_path / "f.bin"))
            release.set()
        await anyio.sleep(0.3)  # a call that had been let start would have published by now

    with caplog.at_level("INFO", logger="prefect_tasks"):
        anyio.run(main)
    said = [r.getMessage() for r in caplog.records if r.name == "prefect_tasks"]
    assert said == ["the storage call had not started; it never will"], said
    with StorageClient() as client:
        assert client.list().unwrap() == [] and client.settings.local_root == tmp_path / "store"


def test_an_async_task_that_times_out_ends_without_waiting_for_its_body(tmp_path: Path, monkeypatch) -> None:
    """A timeout ends the task at once although its body (here a download blocked where no stop reaches it) goes on;
    after a grace period for a stopped call's clean-up (STOP_GRACE_SECONDS), the body is left to end by itself."""
    release, returned = threading.Event(), threading.Event()
    calls = []

    def stuck(self, *args, **kwargs):
        calls.append(1)
        release.wait(20)
        returned.set()
        raise RuntimeError("released")

    monkeypatch.setattr(StorageClient, "download", stuck)

    @flow
    async def waits() -> None:  # the default retries: a timeout is not retried, or abandoned calls would pile up
        await adownload_data.with_options(timeout_seconds=1, retry_delay_seconds=0)("ds", dest_path=str(tmp_path))

    try:
        state = asyncio.run(waits(return_state=True))
        body_was_still_running = not returned.is_set()
    finally:
        release.set()
    assert state.name == "TimedOut" and "timed out after 1.0 second" in state.message, state
    assert body_was_still_running and len(calls) == 1


def test_a_stopped_call_is_told_in_its_own_operations_words(caplog) -> None:
    """A stopped download was said to have published nothing and removed what it sent: an upload's words."""
    from prefect_tasks.tasks import _say_how_it_ended

    with caplog.at_level("INFO", logger="prefect_tasks"):
        for name in ("upload", "download", "delete", "metadata"):
            _say_how_it_ended("stopped", name)
    said = [r.getMessage() for r in caplog.records if r.name == "prefect_tasks"]
    assert said[0] == "the upload call was stopped: nothing was published and what it had sent was removed"
    assert said[1].startswith("the download call was stopped: nothing was put at dest_path")
    assert "publish" not in said[1] and "may or may not be deleted" in said[2]
    assert said[3] == "the metadata call was stopped: it only reads, so nothing changed"
