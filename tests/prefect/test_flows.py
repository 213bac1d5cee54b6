"""Real Prefect flow runs: the example flow on LOCAL and S3, retries, bad input, block, artifacts, assets."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import traceback
from pathlib import Path

import pytest
from prefect import flow, unmapped
from prefect.client.orchestration import get_client

from fedml_storage import PLAIN_SETTINGS, FedMLStorageError, StorageClient
from prefect_tasks import FedMLStorage, delete_data, download_data, get_data_metadata, list_data, upload_data
from tests.conftest import TEST_API_KEY, s3_client
from tests.cutting_proxy import CuttingProxy
from tests.core.conftest import tree_bytes

SECRET = TEST_API_KEY.split(":", 1)[1]


def _load_example():
    import importlib.util
    import sys

    examples = Path(__file__).resolve().parents[2] / "dags_examples"
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))  # as `python dags_examples/prefect_dataset_flow.py` has it
    path = examples / "prefect_dataset_flow.py"
    spec = importlib.util.spec_from_file_location("prefect_dataset_flow", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _s3_block(s3_settings: dict) -> FedMLStorage:
    return FedMLStorage(service="S3", bucket=s3_settings["bucket"], endpoint_url=s3_settings["endpoint_url"],
                        region="us-east-1", api_key=s3_settings["api_key"])


def test_example_flow_on_local(tmp_path: Path) -> None:
    example = _load_example()
    report = example.dataset_handoff(workdir=str(tmp_path), keep=True)
    produced = tmp_path / "produced" / example.DATASET
    assert tree_bytes(Path(report["downloaded"])) == tree_bytes(produced) and report["files"] == 11
    assert report["metadata"]["version"] == report["uploaded"]["version"]
    assert example.DATASET in report["listed"] and report["deleted"] is True
    assert StorageClient().list().data == []  # cleaned up
    (tmp_path / "important.txt").write_text("the caller's")
    example.dataset_handoff(workdir=str(tmp_path))  # not kept: removes what it made, nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["important.txt"]


def test_example_flow_on_s3_with_block(tmp_path: Path, s3_settings: dict, moto_endpoint: str) -> None:
    example = _load_example()
    report = example.dataset_handoff(workdir=str(tmp_path), storage=_s3_block(s3_settings), keep=True)
    assert tree_bytes(Path(report["downloaded"])) == tree_bytes(tmp_path / "produced" / example.DATASET)
    assert report["uploaded"]["uri"].startswith(f"s3://{s3_settings['bucket']}/")
    assert "Contents" not in s3_client(moto_endpoint).list_objects_v2(Bucket=s3_settings["bucket"])
    assert not (Path(StorageClient().settings.store_root) / "default" / "manifests").exists()  # not on LOCAL


def test_transient_fault_is_retried_and_data_stored_once(tmp_path: Path, s3_settings: dict, moto_endpoint: str,
                                                         moto_proxy: CuttingProxy) -> None:
    src = tmp_path / "flaky"
    src.mkdir()
    (src / "f.bin").write_bytes(b"x" * 5000)
    data_put = f"^PUT /{s3_settings['bucket']}/default/data/".encode()
    moto_proxy.answer(data_put, "503 Service Unavailable", "SlowDown", "Please reduce your request rate.")
    block = FedMLStorage(service="S3", bucket=s3_settings["bucket"], endpoint_url=moto_proxy.endpoint,
                         region="us-east-1", api_key=s3_settings["api_key"], max_attempts=1)  # botocore: no retry

    @flow
    def once(block: FedMLStorage) -> dict:
        return upload_data.with_options(retry_delay_seconds=0)(str(src), storage=block)

    result = once(block)
    assert result["name"] == "flaky"
    assert len([head for head in moto_proxy.request_heads if re.match(data_put, head)]) == 2  # refused, then sent
    keys = [o["Key"] for o in s3_client(moto_endpoint).list_objects_v2(Bucket=s3_settings["bucket"])["Contents"]]
    assert len([k for k in keys if "/data/" in k]) == 1 and len([k for k in keys if "/manifests/" in k]) == 1


def test_bad_input_is_not_retried(tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    original = StorageClient.upload

    def counting(self, *args, **kwargs):
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StorageClient, "upload", counting)

    @flow
    def bad() -> None:
        upload_data.with_options(retry_delay_seconds=0)(str(tmp_path / "missing"))

    with pytest.raises(FedMLStorageError, match="does not exist") as failed:
        bad()
    assert calls["n"] == 1
    # the retry check reads the failure as a value: it does not show up in the traceback as if it had crashed
    assert "retry_transient" not in "".join(traceback.format_tb(failed.value.__traceback__))


def test_tasks_are_real_tasks_and_work_in_async_flows(tmp_path: Path) -> None:
    for t in (upload_data, download_data, list_data):
        assert hasattr(t, "submit") and hasattr(t, "map") and hasattr(t, "with_options")
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(str(i))

    @flow
    async def async_flow() -> list[str]:
        futures = upload_data.map([str(tmp_path / f"part{i}.txt") for i in range(3)])
        names = [f.result()["name"] for f in futures]
        path = download_data.submit("part1.txt", dest_path=str(tmp_path / "o")).result()
        return names + [Path(path).read_text()]

    assert asyncio.run(async_flow()) == ["part0.txt", "part1.txt", "part2.txt", "1"]


def test_block_saves_and_loads_with_the_secret_hidden(s3_settings: dict) -> None:
    block = _s3_block(s3_settings)
    block.save("fedml-test-block", overwrite=True)
    loaded = FedMLStorage.load("fedml-test-block")
    assert loaded.api_key.get_secret_value() == TEST_API_KEY
    assert loaded.bucket == s3_settings["bucket"]
    for text in (repr(loaded), str(loaded), loaded.model_dump_json()):
        assert SECRET not in text
    assert loaded.list() == []
    tuned = FedMLStorage(service="LOCAL", keep_versions=3, concurrency=2, stream_min_rate=0, compression="deflated")
    with tuned.client() as client:
        assert (client.settings.keep_versions, client.settings.concurrency) == (3, 2)
        assert (client.settings.stream_min_rate, client.settings.compression) == (0, "deflated")
    assert set(PLAIN_SETTINGS) <= set(FedMLStorage.model_fields)  # every core setting can be set on the block
    with pytest.raises(ValueError, match="download_part_size"):  # the core's limits, checked when the block is made
        FedMLStorage(download_part_size=1024)


@pytest.mark.parametrize("mistyped", [[TEST_API_KEY], tuple(TEST_API_KEY.split(":")),
                                      {"access_key_id": SECRET}])
def test_a_mistyped_api_key_is_refused_without_echoing_it(mistyped: object) -> None:
    import traceback

    with pytest.raises(ValueError) as refused:
        FedMLStorage(service="S3", api_key=mistyped)
    shown = str(refused.value) + repr(refused.value) + "".join(traceback.format_exception(refused.value))
    assert "api_key" in shown and SECRET not in shown and SECRET[-12:] not in shown


def test_a_saved_block_pickles_without_its_secret(s3_settings: dict) -> None:
    """Prefect pickles a background task's arguments (`.delay()`) into result storage, a 0644 file."""
    import cloudpickle

    _s3_block(s3_settings).save("fedml-pickled-block", overwrite=True)
    loaded = FedMLStorage.load("fedml-pickled-block")
    loaded.namespace = "changed-in-memory"
    pickled = cloudpickle.dumps(loaded)
    assert SECRET.encode() not in pickled and SECRET.encode() not in cloudpickle.dumps(loaded)
    assert loaded._key_digest() == loaded._key_digest()  # the slow digest made once per key, not per pickle
    back = cloudpickle.loads(pickled)
    assert back.api_key.get_secret_value() == TEST_API_KEY and back.namespace == "changed-in-memory"
    assert back.list() == []  # a working block
    unsaved = _s3_block(s3_settings)  # nowhere to read the key back from: pickled as it is
    assert cloudpickle.loads(cloudpickle.dumps(unsaved)).api_key.get_secret_value() == TEST_API_KEY
    loaded.api_key = "AKIAOTHERKEY00000000:another-secret-key"  # not what is saved: never swapped silently
    other = cloudpickle.loads(cloudpickle.dumps(loaded))  # made all the same: a task worker that cannot unpickle
    assert other.api_key is None                           # a task's arguments never starts (or fails) the run
    with pytest.raises(ValueError, match="not the one saved as block 'fedml-pickled-block'"):
        other.list()
    assert other.api_key is None and SECRET.encode() not in cloudpickle.dumps(other)  # still a reference
    earlier = cloudpickle.loads(cloudpickle.dumps(FedMLStorage(service="LOCAL", namespace="ns1")))
    earlier.__pydantic_private__.pop("_saved_key")  # as a block pickled by the previous release comes back
    assert earlier.settings() == {"service": "LOCAL", "namespace": "ns1"}  # AttributeError before
    assert cloudpickle.loads(cloudpickle.dumps(earlier)).settings() == earlier.settings()


