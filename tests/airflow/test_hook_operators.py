"""Hook, operators, sensor and provider info, called in-process (the DAG tests cover the Task Runner path)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from airflow.sdk import AssetAlias
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
from fedml_storage import StorageClient, StorageSettings
from tests.conftest import TEST_API_KEY

from .conftest import task_context

SECRET = TEST_API_KEY.split(":", 1)[1]
pytestmark = pytest.mark.usefixtures("unit_test_mode")


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


def test_advice_names_the_connection_and_the_operator_not_python_calls(
        s3_settings: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A connection without a bucket or key was told to run configure(bucket=...), pass bucket= to StorageClient or
    run fedml_login(...); a missing name to call list_storage_objects()."""
    def failure(extra: dict, call) -> str:
        monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps({"conn_type": "fedml_storage",
                                                                             "extra": extra}))
        with pytest.raises(AirflowFailException) as failed:
            call(FedMLStorageHook())
        return str(failed.value)

    said = failure({"service": "S3"}, lambda hook: hook.list())
    assert "set bucket in the extra of Airflow connection 'fedml_storage_default' (or service LOCAL" in said
    assert "StorageClient" not in said and "configure(" not in said
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    said = failure({k: s3_settings[k] for k in ("service", "bucket", "endpoint_url")}, lambda hook: hook.list())
    assert "set the password of Airflow connection 'fedml_storage_default' to ACCESS_KEY_ID:SECRET_ACCESS_KEY" in said
    assert "fedml_login" not in said
    said = failure({"service": "R2", "bucket": "b"}, lambda hook: hook.list())  # no default R2 in operators
    assert "R2 needs r2_account_id" in said and "service=None" not in said
    said = failure({"service": "LOCAL", "local_root": str(tmp_path / "store")}, lambda hook: hook.get_metadata("x"))
    assert "FedMLStorageListOperator shows what is stored" in said and "list_storage_objects" not in said
    (tmp_path / "store" / "default" / "manifests").mkdir(parents=True, exist_ok=True)  # a damaged entry (helper-103)
    (tmp_path / "store" / "default" / "manifests" / "bad.json").write_text("{not json")
    said = failure({"service": "LOCAL", "local_root": str(tmp_path / "store")}, lambda hook: hook.get_metadata("bad"))
    assert "FedMLStorageDeleteOperator(name='bad') removes it" in said and "delete('bad')" not in said


