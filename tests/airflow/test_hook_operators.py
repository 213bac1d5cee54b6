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


class _TaskInstance(SimpleNamespace):
    """What a task's `ti` records of `xcom_push`."""

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def _context() -> dict:
    return {"outlet_events": defaultdict(lambda: _OutletEvents(extra=None, added=[])), "run_id": "manual__1",
            "ds": "2026-11-24", "ti": _TaskInstance(pushed={})}


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
    upload = FedMLStorageUploadOperator(task_id="up", data_path=str(src), metadata='{"k": "v"}', tag_list=["t"],
                                        namespace="default")
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
                                        version=result["version"], namespace="default")
    assert [a.uri for a in down.inlets] == ["fedml://default/ds"]
    ctx = _context()
    path = down.execute(ctx)
    assert Path(path, "a.txt").read_text() == "airflow" and type(path) is str  # XCom: the path, as before
    assert ctx["ti"].pushed == {"version": result["version"], "sha256": result["sha256"]}  # to pin downstream
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


def test_a_namespace_set_only_in_the_connection_reaches_outlets_and_inlets(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "extra": {"service": "LOCAL", "namespace": "team-a"}}))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("x")
    unaware = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "ds"))
    assert [type(a) for a in unaware.outlets] == [AssetAlias]  # the DAG file does not tell the namespace
    ctx = _context()
    result = unaware.execute(ctx)
    assert ctx["outlet_events"][unaware.outlets[0]].added[0][0] == "fedml://team-a/ds"  # what was stored
    assert [m.dataName for m in StorageClient(service="LOCAL", namespace="team-a").list().data] == ["ds"]
    down = FedMLStorageDownloadOperator(task_id="down", name="ds", dest_path=str(tmp_path / "o"))
    assert down.inlets == []  # never the wrong fedml://default/ds
    assert down.execute(_context()).endswith("ds")
    aware = FedMLStorageDownloadOperator(task_id="down2", name="ds", namespace="team-a")
    assert [a.uri for a in aware.inlets] == ["fedml://team-a/ds"]
    templated = FedMLStorageUploadOperator(task_id="up2", data_path=str(tmp_path / "ds"), namespace="{{ params.ns }}")
    assert [type(a) for a in templated.outlets] == [AssetAlias]

    # outlets declared by hand for another namespace are refused before anything is published
    wrong = FedMLStorageUploadOperator(task_id="up3", data_path=str(tmp_path / "ds"), name="other",
                                       outlets=[Asset("fedml://default/other")])
    ctx = _context()
    with pytest.raises(AirflowFailException, match="nothing was uploaded. Make them agree: pass namespace="):
        wrong.execute(ctx)
    assert not ctx["outlet_events"]
    assert [m.dataName for m in StorageClient(service="LOCAL", namespace="team-a").list().data] == ["ds"]
    assert result["name"] == "ds"


