"""Settings resolution, login, and that the secret never shows in messages, logs or reprs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import certifi
import pytest
from pydantic import SecretStr, ValidationError

from fedml_storage import StorageClient, StorageSettings, api
from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.config import config_path
from tests.conftest import TEST_API_KEY

SECRET = TEST_API_KEY.split(":", 1)[1]
KEY_ID = TEST_API_KEY.split(":", 1)[0]


def test_resolution_order_arguments_then_env_then_file(monkeypatch) -> None:
    assert api.configure(service="S3", bucket="from-file", namespace="filens", region="eu-west-1").ok
    s = StorageSettings.resolve()
    assert (s.bucket, s.namespace, s.region, s.service) == ("from-file", "filens", "eu-west-1", "S3")
    monkeypatch.setenv("FEDML_STORAGE_BUCKET", "from-env")
    s = StorageSettings.resolve()
    assert (s.bucket, s.namespace) == ("from-env", "filens")
    s = StorageSettings.resolve(bucket="from-arg", namespace=None)
    assert (s.bucket, s.namespace) == ("from-arg", "filens")


def test_a_blank_value_is_unset_wherever_it_comes_from(monkeypatch, tmp_path: Path) -> None:
    """An empty form field or variable, a blank argument or a blank saved value: the next source decides."""
    assert api.configure(service="S3", namespace="team", bucket="datasets").ok
    monkeypatch.setenv("FEDML_STORAGE_NAMESPACE", "   ")
    monkeypatch.setenv("FEDML_STORAGE_SERVICE", "")
    s = StorageSettings.resolve(service=" ", namespace="", bucket="\t")
    assert (s.service, s.namespace, s.bucket) == ("S3", "team", "datasets")
    assert api.configure(service="", namespace=" ").ok  # clears them, as None does
    saved = json.loads(config_path().read_text())
    assert "service" not in saved and "namespace" not in saved and saved["bucket"] == "datasets"
    s = StorageSettings.resolve()
    assert (s.service, s.namespace) == ("LOCAL", "default")
    config_path().write_text(json.dumps({**saved, "service": "", "namespace": ""}))  # edited by hand
    assert StorageSettings.resolve().namespace == "default"
    (tmp_path / "f.txt").write_text("x")
    with StorageClient(service="", namespace="  ") as client:  # a blank argument to an API call
        assert client.upload(str(tmp_path / "f.txt")).ok
        assert client.settings.namespace == "default" and client.settings.service == "LOCAL"
    monkeypatch.setenv("FEDML_STORAGE_API_KEY", TEST_API_KEY)
    for blank in ("", "  ", SecretStr("")):  # not "no key" (boto3 would then send the machine's AWS credentials)
        with StorageClient(service="S3", bucket="b", api_key=blank) as client:
            assert client.settings.api_key.get_secret_value() == TEST_API_KEY


def test_store_settings_without_any_service_are_refused_not_used_on_local(tmp_path: Path) -> None:
    """A block or connection naming a bucket but no service would otherwise keep the data on the worker's disk."""
    (tmp_path / "f.txt").write_text("x")
    with StorageClient(origin="the FedMLStorage block 'prod'", bucket="prod-datasets", region="eu-west-1") as c:
        response = c.upload(str(tmp_path / "f.txt"))
    assert response.code == ResponseCode.FAILURE and response.reason == "not_configured"
    assert "the FedMLStorage block 'prod' sets bucket but no service" in response.message
    assert "service='S3'" in response.message
    assert not (config_path().parent / "store").exists()  # nothing went to the LOCAL store
    with StorageClient(r2_account_id="0" * 32, endpoint_url="http://127.0.0.1:9") as c:
        assert "sets endpoint_url and r2_account_id but no service" in c.upload(str(tmp_path / "f.txt")).message
    with StorageClient(api_key=TEST_API_KEY, key_means_remote=True) as c:  # as a connection or a block holds one
        assert "sets api_key but no service" in c.upload(str(tmp_path / "f.txt")).message
    assert not (config_path().parent / "store").exists()
    # a service given anywhere decides, LOCAL too; the documented API passes its key to every call, LOCAL ignores it
    with StorageClient(service="LOCAL", bucket="prod-datasets") as c:
        assert c.upload(str(tmp_path / "f.txt")).ok
    with StorageClient(api_key=TEST_API_KEY) as c:
        assert c.upload(str(tmp_path / "f.txt")).ok


