"""Connections that would send data or secrets somewhere unintended, arguments that could never be met or work
(found by a review against the amazon provider)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from airflow_provider.hook import FedMLStorageException, FedMLStorageHook
from airflow_provider.sensors import FedMLStorageDatasetSensor
from airflow_provider.triggers import FedMLStorageDatasetTrigger
from fedml_storage import StorageClient
from tests.conftest import TEST_API_KEY
from tests.cutting_proxy import CuttingProxy

from .conftest import first_event, task_context

KEY_ID, SECRET = TEST_API_KEY.split(":", 1)
pytestmark = pytest.mark.usefixtures("unit_test_mode")


@pytest.fixture
def proxy(moto_proxy: CuttingProxy) -> CuttingProxy:
    return moto_proxy


def _connect(monkeypatch: pytest.MonkeyPatch, **conn: object) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps({"conn_type": "fedml_storage", **conn}))


def test_a_session_token_key_is_sent_as_such_and_never_the_secret(
        monkeypatch: pytest.MonkeyPatch, proxy: CuttingProxy, s3_bucket: str, tmp_path: Path) -> None:
    extra = {"service": "S3", "bucket": s3_bucket, "endpoint_url": proxy.endpoint, "region": "us-east-1"}
    _connect(monkeypatch, password=f"{TEST_API_KEY}:session-token-123", extra=extra)
    (tmp_path / "f.txt").write_text("x")
    FedMLStorageHook().upload(str(tmp_path / "f.txt"))
    heads = b"\n".join(proxy.request_heads)
    assert f"Credential={KEY_ID}/".encode() in heads and b"session-token-123" in heads
    assert SECRET.encode() not in heads
    _connect(monkeypatch, login=KEY_ID, password=SECRET, extra=extra)  # key id as login, secret as password
    assert FedMLStorageHook().settings_from_connection()["api_key"] == TEST_API_KEY
    _connect(monkeypatch, login=KEY_ID, password=TEST_API_KEY, extra=extra)  # the whole key in the password too
    assert FedMLStorageHook().settings_from_connection()["api_key"] == TEST_API_KEY


@pytest.mark.parametrize("login, password", [
    (KEY_ID, f"{SECRET}:session-token-123"),  # was sent with the secret as key id (in clear, in every request)
    ("admin", TEST_API_KEY),  # a stray login: was sent with the real secret as a session token
], ids=["secret-and-token", "stray-login"])
def test_a_login_beside_a_password_holding_a_colon_is_refused(monkeypatch: pytest.MonkeyPatch, proxy: CuttingProxy,
                                                              s3_bucket: str, login: str, password: str) -> None:
    _connect(monkeypatch, login=login, password=password,
             extra={"service": "S3", "bucket": s3_bucket, "endpoint_url": proxy.endpoint, "region": "us-east-1"})
    with pytest.raises(AirflowFailException, match="leave the login empty") as refused:
        FedMLStorageHook().list()
    assert SECRET not in str(refused.value) and proxy.request_heads == []  # nothing was sent


@pytest.mark.parametrize("conn", [
    {"host": "minio", "port": 9000, "extra": {"service": "S3", "bucket": "b"}},
    {"schema": "mybucket", "extra": {"service": "S3"}},
], ids=["host-and-port", "schema"])
def test_host_schema_and_port_are_refused_not_dropped(monkeypatch: pytest.MonkeyPatch, conn: dict) -> None:
    """Dropped, they sent the calls (and the key) to AWS instead of the MinIO the user meant."""
    _connect(monkeypatch, password=TEST_API_KEY, **conn)
    with pytest.raises(AirflowFailException, match="put the endpoint in extra endpoint_url") as refused:
        FedMLStorageHook().list()
    assert SECRET not in str(refused.value)
    uri = f"fedml-storage://{KEY_ID}:{quote(SECRET, safe='')}@minio:9000/?service=S3&bucket=b"
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", uri)
    with pytest.raises(AirflowFailException, match="sets host, port"):
        FedMLStorageHook().list()


def test_a_login_without_a_password_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _connect(monkeypatch, login=KEY_ID, extra={"service": "S3", "bucket": "b"})
    with pytest.raises(AirflowFailException, match="has a login but no password"):
        FedMLStorageHook().list()  # it fell back to whatever credentials the worker had


def test_a_connection_with_a_bucket_but_no_service_fails_instead_of_storing_locally(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_home: Path) -> None:
    _connect(monkeypatch, password=TEST_API_KEY, extra={"bucket": "prod-datasets", "region": "eu-west-1"})
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(AirflowFailException, match="'fedml_storage_default' or the task's arguments sets api_key and "
                                                   "bucket but no service") as refused:
        FedMLStorageHook().upload(str(tmp_path / "f.txt"))
    assert refused.value.reason == "not_configured" and not (isolated_home / "store").exists()


@pytest.mark.parametrize("conn_type", ["fedml_storage", "aws"])
def test_a_connection_with_a_key_but_no_service_fails_instead_of_storing_locally(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_home: Path, conn_type: str, caplog, capfd) -> None:
    """The key was ignored and the data went to the worker's LOCAL store, where no other worker finds it."""
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps({"conn_type": conn_type,
                                                                         "password": TEST_API_KEY}))
    (tmp_path / "f.txt").write_text("x")
    with caplog.at_level(logging.WARNING), pytest.raises(
            AirflowFailException, match="or the task's arguments sets api_key but no service") as refused:
        FedMLStorageHook().upload(str(tmp_path / "f.txt"))
    assert refused.value.reason == "not_configured" and not (isolated_home / "store").exists()
    logged = caplog.text + "".join(capfd.readouterr())  # Airflow's task logger writes to stdout
    assert SECRET not in str(refused.value) and SECRET not in logged
    assert ("is of type 'aws', not fedml_storage" in logged) == (conn_type == "aws")
    works, said = FedMLStorageHook().test_connection()  # the form's Test button says the same
    assert not works and "sets api_key but no service" in said
    monkeypatch.setenv("FEDML_STORAGE_SERVICE", "LOCAL")  # a service set anywhere decides, LOCAL too
    assert FedMLStorageHook().upload(str(tmp_path / "f.txt"))["service"] == "LOCAL"