def test_user_aliases_get_the_event_and_mapped_uploads_declare_one(tmp_path: Path) -> None:
    from airflow.sdk import DAG

    (tmp_path / "f.txt").write_text("x")
    mine = AssetAlias("my-alias")
    op = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt"), outlets=[mine])
    ctx = _context()
    result = op.execute(ctx)
    assert ctx["outlet_events"][mine].added == [
        ("fedml://default/f.txt", {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")})]
    with DAG("mapping_dag", schedule=None):
        mapped = FedMLStorageUploadOperator.partial(task_id="up").expand(data_path=["a", "b"])
        chosen = FedMLStorageUploadOperator.partial(task_id="up2", outlets=[mine]).expand(data_path=["a"])
    assert mapped.outlets == [AssetAlias("fedml-storage-upload:mapping_dag.up")]
    assert chosen.outlets == [mine]


def test_a_user_alias_beside_the_declared_asset_gets_the_event_too(tmp_path: Path, caplog, capfd) -> None:
    (tmp_path / "f.txt").write_text("x")
    mine = AssetAlias("my-alias")
    declared = Asset("fedml://default/f.txt")
    op = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt"), namespace="default",
                                    outlets=[declared, mine])
    ctx = _context()
    result = op.execute(ctx)
    extra = {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")}
    assert ctx["outlet_events"][declared].extra == extra
    assert ctx["outlet_events"][mine].added == [("fedml://default/f.txt", extra)]
    bare = FedMLStorageUploadOperator(task_id="bare", data_path=str(tmp_path / "f.txt"))
    bare.outlets = []  # as a mapped upload made outside any DAG: nothing to carry the event
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        bare.execute(_context())
    logged = caplog.text + "".join(capfd.readouterr())  # Airflow's task loggers write to the console
    assert "no outlet of this task carries an event for fedml://default/f.txt" in logged


def test_lineage_that_fails_never_fails_a_finished_transfer(tmp_path: Path, monkeypatch, caplog, capfd) -> None:
    import airflow_provider.hook as hook_module

    class Refusing:
        def add_output_asset(self, **kwargs):
            raise ValueError("Asset name cannot exceed 1500 characters")

        add_input_asset = add_output_asset

    monkeypatch.setattr(hook_module, "get_hook_lineage_collector", Refusing)
    (tmp_path / "f.txt").write_text("kept")
    with caplog.at_level(logging.WARNING), FedMLStorageHook() as hook:
        assert hook.upload(str(tmp_path / "f.txt"))["name"] == "f.txt"
        assert Path(hook.download("f.txt", str(tmp_path / "out"))).read_text() == "kept"
    logged = caplog.text + "".join(capfd.readouterr())
    said = [line for line in logged.splitlines() if "not reporting lineage" in line]
    assert len(said) == 2 and all("1500 characters" in line for line in said), logged


def test_outlet_follows_the_core_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "extra": {"service": "LOCAL"}}))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    static = FedMLStorageUploadOperator(task_id="up", data_path=str(model), name="weights.bin", namespace="default")
    assert [a.uri for a in static.outlets] == ["fedml://default/weights.bin"]  # a name with an extension is kept
    assert [a.uri for a in FedMLStorageUploadOperator(task_id="up0", data_path=str(model),
                                                      namespace="default").outlets] == ["fedml://default/model.pt"]
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
    assert not sensor.poke({})
    (tmp_path / "ready").mkdir()
    hook = FedMLStorageHook()
    hook.upload(str(tmp_path / "ready"), metadata={"status": "writing"})
    assert not sensor.poke({})
    hook.upload(str(tmp_path / "ready"), metadata={"status": "done"})
    assert sensor.poke({})
    assert FedMLStorageDatasetSensor(task_id="w2", name="ready").poke({})
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


def test_a_retried_delete_succeeds_and_says_nothing_was_deleted(tmp_path: Path) -> None:
    (tmp_path / "gone").write_text("x")
    FedMLStorageHook().upload(str(tmp_path / "gone"))
    delete = FedMLStorageDeleteOperator(task_id="rm", name="gone")
    assert delete.execute(_context()) is True
    assert delete.execute(_context()) is False  # the retry after the delete went through
    strict = FedMLStorageDeleteOperator(task_id="rm2", name="gone", missing_ok=False)
    with pytest.raises(AirflowFailException, match="no data named 'gone'"):
        strict.execute(_context())


def test_get_conn_is_the_client(tmp_path: Path) -> None:
    with FedMLStorageHook() as hook:
        client = hook.get_conn()
        assert isinstance(client, StorageClient) and client is hook.get_client()
        assert client.list().ok


def _log_lines(caplog, capfd) -> list[str]:
    """Log lines of both kinds: stdlib records (caplog) and Airflow's structlog lines (stdout)."""
    out, err = capfd.readouterr()
    return caplog.text.splitlines() + out.splitlines() + err.splitlines()


def _level(line: str) -> str:
    """The level of a caplog line ('WARNING  logger:...') or a structlog line ('... [warning  ] ...')."""
    for level in ("debug", "info", "warning", "error"):
        if line.startswith(level.upper()) or f"[{level}" in line:
            return level
    return ""