def test_configured_paths_are_saved_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "certs").mkdir()
    shutil.copy(certifi.where(), tmp_path / "certs" / "ca.pem")  # configure checks that a ca_bundle holds certificates
    assert api.configure(local_root="stores/team", partial_dir="partial", ca_bundle="certs/ca.pem").ok
    saved = json.loads(config_path().read_text())
    assert (saved["local_root"], saved["partial_dir"], saved["ca_bundle"]) == (
        str(tmp_path / "stores" / "team"), str(tmp_path / "partial"), str(tmp_path / "certs" / "ca.pem"))
    monkeypatch.chdir("/")  # the store does not move with the caller's folder
    assert StorageSettings.resolve().store_root == (tmp_path / "stores" / "team").resolve()


def test_configure_rejects_bad_values_and_unknown_keys() -> None:
    bad = api.configure(namespace="no spaces allowed")
    assert bad.code == ResponseCode.FAILURE and "namespace" in bad.message
    unknown = api.configure(buckett="typo")
    assert unknown.code == ResponseCode.FAILURE and "buckett" in unknown.message
    assert not config_path().exists()


def test_bad_settings_say_where_they_came_from(monkeypatch, caplog) -> None:
    monkeypatch.setenv("FEDML_STORAGE_CONCURRENCY", "abc")
    monkeypatch.setenv("FEDML_STORAGE_API_KEY", f"{KEY_ID}-{SECRET}")  # malformed: no colon
    monkeypatch.setenv("FEDML_STORAGE_BUCKETT", "typo")
    with caplog.at_level(logging.WARNING, logger="fedml_storage"):
        response = api.list_storage_objects()
    assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input"
    assert "concurrency: " in response.message and "(from FEDML_STORAGE_CONCURRENCY)" in response.message
    assert "api_key: " in response.message and "(from FEDML_STORAGE_API_KEY)" in response.message
    assert SECRET not in response.message and KEY_ID not in response.message
    assert "ignoring FEDML_STORAGE_BUCKETT: no such setting (did you mean FEDML_STORAGE_BUCKET?)" in caplog.text
    monkeypatch.delenv("FEDML_STORAGE_API_KEY")
    assert "keep_versions: Input should be greater than or equal to 1 (from the argument)" in StorageClient(
        keep_versions=0).list().message


def test_a_key_pasted_into_another_setting_is_not_echoed(monkeypatch, caplog) -> None:
    monkeypatch.setenv("FEDML_STORAGE_SECRET_KEY", SECRET)  # no such setting: named, never echoed
    for where in ("env", "file"):
        if where == "env":
            monkeypatch.setenv("FEDML_STORAGE_API_KEY", TEST_API_KEY)
            monkeypatch.setenv("FEDML_STORAGE_NAMESPACE", TEST_API_KEY)  # a paste into the wrong variable
            monkeypatch.setenv("FEDML_STORAGE_CONCURRENCY", SECRET[:20])
        else:
            for name in ("FEDML_STORAGE_API_KEY", "FEDML_STORAGE_NAMESPACE", "FEDML_STORAGE_CONCURRENCY"):
                monkeypatch.delenv(name)
            config_path().write_text(json.dumps({"api_key": TEST_API_KEY, "concurrency": TEST_API_KEY,
                                                 "keep_versions": SECRET[:20]}))
        with caplog.at_level(logging.WARNING, logger="fedml_storage"):
            message = api.list_storage_objects().message
        assert "invalid settings" in message
        for piece in (SECRET, KEY_ID, SECRET[:12], SECRET[-12:]):
            assert piece not in message and piece not in caplog.text, (where, message)
    assert "ignoring FEDML_STORAGE_SECRET_KEY: no such setting" in caplog.text and "did you mean" not in caplog.text


def test_masked_settings_and_reprs_hide_the_key() -> None:
    s = StorageSettings.resolve(service="S3", bucket="b", api_key=TEST_API_KEY)
    for text in (repr(s), str(s), json.dumps(s.masked_dict()), repr(StorageClient(s))):
        assert SECRET not in text and KEY_ID not in text


