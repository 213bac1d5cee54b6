"""The core's lines in a Prefect run's log when the work runs on threads the task did not start itself (s3transfer's,
a ranged download's), when tasks of one flow run at once, and next to a handler of the user's own (helper-107)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from prefect import flow, task, unmapped

from prefect_tasks import FedMLStorage, aupload_data, download_data, run_log, upload_data
from tests.conftest import TEST_API_KEY
from tests.cutting_proxy import CuttingProxy

from .conftest import run_logs

MiB = 1024 * 1024


def _logs_by_task(flow_run_id) -> list[tuple[str, str]]:
    """(task run name, message) of each line a flow run logged to the API ("None" for the flow's own), once every
    task run is known by the name its task_run_name gives it (not "fedml-upload-5d0", which it started with)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()

    async def read() -> list[tuple[str, str]]:
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            wanted = {entry.task_run_id for entry in logs} - {None}
            for _ in range(100):  # task runs reach the API as events: a moment after their logs, at times
                runs = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
                names = {r.id: r.name for r in runs}
                if wanted <= names.keys() and not [n for n in names.values() if n.startswith("fedml-")]:
                    break
                await asyncio.sleep(0.1)
            return [(names.get(entry.task_run_id, str(entry.task_run_id)), entry.message) for entry in logs]

    return asyncio.run(read())


def test_retries_of_upload_requests_and_download_ranges_are_noted_in_the_runs_log(
        s3_bucket: str, moto_proxy: CuttingProxy, tmp_path: Path) -> None:
    """Those requests run on s3transfer's threads and on the range pool's, which did not carry the task's context:
    their notes were dropped, never in the run's log nor on the console."""
    data = os.urandom(3 * MiB)
    (tmp_path / "blob.bin").write_bytes(data)
    block = FedMLStorage(service="S3", bucket=s3_bucket, endpoint_url=moto_proxy.endpoint, region="us-east-1",
                         api_key=TEST_API_KEY, download_threshold=MiB, download_part_size=MiB, concurrency=4)
    for verb in ("PUT", "GET"):
        moto_proxy.answer(f"{verb} /{s3_bucket}/default/data/".encode(), "503 Slow Down", "SlowDown",
                          "Please reduce your request rate.", times=1)

    @flow
    def round_trip() -> str:
        upload_data(str(tmp_path / "blob.bin"), storage=block)
        return download_data("blob.bin", str(tmp_path / "out"), storage=block)

    state = round_trip(return_state=True)
    assert state.is_completed(), state
    assert (tmp_path / "out" / "blob.bin").read_bytes() == data
    notes = [m for m in run_logs(state.state_details.flow_run_id) if "asking again" in m]
    said = f"{moto_proxy.endpoint}/{s3_bucket} answered SlowDown (503) to"
    assert [m.split(": asking again")[0] for m in notes] == [f"{said} PutObject", f"{said} GetObject"], notes


def test_tasks_running_at_once_each_say_their_own_lines_once(tmp_path: Path) -> None:
    """Mapped, submitted and async tasks of one flow, one of them calling a block's method: each line in the log of
    the task whose work it was, once (a run's filter taken off the core logger as it ended made another run's record
    skip that run's filter)."""
    trees = []
    for i in range(8):
        tree = tmp_path / f"t{i}"
        tree.mkdir()
        for j in range(30):
            (tree / f"f{j}.txt").write_text(str(j))
        os.mkfifo(tree / f"pipe{i}")
        trees.append(tree)
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))

    @task
    def nested(path: str) -> str:
        return block.upload(path, f"n-{Path(path).name}")["uri"]

    @flow
    async def many() -> None:
        futures = upload_data.map([str(t) for t in trees[:4]], storage=unmapped(block))
        submitted = nested.submit(str(trees[4]))
        await asyncio.gather(*(aupload_data(str(t), storage=block) for t in trees[5:]))
        futures.wait()
        submitted.wait()

    state = asyncio.run(many(return_state=True))
    assert state.is_completed(), state
    logs = _logs_by_task(state.state_details.flow_run_id)
    for i, tree in enumerate(trees):
        said = [(name, m) for name, m in logs if m.startswith(f"leaving out {tree / f'pipe{i}'}")]
        by = "nested-" if i == 4 else f"upload t{i}"
        assert len(said) == 1 and said[0][0] and said[0][0].startswith(by), (i, said)
    assert logging.getLogger("fedml_storage").level == logging.NOTSET and run_log._LEVEL._runs == 0


