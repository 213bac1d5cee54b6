"""Shared fixtures: an isolated FEDML_STORAGE_HOME per test and a real moto S3 server over HTTP."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from tests.cutting_proxy import CuttingProxy

TEST_API_KEY = "AKIATESTKEYID0000000:test-secret-key-never-logged-42"

# Airflow and Prefect read their homes when first imported (at collection): never the user's ~/airflow, ~/.prefect.
_FRAMEWORK_HOMES = Path(tempfile.mkdtemp(prefix="fedml-storage-tests-"))
os.environ["AIRFLOW_HOME"] = str(_FRAMEWORK_HOMES / "airflow")
os.environ["PREFECT_HOME"] = str(_FRAMEWORK_HOMES / "prefect")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_FRAMEWORK_HOMES / "prefect" / "storage")  # not under HOME


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_FRAMEWORK_HOMES, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the core's config, cache and LOCAL store at a fresh directory; drop the user's settings."""
    for key in list(os.environ):
        if key.startswith("FEDML_STORAGE_") or key.startswith("AWS_"):
            monkeypatch.delenv(key, raising=False)
    home = tmp_path_factory.mktemp("fedml-home")
    monkeypatch.setenv("FEDML_STORAGE_HOME", str(home))
    # boto3 must never find real credentials or config on a developer's machine.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return home


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real S3 API (moto's threaded HTTP server) on 127.0.0.1; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto_proxy(moto_endpoint: str) -> Iterator[CuttingProxy]:
    """A proxy in front of the moto server that can cut connections or answer requests itself."""
    url = urlsplit(moto_endpoint)
    proxy = CuttingProxy((url.hostname, url.port))
    yield proxy
    proxy.close()


def s3_client(endpoint: str):
    """A plain boto3 client on the moto server, for test set-up and inspection."""
    key_id, secret = TEST_API_KEY.split(":", 1)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"fedml-test-{uuid.uuid4().hex[:12]}"
    s3_client(moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(moto_endpoint: str, s3_bucket: str) -> dict[str, str]:
    """Keyword settings for StorageClient / the API that select the moto bucket."""
    return {
        "service": "S3",
        "bucket": s3_bucket,
        "endpoint_url": moto_endpoint,
        "region": "us-east-1",
        "api_key": TEST_API_KEY,
    }


@pytest.fixture
def s3_env(s3_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The same moto bucket selected through FEDML_STORAGE_* environment variables."""
    env = {f"FEDML_STORAGE_{k.upper()}": v for k, v in s3_settings.items()}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@dataclass
class ClientSpy:
    """StorageClients that opened a store during a test, and those closed (in order)."""

    opened: list = field(default_factory=list)
    closed: list = field(default_factory=list)

    def leaked(self) -> list:
        """Clients still holding an open store."""
        return [c for c in self.opened if c._store is not None]


@pytest.fixture
def client_spy(monkeypatch: pytest.MonkeyPatch) -> ClientSpy:
    """Watches every StorageClient: which opened a store, which were closed (both still run for real)."""
    from fedml_storage import StorageClient

    spy = ClientSpy()
    real_catalog, real_close = StorageClient._catalog, StorageClient.close

    def catalog(self: StorageClient):
        result = real_catalog(self)
        if not any(c is self for c in spy.opened):
            spy.opened.append(self)
        return result

    def close(self: StorageClient) -> None:
        spy.closed.append(self)
        real_close(self)

    monkeypatch.setattr(StorageClient, "_catalog", catalog)
    monkeypatch.setattr(StorageClient, "close", close)
    return spy
