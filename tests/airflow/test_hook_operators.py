"""Hook, operators, sensor and provider info, called in-process (the DAG tests cover the Task Runner path)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_provider.hook import FedMLStorageException, FedMLStorageHook
from airflow_provider.operators import (
    FedMLStorageDeleteOperator,
    FedMLStorageDownloadOperator,
    FedMLStorageListOperator,
    FedMLStorageMetadataOperator,
    FedMLStorageUploadOperator,
)
from airflow_provider.sensors import FedMLStorageDatasetSensor
from fedml_storage import StorageClient
from tests.conftest import TEST_API_KEY

SECRET = TEST_API_KEY.split(":", 1)[1]


@pytest.fixture(autouse=True)
def unit_test_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__UNIT_TEST_MODE", "True")


@pytest.fixture
def s3_conn_json(s3_settings: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    conn = {"conn_type": "fedml_storage", "password": s3_settings["api_key"],
            "extra": {k: s3_settings[k] for k in ("service", "bucket", "endpoint_url", "region")}}
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(conn))
    return conn


class _OutletEvents(SimpleNamespace):
    """What a task's `outlet_events[...]` accessor records: `extra` for an Asset, `add()` for an AssetAlias."""

    def add(self, asset: Asset, extra: dict | None = None) -> None:
        self.added.append((asset.uri, extra))


def _context() -> dict:
    return {"outlet_events": defaultdict(lambda: _OutletEvents(extra=None, added=[])), "run_id": "manual__1",
            "ds": "2026-11-24"}


def test_connection_from_uri_and_json(s3_settings: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    key_id, secret = TEST_API_KEY.split(":", 1)
    uri = (f"fedml-storage://{key_id}:{quote(secret, safe='')}@/?service=S3&bucket={s3_settings['bucket']}"
           f"&endpoint_url={quote(s3_settings['endpoint_url'], safe='')}&namespace=team-a")
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", uri)
    from_uri = FedMLStorageHook().settings_from_connection()
    assert from_uri == {"service": "S3", "bucket": s3_settings["bucket"], "endpoint_url": s3_settings["endpoint_url"],
                        "namespace": "team-a", "api_key": TEST_API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "password": TEST_API_KEY, "extra": {"service": "S3", "bucket": "b2"}}))
    assert FedMLStorageHook().settings_from_connection() == {"service": "S3", "bucket": "b2", "api_key": TEST_API_KEY}
    assert FedMLStorageHook().namespace == "default"


def test_no_default_connection_uses_core_config_but_named_one_must_exist(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("local")
    hook = FedMLStorageHook()
    assert hook.upload(str(tmp_path / "f.txt"))["service"] == "LOCAL"
    assert [m["dataName"] for m in hook.list()] == ["f.txt"]
    with pytest.raises(AirflowFailException, match="'missing_conn' is not defined; create it") as missing:
        FedMLStorageHook("missing_conn").list()  # retrying will not define it
    assert missing.value.reason == "not_configured"


def test_extras_named_the_airflow_2_way_still_work(s3_settings: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    old_style = {f"extra__fedml_storage__{k}": s3_settings[k] for k in ("service", "bucket", "endpoint_url", "region")}
    monkeypatch.setenv("AIRFLOW_CONN_MIGRATED", json.dumps({"conn_type": "fedml_storage", "extra": old_style,
                                                             "password": s3_settings["api_key"]}))
    assert FedMLStorageHook("migrated").list() == []


@pytest.mark.parametrize(("extra", "words"), [
    ({"endpoint": "http://127.0.0.1:9"}, "'endpoint' (did you mean 'endpoint_url'?)"),
    ({"api_key": "AKIA:s3cr3t"}, "'api_key' (secrets go in their own field)"),
])
def test_connection_extras_that_are_no_setting_fail_the_task(monkeypatch: pytest.MonkeyPatch, extra: dict,
                                                             words: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TYPO", json.dumps({"conn_type": "fedml_storage", "extra": {"service": "S3",
                                                                                                 **extra}}))
    hook = FedMLStorageHook("typo")
    with pytest.raises(AirflowFailException) as refused:
        hook.list()  # the typo would otherwise send the calls to AWS, and retry them
    assert words in str(refused.value) and "s3cr3t" not in str(refused.value)
    assert hook.test_connection() == (False, str(refused.value))


def test_failures_raise_with_the_core_message(tmp_path: Path) -> None:
    hook = FedMLStorageHook()
    with pytest.raises(FedMLStorageException) as missing:
        hook.download("never-stored", str(tmp_path))
    assert "no data named 'never-stored'" in str(missing.value) and missing.value.reason == "not_found"
    assert isinstance(missing.value, AirflowFailException)  # waiting will not store it: no retries
    import pickle

    copy = pickle.loads(pickle.dumps(missing.value))
    assert str(copy) == str(missing.value) and type(copy) is type(missing.value) and copy.reason == "not_found"
    with pytest.raises(AirflowFailException, match="does not exist"):  # bad input: no retries
        hook.upload(str(tmp_path / "nope"))


