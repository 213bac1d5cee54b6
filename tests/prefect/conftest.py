"""One Prefect test server for the whole session, isolated from the user's Prefect home."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_TEST_MODE", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ.update(PREFECT_HOME=str(home), PREFECT_TEST_MODE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class _Emitted(list):
    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[dict] = []


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every Prefect event emitted during the test (name, resource id, related ids by role), still sent for real;
    the list's `payloads` holds each event's payload."""
    import prefect.events

    seen = _Emitted()
    real = prefect.events.emit_event

    def record(event: str, resource: dict, related: list | None = None, **kwargs):
        roles: dict[str, list[str]] = {}
        for r in related or []:
            roles.setdefault(r["prefect.resource.role"], []).append(r["prefect.resource.id"])
        seen.append((event, resource["prefect.resource.id"], roles))
        seen.payloads.append(kwargs.get("payload") or {})
        return real(event=event, resource=resource, related=related, **kwargs)

    monkeypatch.setattr(prefect.events, "emit_event", record)
    return seen


def task_run_names(flow_run_id) -> list[str]:
    """The names of every task run of a flow run, sorted."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return sorted(r.name for r in runs)

    return asyncio.run(read())


def run_logs(flow_run_id) -> list[str]:
    """The messages a flow run logged to the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs go to the API in batches: send what is queued first

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return [entry.message for entry in logs]

    return asyncio.run(read())
