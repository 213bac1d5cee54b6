"""Airflow retries: the first try fails because S3 is not up yet, the retry succeeds, data is stored once; and
the hook's cleanup of what an interrupted try left."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from airflow_provider.hook import FedMLStorageHook
from tests.conftest import TEST_API_KEY, s3_client

from .conftest import AIRFLOW, base_env, query

DAGFILE = Path(__file__).parent / "dags" / "fedml_retry_dag.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tries(airflow_home: Path) -> list[tuple]:
    """State and try number of the upload in the latest run of the DAG (each test makes one run)."""
    return query(airflow_home, "SELECT state, try_number FROM task_instance WHERE run_id = (SELECT run_id FROM "
                               "dag_run WHERE dag_id='fedml_storage_retry' ORDER BY id DESC LIMIT 1)")


def _start_upload_dag(airflow_home: Path, tmp_path: Path, size: int, extra: dict, more_env: dict | None = None
                      ) -> subprocess.Popen:
    """`airflow dags test` of the retry DAG, uploading a folder of `size` random bytes to S3 with these settings;
    its output goes to tmp_path/dags-test.log."""
    data = tmp_path / "retried"
    data.mkdir()
    (data / "part.bin").write_bytes(os.urandom(size))
    conn = {"conn_type": "fedml_storage", "password": TEST_API_KEY,
            "extra": {"service": "S3", "region": "us-east-1", **extra}}
    env = {**os.environ, **base_env(airflow_home), "AIRFLOW_CONN_FEDML_STORAGE_DEFAULT": json.dumps(conn),
           "FEDML_RETRY_DATA": str(data), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGFILE.parent), **(more_env or {})}
    log = (tmp_path / "dags-test.log").open("w")
    return subprocess.Popen([AIRFLOW, "dags", "test", "fedml_storage_retry", "-f", str(DAGFILE)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def test_first_try_fails_retry_succeeds_and_stores_once(airflow_home: Path, tmp_path: Path) -> None:
    port = _free_port()
    up = tmp_path / "store-up"  # the retry waits for it
    proc = _start_upload_dag(airflow_home, tmp_path, 10_000, {"bucket": "retry-bucket", "max_attempts": 1,
                                                              "endpoint_url": f"http://127.0.0.1:{port}"},
                             {"FEDML_RETRY_STORE_UP": str(up)})
    server = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            states = query(airflow_home, "SELECT state FROM task_instance WHERE dag_id='fedml_storage_retry' "
                                         "AND task_id='upload'")
            if ("up_for_retry",) in states:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the DAG run ended before its first try failed"
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        s3_client(f"http://127.0.0.1:{port}").create_bucket(Bucket="retry-bucket")
        up.touch()
        assert proc.wait(timeout=120) == 0
        output = (tmp_path / "dags-test.log").read_text()
        assert "cannot reach the storage endpoint" in output and "Marking run" in output
        assert TEST_API_KEY.split(":")[1] not in output
        tries = _tries(airflow_home)
        assert tries == [("success", 2)]
        keys = [o["Key"] for o in s3_client(f"http://127.0.0.1:{port}").list_objects_v2(
            Bucket="retry-bucket")["Contents"]]
        assert len([k for k in keys if "/data/" in k]) == 1 and keys.count("default/manifests/retried.json") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        if server is not None:
            server.stop()


def test_sigterm_mid_upload_cleans_up_and_the_retry_publishes_once(airflow_home: Path, tmp_path: Path,
                                                                   moto_proxy, s3_bucket: str) -> None:
    """SIGTERM (the task marked failed or cleared, the worker stopping): Airflow only calls on_kill, then kills the
    process 5 s later, cutting the transfer where it was. on_kill now interrupts the call, which cleans up."""
    import signal

    data_put = rb"^PUT /[^ ]*/data/"
    moto_proxy.on_request(data_put, lambda: time.sleep(120))  # the first try's data gets no answer
    proc = _start_upload_dag(airflow_home, tmp_path, 300_000, {"bucket": s3_bucket, "read_timeout": 5,
                                                               "endpoint_url": moto_proxy.endpoint})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(re.match(data_put, h) for h in moto_proxy.request_heads):
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "dags-test.log").read_text()
    assert "told to stop (SIGTERM) during a storage call" in output and "Marking run" in output
    tries = _tries(airflow_home)
    assert tries == [("success", 2)]
    s3 = s3_client(moto_proxy.endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert len([k for k in keys if "/data/" in k]) == 1 and keys.count("default/manifests/retried.json") == 1
    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_on_kill_interrupts_only_a_storage_call_in_the_main_thread_and_once() -> None:
    """Airflow also calls on_kill after a task timeout, which the call has handled by then; a second SIGTERM must
    not cut the first one's clean-up short."""
    import threading

    import pytest

    from airflow_provider.operators import FedMLStorageListOperator, TaskStopped

    op = FedMLStorageListOperator(task_id="list")
    op.on_kill()  # no call running: nothing to interrupt
    seen: list[str] = []

    def call() -> str:
        other = threading.Thread(target=op.on_kill)  # not the main thread, where signal handlers run
        other.start()
        other.join()
        seen.append("other thread: nothing")
        try:
            op.on_kill()
        except TaskStopped:
            seen.append("stopped")
            op.on_kill()  # the second: nothing, the clean-up goes on
            raise
        return "finished"

    with pytest.raises(TaskStopped, match="told to stop"):
        op._call(call)
    assert seen == ["other thread: nothing", "stopped"]
    op.on_kill()
    assert op._call(lambda: "done") == "done"


def test_hook_cleanup_removes_what_an_interrupted_upload_left(s3_settings: dict, monkeypatch: pytest.MonkeyPatch,
                                                             caplog, capfd) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps({
        "conn_type": "fedml_storage", "password": TEST_API_KEY,
        "extra": {k: s3_settings[k] for k in ("service", "bucket", "endpoint_url", "region")}}))
    s3 = s3_client(s3_settings["endpoint_url"])
    left = "default/data/killed/20261126T000000000000Z-0badc0de/killed.zip"  # never published
    s3.put_object(Bucket=s3_settings["bucket"], Key=left, Body=b"partial")
    assert FedMLStorageHook().cleanup(older_than_seconds=3600)["orphaned_objects_removed"] == 0  # in its grace period
    counts = FedMLStorageHook().cleanup(older_than_seconds=0)
    logged = caplog.text + capfd.readouterr().out
    assert counts["orphaned_objects_removed"] == 1 and "cleanup removed 1 unreferenced object(s)" in logged
    assert "Contents" not in s3.list_objects_v2(Bucket=s3_settings["bucket"])
