"""Deferrable sensor: the trigger on the real core, and a real `airflow dags test` that defers and resumes."""

from __future__ import annotations

import asyncio
import logging
import json
import os
import re
import subprocess
import threading
import time
import types
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider import triggers
from airflow_provider.hook import FedMLStorageHook
from airflow_provider.sensors import FedMLStorageDatasetSensor
from airflow_provider.triggers import FedMLStorageDatasetTrigger, next_wait
from fedml_storage import Readiness, StorageClient
from tests.conftest import TEST_API_KEY

from .conftest import AIRFLOW, base_env, first_event, query

DAGFILE = Path(__file__).parent / "dags" / "fedml_sensor_dag.py"
pytestmark = pytest.mark.usefixtures("unit_test_mode")


def test_trigger_serialises_without_secrets_and_fires_when_ready(tmp_path: Path, s3_settings: dict,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "fedml_storage", "password": TEST_API_KEY,
            "extra": {k: s3_settings[k] for k in ("service", "bucket", "endpoint_url", "region")}}
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(conn))
    trigger = FedMLStorageDatasetTrigger(name="late", metadata_key="status", metadata_value="done",
                                         poke_interval=0.2)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider.triggers.FedMLStorageDatasetTrigger"
    assert TEST_API_KEY.split(":")[1] not in json.dumps(kwargs)
    clone = FedMLStorageDatasetTrigger(**kwargs)

    async def scenario() -> dict:
        waiting = asyncio.ensure_future(first_event(clone, within=30))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "fired before the dataset existed"
        (tmp_path / "late").mkdir()
        hook = FedMLStorageHook()
        await asyncio.to_thread(hook.upload, str(tmp_path / "late"), metadata={"status": "writing"})
        await asyncio.sleep(0.6)
        assert not waiting.done(), "fired before the metadata value was set"
        await asyncio.to_thread(hook.upload, str(tmp_path / "late"), metadata={"status": "done"})
        return await waiting

    event = asyncio.run(scenario())
    assert event["status"] == "success" and "status='done'" in event["message"]


def test_trigger_reports_errors_that_waiting_cannot_cure() -> None:
    bad_name = FedMLStorageDatasetTrigger(name="../escape", poke_interval=0.1)
    event = asyncio.run(first_event(bad_name, within=30))
    assert event["status"] == "error" and "name" in event["message"]
    bad_service = FedMLStorageDatasetTrigger(name="ok", service="FTP", poke_interval=0.1)
    event = asyncio.run(first_event(bad_service, within=30))
    assert event["status"] == "error" and "LOCAL" in event["message"]


def test_a_cancelled_trigger_closes_its_client_after_the_check_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    release = threading.Event()

    def slow_check(self, *args, **kwargs) -> Readiness:
        events.append("check")
        release.wait(10)  # an endpoint that does not answer yet
        events.append("check done")
        return Readiness(False, "not yet")

    monkeypatch.setattr(FedMLStorageHook, "readiness", slow_check)
    monkeypatch.setattr(FedMLStorageHook, "close", lambda self: events.append("close"))

    async def cancel_mid_check() -> None:
        waiting = asyncio.ensure_future(first_event(FedMLStorageDatasetTrigger(name="ds", poke_interval=0.1), 30))
        while "check" not in events:
            await asyncio.sleep(0.01)
        waiting.cancel()  # the triggerer cancels on timeout, on clear, at shutdown
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(cancel_mid_check())
    assert events == ["check"]  # the cancellation did not wait for the check, nor close under its feet
    release.set()
    for _ in range(500):
        if "close" in events:
            break
        time.sleep(0.01)
    assert events == ["check", "check done", "close"]