def test_a_background_task_given_a_saved_block_stores_no_secret(s3_settings: dict, tmp_path: Path) -> None:
    import base64
    import json

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    _s3_block(s3_settings).save("fedml-delayed-block", overwrite=True)
    (tmp_path / "f.txt").write_text("x")
    upload_data.delay(str(tmp_path / "f.txt"), storage=FedMLStorage.load("fedml-delayed-block"))
    stored = sorted((Path(PREFECT_LOCAL_STORAGE_PATH.value()) / "parameters").iterdir(), key=lambda p: p.stat().st_mtime)
    pickled = base64.b64decode(json.loads(stored[-1].read_text())["result"])  # what a task worker will unpickle
    assert b"fedml-delayed-block" in pickled and SECRET.encode() not in pickled


def test_a_background_task_whose_saved_block_is_gone_fails_saying_so(s3_settings: dict, tmp_path: Path) -> None:
    """A task worker that cannot unpickle a `.delay()` task's arguments logs it and leaves the run scheduled for
    ever; the block is unpickled all the same and the task fails, naming the block, where it uses it."""
    from prefect.client.schemas.objects import StateType
    from prefect.task_worker import TaskWorker

    _s3_block(s3_settings).save("fedml-gone-block", overwrite=True)
    (tmp_path / "f.txt").write_text("x")
    future = upload_data.delay(str(tmp_path / "f.txt"), name="never-stored", storage=FedMLStorage.load(
        "fedml-gone-block"))
    FedMLStorage.delete("fedml-gone-block")

    async def run_it():
        async with get_client() as client:
            await TaskWorker(upload_data).execute_task_run(await client.read_task_run(future.task_run_id))
            for _ in range(300):  # the final state reaches the server as an event, a moment later
                run = await client.read_task_run(future.task_run_id)
                if run.state is not None and run.state.is_final():  # None: read before its first state
                    return run
                await asyncio.sleep(0.1)
            return run

    run = asyncio.run(run_it())
    assert run.state.type == StateType.FAILED, run.state
    assert "saved block 'fedml-gone-block'" in run.state.message and "cannot be found" in run.state.message
    assert run.run_count == 1  # not a failure a retry can mend
    assert "never-stored" not in [m.dataName for m in StorageClient(**_s3_block(s3_settings).settings()).list().data]