def test_secret_absent_from_failures_and_logs(moto_endpoint: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "f.txt").write_text("x")
    responses = [
        # bucket that does not exist, endpoint that refuses connections, malformed key
        api.upload(str(tmp_path / "f.txt"), api_key=TEST_API_KEY, service="S3"),
        StorageClient(service="S3", bucket="no-such-bucket-here", endpoint_url=moto_endpoint,
                      api_key=TEST_API_KEY).upload(tmp_path / "f.txt"),
        StorageClient(service="S3", bucket="bucket-x", endpoint_url="http://127.0.0.1:9",
                      api_key=TEST_API_KEY).list(),
        StorageClient(service="S3", bucket="bucket-x", api_key=f"{KEY_ID}-{SECRET}").list(),
    ]
    assert [r.code for r in responses] == [ResponseCode.FAILURE, ResponseCode.FAILURE, ResponseCode.ERROR,
                                          ResponseCode.FAILURE]
    assert responses[1].reason == "not_configured" and "does not exist" in responses[1].message
    assert responses[2].retryable and "try again" in responses[2].message
    for r in responses:
        assert SECRET not in r.message and KEY_ID not in r.message and SECRET not in repr(r)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("fedml_storage") or r.levelno >= logging.INFO]
    assert ours and not any(SECRET in m or KEY_ID in m for m in ours)
    # botocore's own DEBUG lines carry the key id in signed headers, never the secret
    assert SECRET not in caplog.text


def test_unwrap_raises_with_message_and_reason(tmp_path: Path) -> None:
    from fedml_storage import FedMLStorageError

    response = StorageClient().download("missing", tmp_path)
    with pytest.raises(FedMLStorageError) as info:
        response.unwrap()
    assert info.value.reason == "not_found" and not info.value.retryable and "missing" in str(info.value)


def test_storage_error_survives_pickling() -> None:
    import pickle

    from fedml_storage import FedMLStorageError, StorageClient

    with pytest.raises(FedMLStorageError) as info:
        StorageClient().download("never-stored").unwrap()
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.reason == "not_found" and copy.response == info.value.response