def test_a_handler_of_the_users_own_on_the_core_logger_still_gets_its_lines(tmp_path: Path) -> None:
    """While a task ran, the core's lines went only to the run's log: a handler the user had put on the
    "fedml_storage" logger (a file of their own) got none of them."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.csv").write_text("a,b\n")
    os.mkfifo(tree / "pipe")
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))

    class Mine(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    core, mine = logging.getLogger("fedml_storage"), Mine()
    core.addHandler(mine)
    core.setLevel(logging.INFO)
    try:
        @flow
        def upload() -> str:
            return upload_data(str(tree), storage=block)

        state = upload(return_state=True)
    finally:
        core.removeHandler(mine)
        core.setLevel(logging.NOTSET)
    assert state.is_completed(), state
    line = f"leaving out {tree / 'pipe'}: neither a file nor a folder"
    assert mine.lines.count(line) == 1, mine.lines
    assert run_logs(state.state_details.flow_run_id).count(line) == 1


def test_a_filter_the_user_adds_to_the_core_logger_after_a_first_run_still_applies(tmp_path: Path) -> None:
    """The one forwarding filter is added at a process's first run: a filter the user added later (a redaction)
    came after it, and logging never asked it about a line forwarded to a run's log (helper-108)."""
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))

    class Masking(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg, record.args = record.getMessage().replace("secret-project", "<masked>"), None
            return "drop-me" not in record.msg

    def leaving_out(n: int) -> list[str]:
        tree = tmp_path / f"secret-project-{n}"
        tree.mkdir()
        (tree / "a.txt").write_text("a")
        os.mkfifo(tree / "pipe")
        os.mkfifo(tree / "drop-me")

        @flow
        def upload() -> None:
            upload_data(str(tree), storage=block)

        state = upload(return_state=True)
        assert state.is_completed(), state
        return [m for m in run_logs(state.state_details.flow_run_id) if m.startswith("leaving out")]

    assert len(leaving_out(1)) == 2  # a first run in this process (a worker serving flows, a notebook)
    core, masking = logging.getLogger("fedml_storage"), Masking()
    core.addFilter(masking)
    try:
        said = leaving_out(2)
    finally:
        core.removeFilter(masking)
    assert said == [f"leaving out {tmp_path / '<masked>-2' / 'pipe'}: neither a file nor a folder"], said
    assert core.filters.count(run_log._FORWARDING) == 1


def test_a_run_ending_while_another_runs_line_is_on_its_way_loses_nothing(monkeypatch) -> None:
    """logging walks a logger's live list of filters: a run's filter taken off the core logger as that run ended
    made the walk skip the filter after it, and another run's line went to the console, not to that run's log. The
    end of run A is made to fall inside the walk for run B's line."""
    import threading

    core = logging.getLogger("fedml_storage")
    said: dict[str, list[str]] = {"a": [], "b": []}

    class Into(logging.Handler):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

        def emit(self, record: logging.LogRecord) -> None:
            said[self.key].append(record.getMessage())

    run_loggers = []
    for key in ("a", "b"):
        run_loggers.append(logging.getLogger(f"tests.run-{key}"))
        run_loggers[-1].addHandler(Into(key))
        run_loggers[-1].propagate = False
        run_loggers[-1].setLevel(logging.INFO)  # as Prefect's run loggers
    run_for = {"a": run_loggers[0], "b": run_loggers[1]}
    monkeypatch.setattr(run_log, "in_run", lambda: True)
    monkeypatch.setattr(run_log, "run_logger", lambda: run_for[threading.current_thread().name])
    a_in, a_end, a_out = threading.Event(), threading.Event(), threading.Event()

    def run_a() -> None:
        with run_log.core_lines_in_run_log({}):
            a_in.set()
            a_end.wait(10)
        a_out.set()

    class EndsRunA(logging.Filter):  # between run A's filter and run B's, where there is one each
        def filter(self, record: logging.LogRecord) -> bool:
            a_end.set()
            a_out.wait(10)
            return True

    def run_b() -> None:
        with run_log.core_lines_in_run_log({}):
            core.info("run b's line")

    first = threading.Thread(target=run_a, name="a")
    first.start()
    assert a_in.wait(10)
    ends_a = EndsRunA()
    core.addFilter(ends_a)
    try:
        second = threading.Thread(target=run_b, name="b")
        second.start()
        second.join(20)
        a_end.set()
        first.join(20)
    finally:
        core.removeFilter(ends_a)
        for logger in run_loggers:
            logger.handlers.clear()
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
    assert said == {"a": [], "b": ["run b's line"]}