def test_the_clients_repr_masks_credentials_typed_into_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    _connect(monkeypatch, extra={"service": "S3", "bucket": "b", "endpoint_url": f"http://{KEY_ID}:{SECRET}@minio"})
    shown = repr(FedMLStorageHook().get_conn())
    assert SECRET not in shown and "http://****@minio" in shown


@pytest.mark.parametrize(("key", "value", "words"), [
    (None, "done", "metadata_value 'done' needs metadata_key"),
    ("", None, "metadata_key is empty"),
    ("  ", "done", "metadata_key is empty"),
    ("status", True, "metadata_value True is a bool, never stored: user-metadata values are text"),
    ("epoch", 3.1, r"metadata_value 3.1 is a float, never stored: .* \(3.10 becomes 3.1\); pass the stored text"),
    pytest.param("epoch", 10 ** 5000, "metadata_value of over 100 digits is a int, never stored", id="str()-fails"),
])
def test_sensor_arguments_that_can_never_be_met_fail_the_task(tmp_path: Path, key: str | None, value: str | None,
                                                              words: str) -> None:
    """A value without a key was ignored (the sensor passed at once); an empty key waited for ever."""
    (tmp_path / "ds").mkdir()
    FedMLStorageHook().upload(str(tmp_path / "ds"), metadata={"status": "running"})
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="ds", metadata_key=key, metadata_value=value)
    with pytest.raises(AirflowFailException, match=words):
        sensor.poke({})


def test_a_sensor_value_rendered_as_a_number_matches_its_stored_text(tmp_path: Path) -> None:
    """With render_template_as_native_obj, "{{ params.epoch }}" renders 3: the sensor waited for ever ('3' != 3)."""
    (tmp_path / "ds").mkdir()
    FedMLStorageHook().upload(str(tmp_path / "ds"), metadata={"epoch": "3"})
    assert FedMLStorageDatasetSensor(task_id="wait", name="ds", metadata_key="epoch", metadata_value=3).poke({})
    assert not FedMLStorageDatasetSensor(task_id="wait", name="ds", metadata_key="epoch", metadata_value=4).poke({})