def test_operators_round_trip_with_xcom_values_and_no_secret(s3_conn_json: dict, tmp_path: Path, caplog,
                                                             capfd) -> None:
    caplog.set_level(logging.INFO)
    src = tmp_path / "ds"
    src.mkdir()
    (src / "a.txt").write_text("airflow")
    upload = FedMLStorageUploadOperator(task_id="up", data_path=str(src), metadata='{"k": "v"}', tag_list=["t"])
    assert [a.uri for a in upload.outlets] == ["fedml://default/ds"]
    ctx = _context()
    result = upload.execute(ctx)
    json.dumps(result)
    assert result["name"] == "ds" and result["version"] and result["size"] > 0
    outlet = next(iter(ctx["outlet_events"].values()))
    assert outlet.extra["version"] == result["version"]
    logged = caplog.text + capfd.readouterr().out
    assert "uploaded 'ds'" in logged  # the one log line of what was done

    again = FedMLStorageUploadOperator(task_id="up2", data_path=str(src)).execute(_context())
    assert again["skipped"] and again["version"] == result["version"]  # a retried upload costs nothing

    down = FedMLStorageDownloadOperator(task_id="down", name="ds", dest_path=str(tmp_path / "o"),
                                        version=result["version"])
    assert [a.uri for a in down.inlets] == ["fedml://default/ds"]
    path = down.execute(_context())
    assert Path(path, "a.txt").read_text() == "airflow"
    listed = FedMLStorageListOperator(task_id="ls").execute(_context())
    assert [i["dataName"] for i in listed] == ["ds"] and json.dumps(listed)
    meta = FedMLStorageMetadataOperator(task_id="m", name="ds").execute(_context())
    assert meta["user_metadata"] == {"k": "v"} and meta["tag_list"] == ["t"]
    assert FedMLStorageMetadataOperator(task_id="m2", name="ds", user_defined_only=True).execute(_context()) == {
        "k": "v"}
    assert FedMLStorageDeleteOperator(task_id="rm", name="ds").execute(_context()) is True
    out, err = capfd.readouterr()
    everything = logged + caplog.text + out + err + json.dumps([result, listed, meta])
    assert SECRET not in everything and TEST_API_KEY.split(":")[0] not in json.dumps([result, listed, meta])


def test_outlet_must_name_the_namespace_the_connection_stores_under(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "extra": {"service": "LOCAL", "namespace": "team-a"}}))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("x")
    unaware = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "ds"))
    ctx = _context()
    with pytest.raises(AirflowFailException, match="nothing was uploaded. Make them agree: pass namespace="):
        unaware.execute(ctx)  # never an event for fedml://default/ds
    assert not ctx["outlet_events"]
    assert StorageClient(service="LOCAL", namespace="team-a").list().data == []  # refused before publishing
    aware = FedMLStorageUploadOperator(task_id="up2", data_path=str(tmp_path / "ds"), namespace="team-a")
    assert [a.uri for a in aware.outlets] == ["fedml://team-a/ds"]
    ctx = _context()
    assert aware.execute(ctx)["name"] == "ds"
    assert [a.uri for a in ctx["outlet_events"]] == ["fedml://team-a/ds"]
    assert [m.dataName for m in StorageClient(service="LOCAL", namespace="team-a").list().data] == ["ds"]