def test_a_placeholder_key_does_not_garble_the_message(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    response = api.upload(str(tmp_path / "d"), api_key="api_key", service="R2")  # the spec's placeholder
    assert response.reason in ("invalid_input", "not_configured") and "api_key" in response.message, response.message
    assert "****" not in response.message


_CONCURRENT_SETTINGS = {
    "bucket": "b1", "region": "eu-west-1", "namespace": "team-a", "keep_versions": 3, "part_size": 8 * 1024 * 1024,
    "concurrency": 4, "max_attempts": 3, "read_timeout": 30, "compression": "deflated", "stream_min_rate": 0,
    "download_part_size": 2 * 1024 * 1024, "endpoint_url": "http://127.0.0.1:9000",
}


def test_concurrent_configures_keep_each_others_settings(isolated_home: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    calls = [f"api.configure(**{{{key!r}: {value!r}}})" for key, value in _CONCURRENT_SETTINGS.items()]
    calls.append(f"api.fedml_login({TEST_API_KEY!r})")
    procs = []
    for i, call in enumerate(calls):  # each imports, says it is ready, then all write at the same moment
        script = (f"import os, time; from fedml_storage import api; open({str(tmp_path / str(i))!r}, 'w').close()\n"
                  f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\nassert {call}.ok")
        procs.append(subprocess.Popen([sys.executable, "-c", script]))
    deadline = time.monotonic() + 120
    while not all((tmp_path / str(i)).exists() for i in range(len(calls))) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0] * len(procs)
    saved = json.loads(config_path().read_text())
    assert saved == {**_CONCURRENT_SETTINGS, "api_key": TEST_API_KEY}  # none lost to a concurrent read-modify-write
    assert stat.S_IMODE(config_path().stat().st_mode) == 0o600


def test_a_secret_inside_the_endpoint_url_is_refused_and_never_shown(monkeypatch) -> None:
    monkeypatch.setenv("FEDML_STORAGE_ENDPOINT_URL", "http://minioadmin:hunter2-secret-value@127.0.0.1:1")
    response = api.list_storage_objects(service="S3")
    assert response.reason == "invalid_input" and not response.retryable
    assert "hunter2-secret-value" not in response.message and "endpoint_url" in response.message
    assert "must not hold credentials" in response.message


def test_settings_errors_never_echo_the_key() -> None:
    with pytest.raises(ValidationError) as raised:
        StorageSettings(api_key="AKIAKEYID0001 wJalrSECRETSECRET")  # a space where the colon goes
    assert "api_key has no ':'" in str(raised.value)
    assert "wJalrSECRETSECRET" not in str(raised.value) and "AKIAKEYID0001" not in str(raised.value)


@pytest.mark.parametrize("account", ["evil.example/", "u:p@evil.example:443/", "abc.r2.cloudflarestorage.com",
                                     "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com"])
def test_an_r2_account_id_that_is_no_account_id_is_bad_input_not_retryable(account: str) -> None:
    response = StorageClient(service="R2", bucket="b", r2_account_id=account, api_key=TEST_API_KEY).list()
    assert response.reason == "invalid_input" and not response.retryable, response.message
    assert "32-character hex account id" in response.message


def test_a_session_token_reaches_the_server(moto_endpoint: str, s3_bucket: str) -> None:
    from urllib.parse import urlsplit

    from tests.cutting_proxy import CuttingProxy

    url = urlsplit(moto_endpoint)
    proxy = CuttingProxy((url.hostname, url.port))
    try:
        client = StorageClient(service="S3", bucket=s3_bucket, endpoint_url=proxy.endpoint, region="us-east-1",
                               api_key=TEST_API_KEY + ":FwoGZXIvYXdzEJr-session-token")
        assert client.list().ok
        assert any(b"\r\nx-amz-security-token: fwogzxivyxdzejr-session-token" in h.lower() for h in proxy.request_heads)
        failed = StorageClient(service="S3", bucket="missing-bucket-x", endpoint_url=proxy.endpoint,
                               region="us-east-1", api_key=TEST_API_KEY + ":FwoGZXIvYXdzEJr-session-token").list()
        assert not failed.ok and "session-token" not in failed.message
    finally:
        proxy.close()


def test_warnings_reach_stderr_without_any_logging_set_up(isolated_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from fedml_storage import api; api.list_storage_objects()"],
        env={**os.environ, "FEDML_STORAGE_SERVCE": "S3"}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0
    assert "FEDML_STORAGE_SERVCE" in proc.stderr and "did you mean FEDML_STORAGE_SERVICE" in proc.stderr


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:abc", "https://minio:99999", "http://minio:-1",
                                      "http://minio:0", "http://[::1"])
def test_an_endpoint_with_a_bad_port_is_bad_input_not_retryable(endpoint: str) -> None:
    response = StorageClient(service="S3", bucket="b", endpoint_url=endpoint, api_key=TEST_API_KEY).list()
    assert response.reason == "invalid_input" and not response.retryable, response.message
    assert "endpoint_url is not a valid URL" in response.message and endpoint not in response.message


def test_a_config_linked_into_a_missing_folder_is_named_not_an_internal_error(isolated_home: Path,
                                                                               tmp_path: Path) -> None:
    config_path().symlink_to(tmp_path / "unmounted" / "fedml.json")
    response = api.fedml_login(TEST_API_KEY)
    assert response.reason == "invalid_input", response.message
    assert "folder that does not exist" in response.message and str(tmp_path / "unmounted") in response.message


def test_a_config_others_can_read_is_warned_about_once(isolated_home: Path, caplog) -> None:
    assert api.configure(namespace="team").ok
    os.chmod(config_path(), 0o644)
    with caplog.at_level(logging.WARNING, logger="fedml_storage"):
        for _ in range(3):
            assert api.list_storage_objects().ok
    said = [r for r in caplog.records if "readable by other users" in r.getMessage()]
    assert len(said) == 1 and "chmod 600" in said[0].getMessage()


def test_a_config_link_that_loops_is_named_not_an_internal_error(isolated_home: Path) -> None:
    config_path().symlink_to(config_path())
    response = api.configure(namespace="team")
    assert response.reason == "invalid_input", response.message
    assert "loop" in response.message and str(config_path()) in response.message


def test_saving_what_an_environment_variable_overrides_says_so(isolated_home: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """login said 'default service is now R2' while FEDML_STORAGE_SERVICE kept every call on LOCAL."""
    monkeypatch.setenv("FEDML_STORAGE_SERVICE", "LOCAL")
    said = api.fedml_login(TEST_API_KEY, service="R2")
    assert said.ok and "FEDML_STORAGE_SERVICE, set in the environment, still takes precedence" in said.message
    assert StorageSettings.resolve().service == "LOCAL" and SECRET not in said.message
    said = api.configure(namespace="team-a", bucket="datasets")
    assert said.ok and "precedence" not in said.message  # nothing overrides these
    monkeypatch.setenv("FEDML_STORAGE_API_KEY", "OTHERKEYID:other-secret")
    said = api.fedml_login(TEST_API_KEY)
    assert "FEDML_STORAGE_API_KEY, set in the environment, still takes precedence" in said.message
    assert "other-secret" not in said.message and SECRET not in said.message
    monkeypatch.delenv("FEDML_STORAGE_SERVICE")
    monkeypatch.delenv("FEDML_STORAGE_API_KEY")
    assert "precedence" not in api.fedml_login(TEST_API_KEY, service="R2").message


def test_an_r2_account_id_given_closer_to_the_call_than_an_endpoint_decides_the_endpoint(monkeypatch) -> None:
    """A worker's FEDML_STORAGE_ENDPOINT_URL (its MinIO) beat the R2 account a block or connection named: that
    block's R2 calls went to the MinIO."""
    account, other = "a" * 32, "b" * 32
    r2 = f"https://{account}.r2.cloudflarestorage.com"
    monkeypatch.setenv("FEDML_STORAGE_ENDPOINT_URL", "http://minio.internal:9000")
    s = StorageSettings.resolve(service="R2", bucket="b", r2_account_id=account)
    assert s.resolved_endpoint == r2 and s.endpoint_url is None
    # set as close as the account id: the endpoint given wins, as documented; for S3 the account id means nothing
    assert StorageSettings.resolve(service="R2", r2_account_id=account, endpoint_url="http://a:1").endpoint_url \
        == "http://a:1"
    assert StorageSettings.resolve(service="S3", r2_account_id=account).resolved_endpoint == "http://minio.internal:9000"
    # a variable's account id over the config file's endpoint; the file's over nothing closer
    monkeypatch.delenv("FEDML_STORAGE_ENDPOINT_URL")
    assert api.configure(service="R2", endpoint_url="http://from-file:9000").ok
    assert StorageSettings.resolve().resolved_endpoint == "http://from-file:9000"
    monkeypatch.setenv("FEDML_STORAGE_R2_ACCOUNT_ID", other)
    assert StorageSettings.resolve().resolved_endpoint == f"https://{other}.r2.cloudflarestorage.com"


def test_sizes_take_a_unit_as_the_settings_table_writes_them(monkeypatch, tmp_path: Path) -> None:
    """FEDML_STORAGE_PART_SIZE=16MiB (as the table gives the default) failed with 'Input should be a valid integer'."""
    monkeypatch.setenv("FEDML_STORAGE_PART_SIZE", "16MiB")
    monkeypatch.setenv("FEDML_STORAGE_DOWNLOAD_PART_SIZE", "8 MB")
    settings = StorageSettings.resolve()
    assert (settings.part_size, settings.download_part_size) == (16 << 20, 8 << 20)
    assert StorageSettings(download_threshold="1.5GiB", stream_min_rate="0").download_threshold == 3 << 29
    assert StorageSettings(stream_min_rate="128 MiB/s").stream_min_rate == 128 << 20  # as the table writes it
    with pytest.raises(ValidationError, match="give a whole number of bytes"):
        StorageSettings(download_threshold="1.9")  # it was 1 byte
    monkeypatch.setenv("FEDML_STORAGE_PART_SIZE", "16 megs")
    refused = StorageClient(service="LOCAL", local_root=str(tmp_path)).list()
    assert refused.reason == "invalid_input" and "FEDML_STORAGE_PART_SIZE" in refused.message
    assert "part_size: give a whole number of bytes, or a size with a unit, e.g. 16MiB" in refused.message


def test_a_key_given_as_a_name_or_path_is_refused_and_never_shown(store, tmp_path: Path) -> None:
    """download(name, api_key) swapped, or a pipeline task's second argument: a key pair where a name or dest_path
    goes was echoed in the message, or stored as the dataset's name."""
    key = "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    (tmp_path / "a.txt").write_text("a")
    client = store.client()
    for response in (client.upload(str(tmp_path / "a.txt"), key), client.download(key, str(tmp_path)),
                     client.delete(key), client.get_metadata(key), client.exists(key)):
        assert response.reason == "invalid_input" and "shaped like an access key pair" in response.message
        assert "wJalrXUtnFEMI" not in response.message and "AKIAIOSFODNN7EXAMPLE" not in response.message
    assert client.list().data == []


@pytest.mark.parametrize("kind", ["fifo", "latin-1"])
def test_a_config_file_that_cannot_be_read_as_json_text_is_refused_at_once(isolated_home: Path, kind: str) -> None:
    """A pipe in its place blocked every call; bytes that are not UTF-8 gave an internal error (helper-90)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b'{"namespace": "caf\xe9"}')
    run = subprocess.run([sys.executable, "-c", "from fedml_storage import api; r = api.list_storage_objects(); "
                          "print(r.code.value, r.reason, r.message)"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FEDML_STORAGE_HOME": str(isolated_home)})
    said = {"fifo": "is not a regular file", "latin-1": "is not UTF-8 text"}[kind]
    assert run.stdout.startswith("FAILURE invalid_input") and said in run.stdout and str(path) in run.stdout, run