def test_block_registers_with_the_prefect_cli() -> None:
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    prefect = str(Path(sys.executable).parent / "prefect")
    proc = subprocess.run([prefect, "block", "register", "-m", "prefect_tasks"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Successfully registered 1 block" in proc.stdout

    async def read_type():
        async with get_client() as client:
            return await client.read_block_type_by_slug("fedml-storage")

    block_type = asyncio.run(read_type())
    assert block_type.name == "FedML Storage" and "FedMLStorage.load" in block_type.code_example


def test_artifacts_and_asset_lineage(tmp_path: Path, emitted: list) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "a.txt").write_text("artifact")
    (tmp_path / "art" / "scratch.tmp").write_text("left out")
    (tmp_path / "café").mkdir()
    (tmp_path / "café" / "b.txt").write_text("unicode name")

    @flow
    def with_artifacts() -> dict:
        up = upload_data(str(tmp_path / "art"), description="for artifacts", ignore_patterns="*.tmp")
        upload_data(str(tmp_path / "café"))
        list_data()
        list_data(prefix="ca")  # a table of its own: the whole listing's stays
        upload_data(str(tmp_path / "art"), description="another team's", namespace="team-b")  # its own artifacts
        list_data(namespace="team-b", prefix="ar")  # the description says the table holds some names only
        return up

    state = with_artifacts(return_state=True)
    up, run = state.result(), state.state_details.flow_run_id

    async def read() -> list:
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run])))

    made = {a.key: a for a in asyncio.run(read())}  # team-b's upload and listing have keys of their own
    assert sorted(re.sub(r"-[0-9a-f]{8}$", "-<hash>", k) for k in made) == [
        "fedml-storage-list", "fedml-storage-list-ca", "fedml-storage-list-team-b-ar-<hash>", "fedml-upload-art",
        "fedml-upload-caf-<hash>", "fedml-upload-team-b-art-<hash>"], sorted(made)
    table, upload = [made["fedml-storage-list"]], [made["fedml-upload-art"]]
    # lineage: fedml://default/art and fedml://default/café (not %-encoded: Prefect refuses '%') were materialised
    done = {key for event, key, _ in emitted if event == "prefect.asset.materialization.succeeded"}
    assert done == {"fedml://default/art", "fedml://default/café", "fedml://team-b/art"}
    assert table and '"name": "art"' in str(table[0].data) and "for artifacts" in str(table[0].data)
    assert upload and up["version"] in upload[0].data and up["sha256"] in upload[0].data
    team_b = next(a for k, a in made.items() if k.startswith("fedml-storage-list-team-b"))
    assert team_b.description == "Datasets in FedML storage (namespace 'team-b', names starting 'ar')"
    assert table[0].description == "Datasets in FedML storage (namespace 'default')"
    assert [row["name"] for row in json.loads(made["fedml-storage-list-ca"].data)] == ["café"]
    assert "| left out by ignore_patterns | 1 |" in upload[0].data