@pytest.mark.parametrize("mode", ["soft_fail", "never_fail"])
def test_a_deferrable_sensor_that_cannot_work_skips_with_soft_fail(mode: str) -> None:
    """The check before deferring bypassed soft_fail / never_fail: the task failed where poke mode skipped."""
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="../escape", deferrable=True, **{mode: True})
    with pytest.raises(AirflowSkipException, match="name"):
        sensor.execute({})
    strict = FedMLStorageDatasetSensor(task_id="wait", name="../escape", deferrable=True)
    with pytest.raises(AirflowFailException):
        strict.execute({})


def test_the_check_before_deferring_treats_timeouts_as_the_poking_loop_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowTaskTimeout

    for error in (AirflowTaskTimeout, AirflowSensorTimeout):
        def timed_out(self, context, error=error):
            raise error("timed out")

        monkeypatch.setattr(FedMLStorageDatasetSensor, "poke", timed_out)
        with pytest.raises(AirflowSkipException):  # soft_fail skips it (a BaseException slipped past before)
            FedMLStorageDatasetSensor(task_id="w", name="ds", deferrable=True, soft_fail=True).execute({})
        with pytest.raises(error):  # silent_fail does not swallow it
            FedMLStorageDatasetSensor(task_id="w", name="ds", deferrable=True, silent_fail=True).execute({})