def test_a_failure_is_logged_once_by_airflow_not_by_the_core(tmp_path: Path, caplog, capfd) -> None:
    caplog.set_level(logging.INFO)
    hook = FedMLStorageHook()
    with pytest.raises(AirflowFailException, match="no data named 'never-stored'"):
        hook.download("never-stored", str(tmp_path))
    lines = _log_lines(caplog, capfd)
    assert not [line for line in lines if "never-stored" in line]  # the exception carries it: Airflow logs it once
    assert not [line for line in lines if "No connection" in line and _level(line) != "debug"]  # on every task


def test_sensor_waits_for_a_version_and_pushes_what_it_saw(tmp_path: Path) -> None:
    data = tmp_path / "versioned"
    data.mkdir()
    (data / "a.txt").write_text("one")
    hook = FedMLStorageHook(keep_versions=2)
    first = hook.upload(str(data))
    (data / "a.txt").write_text("two")
    second = hook.upload(str(data))
    latest = FedMLStorageDatasetSensor(task_id="w", name="versioned").poke({})
    assert latest.is_done and latest.xcom_value == {"name": "versioned", "version": second["version"],
                                                    "sha256": second["sha256"]}
    pinned = FedMLStorageDatasetSensor(task_id="w2", name="versioned", version="{{ params.v }}")
    pinned.render_template_fields({"params": {"v": first["version"]}})
    seen = pinned.poke({})
    assert seen.is_done and seen.xcom_value == {"name": "versioned", "version": first["version"],
                                                "sha256": first["sha256"]}
    later = "20991231T000000000000Z-00000000"  # a version id no upload has made yet: wait for it
    assert not FedMLStorageDatasetSensor(task_id="w3", name="versioned", version=later).poke({})
    (data / "a.txt").write_text("three")
    hook.upload(str(data))  # keep_versions=2: the first version is dropped, and can never come back
    with pytest.raises(AirflowFailException, match="is not kept"):
        FedMLStorageDatasetSensor(task_id="w5", name="versioned", version=first["version"]).poke({})
    with pytest.raises(AirflowFailException, match="not a version id"):
        FedMLStorageDatasetSensor(task_id="w6", name="versioned", version="v-not-stored").poke({})
    assert FedMLStorageDatasetSensor(task_id="w4", name="versioned", version="").poke({})  # rendered empty: any


def test_sensor_warns_when_the_service_cannot_be_reached(unreachable_connection: None, caplog, capfd) -> None:
    caplog.set_level(logging.INFO)
    seen = FedMLStorageDatasetSensor(task_id="w", name="ds", poke_interval=5).poke({})
    assert not seen.is_done  # an endpoint that is down may come up: keep waiting...
    lines = _log_lines(caplog, capfd)
    warned = [line for line in lines if "cannot check dataset 'ds'" in line and "cannot reach the storage" in line]
    assert [_level(line) for line in warned] in (["warning"], ["warning", "warning"]), lines  # not a quiet "not yet"
    assert SECRET not in "\n".join(lines)


def test_uploads_and_downloads_report_hook_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import lineage, plugins_manager

    monkeypatch.setattr(plugins_manager, "get_hook_lineage_readers_plugins", lambda: [lineage.HookLineageReader])
    lineage.get_hook_lineage_collector.cache_clear()  # a real collector, as when a lineage reader is installed
    try:
        (tmp_path / "seen.csv").write_text("a\n")
        hook = FedMLStorageHook(namespace="team-b")
        hook.upload(str(tmp_path / "seen.csv"))
        hook.download("seen.csv", str(tmp_path / "o"))
        collected = lineage.get_hook_lineage_collector().collected_assets
    finally:
        lineage.get_hook_lineage_collector.cache_clear()
    assert [i.asset.uri for i in collected.outputs] == ["fedml://team-b/seen.csv"]
    assert [i.asset.uri for i in collected.inputs] == ["fedml://team-b/seen.csv"]
    assert collected.outputs[0].context is hook