def test_extras_named_the_airflow_2_way_still_work(s3_settings: dict, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    old_style = {f"extra__fedml_storage__{k}": s3_settings[k] for k in ("service", "bucket", "endpoint_url", "region")}
    monkeypatch.setenv("AIRFLOW_CONN_MIGRATED", json.dumps({"conn_type": "fedml_storage", "extra": old_style,
                                                             "password": s3_settings["api_key"]}))
    hook = FedMLStorageHook("migrated")
    assert hook.location().startswith(f"s3://{s3_settings['bucket']}/default at ")
    (tmp_path / "f.txt").write_text("on S3")
    assert hook.upload(str(tmp_path / "f.txt"))["service"] == "S3"
    assert [m["dataName"] for m in hook.list()] == ["f.txt"]
    assert StorageClient(**s3_settings).get_metadata("f.txt").ok  # in the connection's bucket


@pytest.mark.parametrize(("extra", "words"), [
    ({"endpoint": "http://127.0.0.1:9"}, "'endpoint' (did you mean 'endpoint_url'?)"),
    ({"api_key": "AKIA:s3cr3t"}, "'api_key' (secrets go in their own field)"),
    ({"service": "LOCAL", "local_root": "relstore"}, "local_root in its extra is relative: on a worker"),
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
    ctx = task_context()
    result = upload.execute(ctx)
    json.dumps(result)
    assert result["name"] == "ds" and result["version"] and result["size"] > 0
    outlet = next(iter(ctx["outlet_events"].values()))
    assert outlet.extra["version"] == result["version"]
    logged = caplog.text + capfd.readouterr().out
    assert "uploaded 'ds'" in logged  # the one log line of what was done

    again = FedMLStorageUploadOperator(task_id="up2", data_path=str(src)).execute(task_context())
    assert again["skipped"] and again["version"] == result["version"]  # a retried upload costs nothing

    down = FedMLStorageDownloadOperator(task_id="down", name="ds", dest_path=str(tmp_path / "o"),
                                        version=result["version"], namespace="default")
    assert [a.uri for a in down.inlets] == ["fedml://default/ds"]
    ctx = task_context()
    path = down.execute(ctx)
    assert Path(path, "a.txt").read_text() == "airflow" and type(path) is str  # XCom: the path, as before
    assert ctx["ti"].pushed == {"version": result["version"], "sha256": result["sha256"]}  # to pin downstream
    capfd.readouterr()
    ctx = task_context()  # a retry, or the DAG run again: the copy there is that version, kept
    assert down.execute(ctx) == path and ctx["ti"].pushed == {"version": result["version"], "sha256": result["sha256"]}
    assert f"kept {path} as it is: it holds 'ds' version {result['version']} already" in capfd.readouterr().out
    ctx = task_context()
    FedMLStorageDownloadOperator(task_id="quiet", name="ds", dest_path=str(tmp_path / "q"), do_xcom_push=False
                                 ).execute(ctx)
    assert ctx["ti"].pushed == {}
    listed = FedMLStorageListOperator(task_id="ls").execute(task_context())
    assert [i["dataName"] for i in listed] == ["ds"] and json.dumps(listed)
    assert "prefix" in FedMLStorageListOperator.template_fields
    assert FedMLStorageListOperator(task_id="ls2", prefix="other").execute(task_context()) == []
    assert [i["dataName"] for i in FedMLStorageListOperator(task_id="ls3", prefix="d").execute(task_context())] == ["ds"]
    assert "listed 1 dataset(s) starting 'd': ds" in caplog.text + capfd.readouterr().out
    meta = FedMLStorageMetadataOperator(task_id="m", name="ds").execute(task_context())
    assert meta["user_metadata"] == {"k": "v"} and meta["tag_list"] == ["t"]
    assert FedMLStorageMetadataOperator(task_id="m2", name="ds", user_defined_only=True).execute(task_context()) == {
        "k": "v"}
    assert FedMLStorageDeleteOperator(task_id="rm", name="ds").execute(task_context()) is True
    out, err = capfd.readouterr()
    everything = logged + caplog.text + out + err + json.dumps([result, listed, meta])
    assert SECRET not in everything and TEST_API_KEY.split(":")[0] not in json.dumps([result, listed, meta])


def test_template_fields_render_metadata_as_json(tmp_path: Path) -> None:
    op = FedMLStorageUploadOperator(task_id="up", data_path="{{ params.root }}/data", name="{{ params.name }}",
                                    metadata={"run": "{{ run_id }}"})
    assert [type(a) for a in op.outlets] == [AssetAlias]  # a templated name is only known at run time
    assert op.template_fields_renderers["metadata"] == "json"
    op.render_template_fields({"params": {"root": str(tmp_path), "name": "rendered"}, "run_id": "manual__7"})
    assert (op.data_path, op.name, op.metadata) == (f"{tmp_path}/data", "rendered", {"run": "manual__7"})
    bad = FedMLStorageUploadOperator(task_id="bad", data_path=str(tmp_path), metadata="{not json")
    with pytest.raises(AirflowFailException, match="JSON"):
        bad.execute(task_context())


def _rendered_as_json_then_as_repr(tmp_path: Path, field: str, value: list[str]) -> dict:
    """Upload with `field` from one template rendered with | tojson (the result), then without it (refused)."""
    context = {"params": {"value": value}}
    as_json = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "data"),
                                         **{field: "{{ params.value | tojson }}"})
    as_json.render_template_fields(context)
    result = as_json.execute(task_context())
    as_repr = FedMLStorageUploadOperator(task_id="up2", data_path=str(tmp_path / "data"), name="other",
                                         **{field: "{{ params.value }}"})
    as_repr.render_template_fields(context)
    with pytest.raises(AirflowFailException, match=rf"{field} rendered as .*a Python list's repr.*'\| tojson'"):
        as_repr.execute(task_context())
    assert [m.dataName for m in StorageClient(service="LOCAL").list().data] == ["data"]  # 'other' never stored
    return result


def test_ignore_patterns_rendered_from_a_list(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.csv").write_text("a\n")
    (tmp_path / "data" / "run.tmp").write_text("scratch")
    assert _rendered_as_json_then_as_repr(tmp_path, "ignore_patterns", ["*.tmp", ".git"])["ignored"] == 1


def test_tag_list_rendered_from_a_list(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.csv").write_text("a\n")
    _rendered_as_json_then_as_repr(tmp_path, "tag_list", ["images", "v2"])
    assert StorageClient(service="LOCAL").get_metadata("data").data.tag_list == ["images", "v2"]


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
    FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt")).execute(task_context())
    FedMLStorageListOperator(task_id="ls").execute(task_context())
    FedMLStorageMetadataOperator(task_id="m", name="f.txt").execute(task_context())
    FedMLStorageDownloadOperator(task_id="down", name="f.txt", dest_path=str(tmp_path / "o")).execute(task_context())
    assert FedMLStorageDatasetSensor(task_id="s", name="f.txt").poke(task_context())
    assert FedMLStorageHook().test_connection()[0]
    FedMLStorageDeleteOperator(task_id="rm", name="f.txt").execute(task_context())
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
    assert {"service", "bucket", "endpoint_url", "region", "r2_account_id", "ca_bundle", "namespace"} <= set(fields)
    assert set(fields) <= set(StorageSettings.model_fields) - {"api_key"}  # each is a setting the hook reads by name


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
    assert delete.execute(task_context()) is True
    assert delete.execute(task_context()) is False  # the retry after the delete went through
    strict = FedMLStorageDeleteOperator(task_id="rm2", name="gone", missing_ok=False)
    with pytest.raises(AirflowFailException, match="no data named 'gone'"):
        strict.execute(task_context())


def test_a_delete_that_meets_a_new_upload_fails_the_task_without_retries(tmp_path: Path, monkeypatch) -> None:
    """Its conflict was retryable: Airflow's retry would read the new upload and delete it."""
    from fedml_storage.backends.local import LocalStore

    (tmp_path / "ds").write_text("one")
    FedMLStorageHook().upload(str(tmp_path / "ds"))
    real = LocalStore.delete

    def publish_first(self, key: str, **kw) -> None:
        if key.endswith("manifests/ds.json"):
            monkeypatch.setattr(LocalStore, "delete", real)
            (tmp_path / "ds").write_text("two, newer")
            FedMLStorageHook().upload(str(tmp_path / "ds"))
        return real(self, key, **kw)

    monkeypatch.setattr(LocalStore, "delete", publish_first)
    with pytest.raises(AirflowFailException, match="nothing was deleted"):
        FedMLStorageDeleteOperator(task_id="rm", name="ds").execute(task_context())
    assert Path(FedMLStorageHook().download("ds", str(tmp_path / "out"))).read_text() == "two, newer"


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


def test_a_failure_is_logged_once_by_airflow_not_by_the_core(tmp_path: Path, caplog, capfd, monkeypatch) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("FEDML_STORAGE_SERVICE", "LOCAL")  # a worker configured without a connection
    hook = FedMLStorageHook()
    with pytest.raises(AirflowFailException, match="no data named 'never-stored'"):
        hook.download("never-stored", str(tmp_path))
    lines = _log_lines(caplog, capfd)
    assert not [line for line in lines if "never-stored" in line]  # the exception carries it: Airflow logs it once
    assert not [line for line in lines if "No connection" in line and _level(line) != "debug"]  # on every task
    monkeypatch.delenv("FEDML_STORAGE_SERVICE")  # nothing configured at all (or a misspelt AIRFLOW_CONN_ variable)
    FedMLStorageHook().upload(str(tmp_path))
    warned = [line for line in _log_lines(caplog, capfd) if "No Airflow connection 'fedml_storage_default'" in line]
    assert warned and all(_level(line) == "warning" for line in warned) and "LOCAL store" in warned[0]


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
    assert not [line for line in warned if "try again" in line]  # it checks again itself (helper-103)
    assert SECRET not in "\n".join(lines)