def test_outlet_follows_the_core_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "extra": {"service": "LOCAL"}}))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    static = FedMLStorageUploadOperator(task_id="up", data_path=str(model), name="weights.bin")
    assert [a.uri for a in static.outlets] == ["fedml://default/weights.bin"]  # a name with an extension is kept
    assert [a.uri for a in FedMLStorageUploadOperator(task_id="up0", data_path=str(model)).outlets] == [
        "fedml://default/model.pt"]
    ctx = _context()
    assert static.execute(ctx)["name"] == "weights.bin"
    assert [a.uri for a in ctx["outlet_events"]] == ["fedml://default/weights.bin"]

    # name="weights" for a path ending in ".pt": a file gains the extension, a folder (here one made only at run
    # time, "v1.0") does not. The DAG file does not tell which, so the run emits the Asset through the task's alias
    upload = FedMLStorageUploadOperator(task_id="up1", data_path=str(model), name="weights")
    run_dir = tmp_path / "runs" / "v1.0"
    later = FedMLStorageUploadOperator(task_id="up2", data_path=str(run_dir), name="mnist")
    late_file = tmp_path / "late.pt"
    guessed = FedMLStorageUploadOperator(task_id="up3", data_path=str(late_file), name="late-weights")
    for op in (upload, later, guessed):
        assert [type(a) for a in op.outlets] == [AssetAlias]
        assert op.outlets[0].name == f"fedml-storage-upload:{op.dag_id}.{op.task_id}"
    run_dir.mkdir(parents=True)
    (run_dir / "a.txt").write_text("x")
    late_file.write_bytes(b"late")
    for op, stored in ((upload, "weights.pt"), (later, "mnist"), (guessed, "late-weights.pt")):
        ctx = _context()
        result = op.execute(ctx)
        assert result["name"] == stored
        assert ctx["outlet_events"][op.outlets[0]].added == [
            (f"fedml://default/{stored}", {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")})]

    # outlets declared by hand that the upload would not write are refused before anything is published
    wrong = FedMLStorageUploadOperator(task_id="up4", data_path=str(late_file), name="other",
                                       outlets=[Asset("fedml://default/other")])
    with pytest.raises(AirflowFailException, match="nothing was uploaded.*name='weights' for model.pt"):
        wrong.execute(_context())
    assert [m.dataName for m in StorageClient(service="LOCAL").list().data] == ["late-weights.pt", "mnist",
                                                                                "weights.bin", "weights.pt"]


def test_template_fields_render_metadata_as_json(tmp_path: Path) -> None:
    op = FedMLStorageUploadOperator(task_id="up", data_path="{{ params.root }}/data", name="{{ params.name }}",
                                    metadata={"run": "{{ run_id }}"})
    assert [type(a) for a in op.outlets] == [AssetAlias]  # a templated name is only known at run time
    assert op.template_fields_renderers["metadata"] == "json"
    op.render_template_fields({"params": {"root": str(tmp_path), "name": "rendered"}, "run_id": "manual__7"})
    assert (op.data_path, op.name, op.metadata) == (f"{tmp_path}/data", "rendered", {"run": "manual__7"})
    bad = FedMLStorageUploadOperator(task_id="bad", data_path=str(tmp_path), metadata="{not json")
    with pytest.raises(AirflowFailException, match="JSON"):
        bad.execute(_context())


def test_sensor_waits_for_name_and_metadata_value(tmp_path: Path) -> None:
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="ready", metadata_key="status", metadata_value="done",
                                       mode="reschedule", poke_interval=1)
    assert sensor.poke({}) is False
    (tmp_path / "ready").mkdir()
    hook = FedMLStorageHook()
    hook.upload(str(tmp_path / "ready"), metadata={"status": "writing"})
    assert sensor.poke({}) is False
    hook.upload(str(tmp_path / "ready"), metadata={"status": "done"})
    assert sensor.poke({}) is True
    assert FedMLStorageDatasetSensor(task_id="w2", name="ready").poke({}) is True
    broken = FedMLStorageDatasetSensor(task_id="w3", name="../bad")
    with pytest.raises(AirflowException):
        broken.poke({})


def test_operators_release_their_connections(s3_conn_json: dict, tmp_path: Path, client_spy) -> None:
    (tmp_path / "f.txt").write_text("x")
    FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt")).execute(_context())
    FedMLStorageListOperator(task_id="ls").execute(_context())
    FedMLStorageMetadataOperator(task_id="m", name="f.txt").execute(_context())
    FedMLStorageDownloadOperator(task_id="down", name="f.txt", dest_path=str(tmp_path / "o")).execute(_context())
    assert FedMLStorageDatasetSensor(task_id="s", name="f.txt").poke(_context())
    assert FedMLStorageHook().test_connection()[0]
    FedMLStorageDeleteOperator(task_id="rm", name="f.txt").execute(_context())
    assert len(client_spy.opened) == 7 and client_spy.leaked() == []  # one client per step, each closed
    with FedMLStorageHook() as hook:
        assert not hook.exists("f.txt")
    assert client_spy.leaked() == [] and not hook.exists("f.txt")  # a closed hook opens a new client when used


def test_test_connection_reports_errors_without_the_secret(s3_conn_json: dict, monkeypatch) -> None:
    ok, message = FedMLStorageHook().test_connection()
    assert ok and "0 dataset(s)" in message
    s3_conn_json["extra"]["bucket"] = "bucket-that-is-missing"
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(s3_conn_json))
    ok, message = FedMLStorageHook().test_connection()
    assert not ok and "does not exist" in message and SECRET not in message


def test_provider_is_found_by_airflow() -> None:
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    manager = ProvidersManager()
    assert "fedml-storage" in manager.providers
    hook_info = ProvidersManagerTaskRuntime().hooks["fedml_storage"]
    assert hook_info is not None and hook_info.hook_class_name == "airflow_provider.hook.FedMLStorageHook"
    info = manager.providers["fedml-storage"].data
    fields = info["connection-types"][0]["conn-fields"]
    assert {"service", "bucket", "endpoint_url", "region", "r2_account_id", "namespace"} <= set(fields)


def test_a_bad_setting_in_the_connection_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BADSVC", json.dumps({"conn_type": "fedml_storage", "password": "no-colon-s3cr3t",
                                                          "extra": {"service": "GCS"}}))
    with pytest.raises(AirflowFailException) as refused:
        FedMLStorageHook("badsvc").list()
    message = str(refused.value)
    assert "service: unknown service" in message and "(from the Airflow connection 'badsvc'" in message
    assert "Fix the Airflow connection 'badsvc' or the task's arguments" in message
    assert "s3cr3t" not in message