def test_deferrable_sensor_in_a_real_dag_run(airflow_home: Path, tmp_path: Path, isolated_home: Path) -> None:
    data = tmp_path / "late-data"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n")
    env = {**os.environ, **base_env(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGFILE.parent)}
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    logfile = tmp_path / "dags-test.log"
    log = logfile.open("w")
    proc = subprocess.Popen([AIRFLOW, "dags", "test", "fedml_storage_sensor", "-f", str(DAGFILE)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if "running trigger in line" in logfile.read_text():  # the sensor poked once and deferred
                break
            time.sleep(0.3)
        assert proc.poll() is None, logfile.read_text()[-3000:]
        time.sleep(1.5)
        assert proc.poll() is None, "the sensor finished before its dataset existed"
        client = StorageClient()
        client.upload(data, metadata={"status": "writing"}).unwrap()
        time.sleep(1.5)
        assert proc.poll() is None, "the sensor finished before the metadata value was set"
        stored = client.upload(data, metadata={"status": "ready"}).unwrap()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = logfile.read_text()
    assert "not stored yet" in output and "status='ready'" in output
    assert "checking again in 1s" in output  # exponential_backoff and max_wait reached the trigger
    states = query(airflow_home, "SELECT task_id, state FROM task_instance WHERE dag_id='fedml_storage_sensor' "
                                 "ORDER BY task_id")
    assert states == [("after", "success"), ("wait", "success")]
    # what the trigger saw reaches the task's XCom, for a downstream task to pin the version
    rows = query(airflow_home, "SELECT value FROM xcom WHERE dag_id='fedml_storage_sensor' AND task_id='wait' "
                               "AND key='return_value'")
    value = rows[0][0]
    assert json.loads(value if isinstance(value, str) else value.decode()) == {
        "name": "late-data", "version": stored.version, "sha256": stored.sha256}


def test_a_deferred_sensor_times_out_by_itself_where_deferrals_have_no_timeout(airflow_home: Path, tmp_path: Path,
                                                                              isolated_home: Path) -> None:
    """`airflow dags test` runs a trigger without the deferral's timeout: it waited for ever."""
    env = {**os.environ, **base_env(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGFILE.parent)}
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    done = subprocess.run([AIRFLOW, "dags", "test", "fedml_storage_sensor_timeout", "-f", str(DAGFILE)], env=env,
                          capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert "running trigger in line" in output and "sensor timed out: dataset 'never-stored' not stored yet" in output
    states = query(airflow_home, "SELECT state FROM task_instance WHERE dag_id='fedml_storage_sensor_timeout'")
    assert states == [("failed",)], output[-3000:]


def test_a_poking_sensor_that_times_out_says_what_it_last_saw(airflow_home: Path, isolated_home: Path) -> None:
    """Airflow's own timeout said only how long it had waited; a deferred sensor said why (helper-103)."""
    env = {**os.environ, **base_env(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGFILE.parent)}
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    done = subprocess.run([AIRFLOW, "dags", "test", "fedml_storage_sensor_poke_timeout", "-f", str(DAGFILE)], env=env,
                          capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert "sensor timed out: dataset 'never-stored' not stored yet (" in output, output[-3000:]
    states = query(airflow_home, "SELECT state FROM task_instance WHERE dag_id='fedml_storage_sensor_poke_timeout'")
    assert states == [("failed",)], output[-3000:]


def test_the_trigger_fires_a_timeout_at_the_deadline_and_the_sensor_fails_or_skips_on_it(isolated_home: Path) -> None:
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

    deadline = time.time() + 0.7
    trigger = FedMLStorageDatasetTrigger(name="ds", service="LOCAL", poke_interval=0.2, deadline=deadline)
    event = asyncio.run(first_event(FedMLStorageDatasetTrigger(**trigger.serialize()[1]), within=30))
    assert event == {"status": "timeout", "name": "ds", "message": "sensor timed out: dataset 'ds' not stored yet"}
    assert time.time() >= deadline  # not before it
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="ds", deferrable=True)
    with pytest.raises(AirflowSensorTimeout, match="not stored yet"):
        sensor.execute_complete({}, event)
    lenient = FedMLStorageDatasetSensor(task_id="wait", name="ds", deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException, match="soft_fail"):
        lenient.execute_complete({}, event)


@pytest.fixture
def trigger_pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the trigger sleeps between its checks (slept in full, as without the fixture)."""
    pauses: list[float] = []

    async def sleep(delay: float) -> None:
        pauses.append(delay)
        await asyncio.sleep(delay)

    monkeypatch.setattr(triggers, "asyncio", types.SimpleNamespace(sleep=sleep))
    return pauses


def test_a_trigger_with_poke_interval_0_checks_once_a_second(isolated_home: Path, trigger_pauses: list[float],
                                                             caplog, capfd) -> None:
    """Sensors take poke_interval=0: the trigger then sent checks back to back, about 70 a second."""
    window = 3.0  # the first check's pause is cut short if that check takes more than window - 1 s (a busy machine)
    deadline = time.time() + window
    trigger = FedMLStorageDatasetTrigger(name="ds", service="LOCAL", poke_interval=0, deadline=deadline)
    with caplog.at_level(logging.INFO):
        event = asyncio.run(first_event(trigger, within=30))
    assert event["status"] == "timeout"
    # a second a pause, but the last one, cut short to end at the deadline
    assert trigger_pauses and all(pause >= 1 for pause in trigger_pauses[:-1]), trigger_pauses
    assert trigger_pauses[-1] >= 1 or trigger_pauses[-1] <= window - sum(trigger_pauses[:-1]), trigger_pauses
    out, err = capfd.readouterr()
    checks = [line for line in (caplog.text + out + err).splitlines() if "checking again" in line]
    assert "checking again in 1s" in checks[0], checks


def test_trigger_keeps_waiting_with_a_warning_while_the_service_is_unreachable(
        unreachable_connection: None, monkeypatch: pytest.MonkeyPatch, caplog, capfd) -> None:
    # an unreachable service is no reason to fail the task: three checks, and it still waits
    _checks_until_cancelled(FedMLStorageDatasetTrigger(name="ds", poke_interval=0.05), monkeypatch, 3)
    out, err = capfd.readouterr()
    warned = [line for line in (caplog.text + out + err).splitlines()
              if "cannot check dataset 'ds'" in line and "cannot reach the storage endpoint" in line]
    assert warned and all("warning" in line.lower() and "try again" not in line for line in warned)


def test_the_waits_between_checks_follow_poke_interval_and_backoff() -> None:
    assert [next_wait(30, checks) for checks in (1, 2, 9)] == [30, 30, 30]
    assert next_wait(30, 5, max_wait=10) == 30  # max_wait bounds the backoff only, as in poke mode
    for checks, low in ((1, 2), (2, 4), (3, 8), (4, 16)):
        waits = {next_wait(2, checks, exponential_backoff=True) for _ in range(200)}
        assert all(low <= wait <= low * 1.25 for wait in waits) and len(waits) > 1  # jittered
    assert next_wait(2, 6, exponential_backoff=True, max_wait=20) == 20
    assert next_wait(60, 1, exponential_backoff=True, max_wait=0) >= 60  # 0 bounds nothing, as in poke mode
    assert 1 <= next_wait(0, 1, exponential_backoff=True) <= 1.25  # no tight loop from a poke_interval of 0
    assert next_wait(0, 5) == next_wait(-1, 5) == 1.0  # nor without backoff (it checked ~70 times a second)
    assert next_wait(0.05, 5) == 0.05
    assert next_wait(2, 10_000, exponential_backoff=True) < float("inf")


def test_a_deferred_sensor_backs_off_between_checks_in_the_trigger(monkeypatch: pytest.MonkeyPatch,
                                                                   trigger_pauses: list[float], caplog, capfd) -> None:
    """exponential_backoff and max_wait were ignored once the sensor deferred: the trigger checked every
    poke_interval for as long as it waited."""
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="ds", deferrable=True, poke_interval=0.04,
                                       exponential_backoff=True, max_wait=0.4)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    _, kwargs = deferred.value.trigger.serialize()
    trigger = FedMLStorageDatasetTrigger(**json.loads(json.dumps(kwargs)))  # as the metadata DB returns it
    _checks_until_cancelled(trigger, monkeypatch, 6)
    out, err = capfd.readouterr()
    said = [float(s) for s in re.findall(r"not stored yet.*?checking again in ([\d.]+)s", caplog.text + out + err)]
    assert len(said) >= 5, caplog.text + out + err
    for pause, low in zip(said, (0.04, 0.08, 0.16, 0.32, 0.4)):
        assert low - 0.006 <= pause <= min(low * 1.25, 0.4) + 0.006, said
    assert [round(pause, 2) for pause in trigger_pauses[:len(said)]] == said  # it sleeps what it says


def _checks_until_cancelled(trigger: FedMLStorageDatasetTrigger, monkeypatch: pytest.MonkeyPatch,
                            count: int) -> None:
    """Run the trigger until it has checked `count` times without firing, then cancel it."""
    checks: list[float] = []
    real = FedMLStorageHook.readiness

    def counted(self, *args, **kwargs):
        checks.append(time.monotonic())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FedMLStorageHook, "readiness", counted)

    async def run() -> None:
        waiting = asyncio.ensure_future(first_event(trigger, within=60))
        while len(checks) < count and not waiting.done():
            await asyncio.sleep(0.01)
        assert not waiting.done(), waiting.result()
        waiting.cancel()

    asyncio.run(run())


def test_a_triggerer_that_reaches_another_store_fails_instead_of_watching_it(
        s3_settings: dict, monkeypatch: pytest.MonkeyPatch, isolated_home: Path, tmp_path: Path) -> None:
    """The connection on the workers but not in the triggerer: its hook fell back to fedml-storage's own
    configuration (the triggerer's LOCAL store) and waited there, or fired on a copy that the workers never see."""
    conn = {"conn_type": "fedml_storage", "password": TEST_API_KEY,
            "extra": {k: s3_settings[k] for k in ("service", "bucket", "endpoint_url", "region")}}
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(conn))
    (tmp_path / "ds.txt").write_text("on LOCAL only")
    StorageClient(service="LOCAL").upload(tmp_path / "ds.txt").unwrap()  # what the triggerer would have fired on
    sensor = FedMLStorageDatasetSensor(task_id="wait", name="ds.txt", deferrable=True, poke_interval=0.05)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})  # on S3 through the connection: not stored there yet
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["location"] == f"s3://{s3_settings['bucket']}/default at {s3_settings['endpoint_url']}"
    assert TEST_API_KEY.split(":")[1] not in json.dumps(kwargs)
    same = FedMLStorageDatasetTrigger(**json.loads(json.dumps(kwargs)))
    with pytest.raises(TimeoutError):  # the same connection in the triggerer: it waits, as it should
        asyncio.run(first_event(same, within=1))
    endpoint = s3_settings["endpoint_url"].replace("http://", "HTTP://") + "/"  # the same endpoint, written otherwise
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps({**conn, "extra": {
        **conn["extra"], "endpoint_url": endpoint}}))
    with pytest.raises(TimeoutError):
        asyncio.run(first_event(FedMLStorageDatasetTrigger(**json.loads(json.dumps(kwargs))), within=1))
    alias = s3_settings["endpoint_url"].replace("127.0.0.1", "localhost")  # another name for it: a warning only
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps({**conn, "extra": {
        **conn["extra"], "endpoint_url": alias}}))
    with pytest.raises(TimeoutError):
        asyncio.run(first_event(FedMLStorageDatasetTrigger(**json.loads(json.dumps(kwargs))), within=1))
    other = {**conn, "extra": {**conn["extra"], "bucket": "another-bucket"}}  # another store: fails
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(other))
    event = asyncio.run(first_event(FedMLStorageDatasetTrigger(**json.loads(json.dumps(kwargs))), within=30))
    assert event["status"] == "error" and "s3://another-bucket/default" in event["message"], event
    monkeypatch.delenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT")  # the triggerer lacks it
    event = asyncio.run(first_event(FedMLStorageDatasetTrigger(**json.loads(json.dumps(kwargs))), within=30))
    assert event["status"] == "error" and not event.get("retryable"), event
    assert "the triggerer reaches file://" in event["message"] and kwargs["location"] in event["message"]
    assert "'fedml_storage_default'" in event["message"]
    with pytest.raises(Exception, match="the triggerer reaches") as failed:
        sensor.execute_complete({}, event)
    assert type(failed.value).__name__ == "FedMLStorageFailException"  # not retried: the deployment needs fixing