def test_an_unexpected_error_in_the_trigger_lets_airflow_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Such as a secrets backend down while the connection is looked up: it failed the task for good."""
    def broken(self, *args, **kwargs):
        raise RuntimeError("secrets backend unavailable")

    monkeypatch.setattr(FedMLStorageHook, "readiness", broken)
    trigger = FedMLStorageDatasetTrigger(name="ds", poke_interval=0.1)
    event = asyncio.run(first_event(trigger, within=30))
    assert event["status"] == "error" and event["retryable"] is True
    assert "RuntimeError: secrets backend unavailable" in event["message"]
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="ds", deferrable=True)
    with pytest.raises(FedMLStorageException) as raised:
        sensor.execute_complete({}, event)
    assert isinstance(raised.value, AirflowException) and not isinstance(raised.value, AirflowFailException)


def test_metadata_rendered_as_a_python_repr_says_how_to_render_it(tmp_path: Path) -> None:
    from airflow_provider.operators import FedMLStorageUploadOperator

    (tmp_path / "f.txt").write_text("x")
    upload = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt"), metadata="{'run': 'r1'}")
    with pytest.raises(AirflowFailException, match=r"render it with '\| tojson'"):
        upload.execute({})
    assert FedMLStorageHook().list() == []  # nothing was uploaded


def test_a_blank_task_argument_leaves_the_connections_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """namespace="{{ params.ns }}" rendered empty silently switched to the namespace 'default'."""
    _connect(monkeypatch, extra={"service": "LOCAL", "namespace": "team-a"})
    assert FedMLStorageHook(namespace="", service="  ").namespace == "team-a"
    from airflow_provider.operators import FedMLStorageDownloadOperator, FedMLStorageUploadOperator

    for blank in (" ", "\t"):  # no Asset of a blank namespace ('fedml:// /a.txt'): the connection's, at run time
        assert not [a for a in FedMLStorageUploadOperator(task_id="u", data_path="a.txt", namespace=blank).outlets
                    if getattr(a, "uri", "").startswith("fedml:")]
        assert FedMLStorageDownloadOperator(task_id="d", name="a.txt", namespace=blank, dest_path="out").inlets == []


def test_a_download_without_a_destination_is_refused_before_anything_lands(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """It downloaded into the worker's working directory, replacing whatever there had the dataset's name."""
    from airflow_provider.operators import FedMLStorageDownloadOperator

    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "my_dag.py").write_text("the user's DAG")
    (tmp_path / "src" / "dags").mkdir(parents=True)
    (tmp_path / "src" / "dags" / "rows.csv").write_text("a,b\n")
    FedMLStorageHook().upload(str(tmp_path / "src" / "dags"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="needs dest_path=: a folder on the worker"):
        FedMLStorageDownloadOperator(task_id="d", name="dags")
    rendered_blank = FedMLStorageDownloadOperator(task_id="d", name="dags", dest_path="{{ params.out }}")
    rendered_blank.dest_path = " "  # what the template rendered
    with pytest.raises(AirflowFailException, match="render empty"):
        rendered_blank.execute(task_context())
    for blank in (None, ""):  # a @task calling the hook: no retries either
        with pytest.raises(AirflowFailException, match="download needs dest_path="):
            FedMLStorageHook().download("dags", blank)
    for relative in (".", "out", Path("out/inner")):  # into the working directory all the same
        with pytest.raises(AirflowFailException, match="is relative: on a worker .* give an absolute path"):
            FedMLStorageHook().download("dags", relative)
    with pytest.raises(AirflowFailException, match="is relative"):
        FedMLStorageDownloadOperator(task_id="d", name="dags", dest_path=".").execute(task_context())
    with pytest.raises(AirflowFailException, match="names a home folder .~user. this system does not know") as home:
        FedMLStorageHook().download("dags", "~no-such-user-here/out")  # absolute, to a user the worker lacks
    assert "relative" not in str(home.value)
    assert sorted(p.name for p in (tmp_path / "dags").iterdir()) == ["my_dag.py"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dags", "src"]
    assert FedMLStorageHook().download("dags", str(tmp_path / "out")).name == "dags"  # an absolute one is taken
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert FedMLStorageHook().download("dags", "~/out").name == "dags"  # and one in the worker's home
    assert (tmp_path / "home" / "out" / "dags" / "rows.csv").read_text() == "a,b\n"


def test_a_connection_uri_airflow_cannot_read_fails_instead_of_storing_locally(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A '/' left in the secret: Airflow reads no connection at all, and the default id fell back to the worker's
    LOCAL store (the upload 'succeeded' on the worker's disk)."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    (tmp_path / "f.txt").write_text("x")
    for conn_id in ("fedml_storage_default", "team_store"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                           f"fedml-storage://AKIAIOSFODNN7EXAMPLE:{secret}@/?service=S3&bucket=datasets")
        with pytest.raises(AirflowFailException) as raised:
            FedMLStorageHook(conn_id).upload(str(tmp_path / "f.txt"))
        said = str(raised.value)
        assert f"could not read connection {conn_id!r} from AIRFLOW_CONN_{conn_id.upper()}" in said, said
        assert "'/' as %2F" in said and secret not in said and "K7MDENG" not in said
    assert StorageClient().list().data == []  # nothing went to the LOCAL store
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT",  # encoded, it is read (and refused for its bucket)
                       f"fedml-storage://AKIAIOSFODNN7EXAMPLE:{quote(secret, safe='')}@/?service=S3&bucket=datasets"
                       "&endpoint_url=http%3A%2F%2F127.0.0.1%3A9")
    assert FedMLStorageHook().settings_from_connection()["bucket"] == "datasets"


def test_a_uri_with_an_underscore_in_its_scheme_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """'fedml_storage://...' is no URI scheme: Airflow made all of it the schema, and the task said the connection
    'sets schema', which the user never did."""
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", f"fedml_storage://{KEY_ID}:{SECRET}@/?service=S3&bucket=b")
    with pytest.raises(AirflowFailException) as raised:
        FedMLStorageHook().settings_from_connection()
    assert "must start with fedml-storage:// (with a dash" in str(raised.value) and SECRET not in str(raised.value)
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT",  # JSON without a conn_type: no URI to blame
                       json.dumps({"host": "minio", "password": TEST_API_KEY}))
    with pytest.raises(AirflowFailException, match="sets host, which fedml-storage does not use") as raised:
        FedMLStorageHook().settings_from_connection()
    assert "fedml-storage://" not in str(raised.value)


@pytest.mark.parametrize("extra", ["{'service': 'S3', 'bucket': 'b'}", "[1, 2]", '"S3"'],
                         ids=["python-repr", "json-list", "json-string"])
def test_an_extra_that_is_not_a_json_object_fails_instead_of_storing_locally(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_home: Path, extra: str) -> None:
    """Airflow took the Python-style dict for no extra (logged, and the upload 'succeeded' on the worker's LOCAL
    store, the key unused); a JSON list raised AttributeError, which Airflow retried."""
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT",
                       json.dumps({"conn_type": "fedml_storage", "password": TEST_API_KEY, "extra": extra}))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(AirflowFailException, match="has an extra that is not a JSON object") as refused:
        FedMLStorageHook().upload(str(tmp_path / "f.txt"))
    assert refused.value.reason == "invalid_input" and SECRET not in str(refused.value)
    assert not (isolated_home / "store").exists()