def test_a_name_prefect_refuses_as_an_asset_still_uploads_with_a_warning(tmp_path: Path, caplog) -> None:
    (tmp_path / "a&b").mkdir()
    (tmp_path / "a&b" / "x.txt").write_text("no lineage")

    @flow
    def odd_name() -> dict:
        return upload_data(str(tmp_path / "a&b"))

    caplog.set_level(logging.WARNING)
    up = odd_name()
    assert up["name"] == "a&b" and up["version"]
    assert "not recording lineage: fedml://default/a%26b is not a valid Prefect asset key" in caplog.text


def test_tasks_and_block_release_their_connections(tmp_path: Path, s3_settings: dict, client_spy) -> None:
    (tmp_path / "f.txt").write_text("x")
    block = _s3_block(s3_settings)

    @flow
    def every_task() -> list:
        upload_data(str(tmp_path / "f.txt"), storage=block)
        download_data("f.txt", str(tmp_path / "o"), storage=block)
        get_data_metadata("f.txt", storage=block)
        listed = list_data(storage=block)
        assert list_data(storage=block, prefix="g") == [] and list_data(storage=block, prefix="f") == listed
        delete_data("f.txt", storage=block)
        return listed

    assert [m["dataName"] for m in every_task()] == ["f.txt"]
    assert len(client_spy.opened) == 7 and client_spy.leaked() == []  # one client per task, each closed
    assert block.list(prefix="f") == [] and len(client_spy.opened) == 8 and client_spy.leaked() == []


