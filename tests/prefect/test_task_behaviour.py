"""Real Prefect flow runs: idempotent deletes, failures logged once, task run names, a block given by name, a
download without dest_path refused."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from fedml_storage import FedMLStorageError, StorageClient
from prefect_tasks import (
    FedMLStorage,
    alist_data,
    delete_data,
    download_data,
    get_data_metadata,
    list_data,
    upload_data,
)
from tests.conftest import TEST_API_KEY
from tests.prefect.conftest import task_run_names


def test_delete_of_a_name_already_gone_succeeds_unless_missing_ok_is_false(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "d.txt").write_text("x")
    calls = {"n": 0}
    original = StorageClient.delete

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StorageClient, "delete", counting)

    @flow
    def twice() -> tuple[bool, bool]:
        upload_data(str(tmp_path / "d.txt"))
        return delete_data("d.txt"), delete_data("d.txt")  # the second as a retry after a delete that went through

    assert twice() == (True, False)

    @flow
    def strict() -> None:
        delete_data.with_options(retry_delay_seconds=0)("d.txt", missing_ok=False)

    calls["n"] = 0
    with pytest.raises(FedMLStorageError, match="d.txt"):
        strict()
    assert calls["n"] == 1  # a missing name is not retried


def test_a_failure_is_logged_by_prefect_not_by_the_core_too(tmp_path: Path, caplog) -> None:
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))

    @flow
    def fails(storage: FedMLStorage | None) -> None:
        download_data.with_options(retries=0)("never-stored", dest_path=str(tmp_path / "o"), storage=storage)

    caplog.set_level(logging.INFO)
    for storage in (None, block):  # fedml-storage's own configuration, and a block
        caplog.clear()
        with pytest.raises(FedMLStorageError, match="never-stored"):
            fails(storage)
        assert [r for r in caplog.records if "never-stored" in r.getMessage() and r.name.startswith("prefect")]
        assert [r.getMessage() for r in caplog.records if r.name.startswith("fedml_storage")] == []


def test_task_runs_are_named_after_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")

    @flow
    def named() -> str:
        up = upload_data(str(tmp_path / "model.pt"), name="weights")
        download_data("weights.pt", dest_path=str(tmp_path / "o"), version=up["version"])
        get_data_metadata("weights.pt")
        list_data()
        delete_data("weights.pt")
        return up["version"]

    state = named(return_state=True)
    version = state.result()
    assert task_run_names(state.state_details.flow_run_id) == [
        "delete weights.pt", f"download weights.pt version {version}", "list datasets", "metadata of weights.pt",
        "upload weights.pt"]


def test_storage_can_be_a_saved_block_name_even_under_map(tmp_path: Path) -> None:
    FedMLStorage(service="LOCAL", local_root=str(tmp_path / "named-store")).save("fedml-by-name", overwrite=True)
    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"n{i}.txt"))
        Path(paths[-1]).write_text(str(i))

    @flow
    def by_name() -> list[str]:
        names = [f.result()["name"] for f in upload_data.map(paths, storage="fedml-by-name")]  # no unmapped()
        return names + [m["dataName"] for m in list_data(storage="fedml-by-name")]

    assert by_name() == ["n0.txt", "n1.txt", "n0.txt", "n1.txt"]
    assert sorted(p.name for p in (tmp_path / "named-store" / "default" / "manifests").iterdir()) == [
        "n0.txt.json", "n1.txt.json"]
    assert StorageClient().list().data == []  # not the default store

    @flow
    async def by_name_async() -> list[str]:
        return [m["dataName"] for m in await alist_data(storage="fedml-by-name")]

    assert asyncio.run(by_name_async()) == ["n0.txt", "n1.txt"]


def test_a_delete_that_meets_a_new_upload_fails_without_retries_and_keeps_it(tmp_path: Path, monkeypatch) -> None:
    """The delete's conflict was retryable: Prefect's retry read the new upload and deleted it."""
    from fedml_storage.backends.local import LocalStore

    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    (tmp_path / "ds.csv").write_text("one")
    block.upload(str(tmp_path / "ds.csv"))
    real, manifest_deletes = LocalStore.delete, []

    def publish_first(self, key: str, **kw) -> None:
        if key.endswith("manifests/ds.csv.json"):
            manifest_deletes.append(key)
            if len(manifest_deletes) == 1:  # another writer's upload lands after the delete read the entry
                (tmp_path / "ds.csv").write_text("two, newer")
                block.upload(str(tmp_path / "ds.csv"))
        return real(self, key, **kw)

    monkeypatch.setattr(LocalStore, "delete", publish_first)

    @flow
    def clean() -> bool:
        return delete_data.with_options(retry_delay_seconds=0)("ds.csv", storage=block)

    with pytest.raises(FedMLStorageError, match="nothing was deleted") as failed:
        clean()
    assert failed.value.reason == "changed" and len(manifest_deletes) == 1  # not retried
    got = block.download("ds.csv", dest_path=str(tmp_path / "out"))
    assert Path(got).read_text() == "two, newer"


def test_a_block_with_a_key_but_no_service_fails_instead_of_storing_locally(tmp_path: Path,
                                                                            isolated_home: Path) -> None:
    (tmp_path / "f.txt").write_text("x")

    @flow
    def store(block: FedMLStorage) -> dict:
        return upload_data.with_options(retry_delay_seconds=0)(str(tmp_path / "f.txt"), storage=block)

    with pytest.raises(FedMLStorageError, match="sets api_key but no service") as refused:
        store(FedMLStorage(api_key=TEST_API_KEY))
    assert refused.value.reason == "not_configured" and not refused.value.retryable
    assert TEST_API_KEY.split(":")[1] not in str(refused.value)
    assert not (isolated_home / "store").exists()


def test_what_the_retry_condition_retries() -> None:
    """httpx's errors (Prefect's API unreachable while a saved block loads or an artifact is written) are no
    ConnectionError: they were not retried."""
    import httpx
    from prefect.states import Failed

    from fedml_storage import FedMLResponse, ResponseCode
    from prefect_tasks.tasks import retry_transient

    def retried(exc: BaseException) -> bool:
        return retry_transient(None, None, Failed(data=exc))

    assert retried(httpx.ConnectError("refused")) and retried(httpx.ReadTimeout("slow")) and retried(TimeoutError())
    assert retried(FedMLStorageError(FedMLResponse(ResponseCode.ERROR, "busy", None, "transient")))
    assert not retried(FedMLStorageError(FedMLResponse(ResponseCode.FAILURE, "no such name", None, "not_found")))
    assert retried(httpx.RemoteProtocolError("server hung up mid-answer"))
    # PREFECT_API_URL without its scheme, and a request httpx will not send: the same every try
    assert not retried(httpx.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol."))
    assert not retried(httpx.LocalProtocolError("Illegal header value"))
    assert not retried(ValueError("bad")) and not retried(httpx.HTTPStatusError(
        "409", request=httpx.Request("POST", "http://x"), response=httpx.Response(409)))


def test_a_download_says_which_version_it_got(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It returned the bare path: which version a training step used was lost (asking the metadata afterwards races
    with the next upload)."""
    monkeypatch.setenv("FEDML_STORAGE_KEEP_VERSIONS", "2")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("v1")

    @flow
    def fetch() -> tuple[dict, str]:
        up = upload_data(str(tmp_path / "ds"))
        (tmp_path / "ds" / "a.txt").write_text("v2")
        upload_data(str(tmp_path / "ds"))  # a newer version lands before anyone asks
        return up, download_data("ds", dest_path=str(tmp_path / "out"), version=up["version"])

    up, path = fetch()
    assert path == str(tmp_path / "out" / "ds") and (Path(path) / "a.txt").read_text() == "v1"
    assert (path.version, path.sha256, path.size) == (up["version"], up["sha256"], up["size"])
    assert not path.skipped

    @flow
    def fetch_again(version: str | None) -> str:  # the flow run again: that version is there, nothing is fetched
        return download_data("ds", dest_path=str(tmp_path / "out"), version=version)

    again = fetch_again(up["version"])
    assert again == path and again.skipped and again.version == up["version"]
    assert fetch_again(None).version != up["version"]  # the current one is fetched over it
    assert (Path(path) / "a.txt").read_text() == "v2"


