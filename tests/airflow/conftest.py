"""A real Airflow: one migrated SQLite metadata DB per session, DAGs run with `airflow dags test`."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow.sdk import Asset

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow-home")
    env = {**os.environ, **base_env(home)}
    for cmd in (["db", "migrate"], ["dags", "reserialize"]):  # reserialize: DAGs scheduled on Assets are known
        proc = subprocess.run([AIRFLOW, *cmd], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return home


def base_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags_examples"),
        "PYTHONPATH": str(REPO),
    }


def run_dag(home: Path, dag_id: str, env: dict[str, str], dagfile: Path | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """`airflow dags test <dag_id>` with this process's environment plus `env`."""
    cmd = [AIRFLOW, "dags", "test", dag_id] + (["-f", str(dagfile)] if dagfile else [])
    full = {**os.environ, **base_env(home), **env}
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=timeout)


def succeeded(proc: subprocess.CompletedProcess) -> bool:
    text = proc.stdout + proc.stderr
    return proc.returncode == 0 and "Marking run" in text and "successful" in text


def query(home: Path, sql: str, *args) -> list[tuple]:
    """Read the Airflow metadata DB."""
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture
def unreachable_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default connection points at an S3 endpoint where nothing listens (one attempt per request)."""
    import json
    import socket

    from tests.conftest import TEST_API_KEY

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "password": TEST_API_KEY,
         "extra": {"service": "S3", "bucket": "b", "endpoint_url": f"http://127.0.0.1:{port}", "max_attempts": 1}}))


async def first_event(trigger, within: float) -> dict:
    """The payload of the first event a trigger fires (within `within` seconds); the trigger is then closed."""
    events = trigger.run()
    try:
        return (await asyncio.wait_for(anext(events), within)).payload
    finally:
        await events.aclose()


@pytest.fixture
def unit_test_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that run operators in-process; a test that also starts `airflow dags test` takes it out of the
    subprocess's environment."""
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


def task_context() -> dict:
    """The parts of a task's context the operators use, recording what they emit and push."""
    return {"outlet_events": defaultdict(lambda: _OutletEvents(extra=None, added=[])), "run_id": "manual__1",
            "ds": "2026-11-24", "ti": _TaskInstance(pushed={})}