def test_the_blocks_own_delete_takes_missing_ok(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    block.upload(str(tmp_path / "f.txt"))
    assert block.delete_data("f.txt") is True
    assert block.delete_data("f.txt") is False  # a retried delete: missing_ok=True, as the task's
    with pytest.raises(FedMLStorageError, match="no data named 'f.txt'"):
        block.delete_data("f.txt", missing_ok=False)


def test_a_bad_setting_in_the_block_is_named_as_such(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as malformed:  # a malformed key: when the block is made, never echoed
        FedMLStorage(service="S3", bucket="datasets", api_key="no-colon-s3cr3t")
    assert "api_key has no ':'" in str(malformed.value) and "s3cr3t" not in str(malformed.value)
    with pytest.raises(ValueError, match="endpoint_url must be an http"):  # also told when the block is made
        FedMLStorage(service="S3", bucket="datasets", endpoint_url="minio:9000", api_key=TEST_API_KEY)
    block = FedMLStorage(service="R2", bucket="datasets", r2_account_id="my-account", api_key=TEST_API_KEY)

    @flow
    def uses_bad_block() -> None:
        list_data(storage=block)

    with pytest.raises(FedMLStorageError) as refused:
        uses_bad_block()
    message = str(refused.value)
    assert "r2_account_id" in message and "(from the FedMLStorage block or the task's arguments)" in message
    assert "Fix the FedMLStorage block or the task's arguments" in message and SECRET not in message


def test_ignore_patterns_reach_the_core_from_the_task_and_the_block(tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "__pycache__").mkdir(parents=True)
    (src / "train.py").write_text("fit()")
    (src / "__pycache__" / "train.pyc").write_bytes(b"\x00")
    (src / "run.tmp").write_text("scratch")

    @flow
    def ignoring() -> tuple[dict, str, list[dict]]:
        up = upload_data(str(src), ignore_patterns=["__pycache__/", "*.tmp"])
        mapped = upload_data.map([str(src), str(src)], name=["m1", "m2"],
                                 ignore_patterns=unmapped(["__pycache__/", "*.tmp"])).result()
        mapped += upload_data.map([str(src), str(src)], name=["m3", "m4"],
                                  ignore_patterns="__pycache__/\n*.tmp").result()  # a str is never split
        return up, download_data("proj", dest_path=str(tmp_path / "out")), mapped

    up, path, mapped = ignoring()
    assert up["ignored"] == 2 and up["file_count"] == 1
    assert [(m["name"], m["ignored"]) for m in mapped] == [("m1", 2), ("m2", 2), ("m3", 2), ("m4", 2)]
    assert tree_bytes(Path(path)) == {"train.py": b"fit()"}
    by_block = FedMLStorage(service="LOCAL").upload(str(src), name="proj2", ignore_patterns="*.tmp\n__pycache__/")
    assert by_block["ignored"] == 2 and by_block["content_digest"] == up["content_digest"]


def test_a_dict_or_list_split_by_map_says_to_wrap_it(tmp_path: Path) -> None:
    for i in (1, 2):
        (tmp_path / f"p{i}.txt").write_text(str(i))
    paths = [str(tmp_path / "p1.txt"), str(tmp_path / "p2.txt")]

    @flow
    def mapped() -> None:
        upload_data.with_options(retries=0).map(paths, metadata={"owner": "a", "run": "b"}).result()

    with pytest.raises(TypeError, match=r"metadata is the string '(owner|run)', not a dict; with \.map, pass "
                                        r"metadata=unmapped\(\.\.\.\)"):  # either call may fail first
        mapped()
    assert StorageClient().list().data == []  # nothing was uploaded