def test_a_task_cached_on_its_inputs_sees_a_new_version_when_given_it(tmp_path: Path) -> None:
    """What the README advises: the path alone hashes by its text, the same for every version downloaded there."""
    from prefect import task
    from prefect.cache_policies import INPUTS

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("v1")
    read: list[str] = []

    @task(cache_policy=INPUTS, persist_result=True)
    def first_line(path: str, version: str) -> str:
        read.append(version)
        return (Path(path) / "a.txt").read_text()

    @flow
    def pipeline() -> str:
        upload_data(str(tmp_path / "ds"))
        path = download_data("ds", dest_path=str(tmp_path / "out"))
        return first_line(path, path.version)

    assert pipeline() == "v1" and pipeline() == "v1" and len(read) == 1  # the second run: a cache hit
    (tmp_path / "ds" / "a.txt").write_text("v2")
    assert pipeline() == "v2" and len(read) == 2  # a new version, a new key


def test_a_download_without_dest_path_is_refused_before_anything_is_fetched(tmp_path: Path, monkeypatch) -> None:
    """It downloaded into the flow run's working directory, where a worker keeps the flow's code: a dataset named
    like a folder there replaced it as a whole (Airflow's operators refuse too)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "pipeline.py").write_text("the flow's code")
    (tmp_path / "src" / "flows").mkdir(parents=True)
    assert StorageClient().upload(str(tmp_path / "src" / "flows")).ok

    states = []

    @flow
    def pipeline() -> None:
        states.append(download_data.with_options(retry_delay_seconds=0)("flows", return_state=True))

    pipeline()
    state = states[0]
    with pytest.raises(FedMLStorageError, match="download_data needs dest_path=: a folder on the machine running"):
        state.result()
    with get_client(sync_client=True) as api:
        assert api.read_task_run(state.state_details.task_run_id).run_count == 1  # not retried
    with pytest.raises(FedMLStorageError, match="FedMLStorage.download needs dest_path="):
        FedMLStorage(service="LOCAL").download("flows")
    for where, said in ((".", "is relative: on a machine running the flow"), ("  ", "needs dest_path="),
                        (123, "dest_path must be a folder path, not int")):
        with pytest.raises(FedMLStorageError, match=said) as refused:
            FedMLStorage(service="LOCAL").download("flows", where)
        assert refused.value.reason == "invalid_input"
    assert (tmp_path / "flows" / "pipeline.py").read_text() == "the flow's code"
