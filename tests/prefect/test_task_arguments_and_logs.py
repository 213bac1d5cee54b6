"""Task arguments (a wrong storage, a block's slug), the core's warnings in the run's log, artifact keys, task bodies
called outside a run: each through real flow runs on the test server."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
from prefect import flow

from fedml_storage import FedMLStorageError
from prefect_tasks import FedMLStorage, delete_data, list_data, upload_data
from prefect_tasks.tasks import _artifact_key

from .conftest import run_logs


def test_a_wrong_storage_argument_says_what_to_pass(tmp_path: Path) -> None:
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    block.save("fedml-by-slug", overwrite=True)
    (tmp_path / "a.txt").write_text("a")

    @flow
    def mapped_without_unmapped() -> None:
        for future in list_data.with_options(retries=0).map(storage=[block, {"service": "S3"}]):
            future.result()

    with pytest.raises(TypeError, match="storage must be a FedMLStorage block or a saved block's name, not a dict; "
                                        "with .map, pass storage=unmapped"):
        mapped_without_unmapped()

    @flow
    def by_slug() -> str:  # as the Prefect UI shows a saved block
        return upload_data(str(tmp_path / "a.txt"), storage="fedml-storage/fedml-by-slug")["service"]

    assert by_slug() == "LOCAL" and (tmp_path / "store" / "default" / "manifests" / "a.txt.json").exists()

    @flow
    def by_a_name_never_saved() -> None:
        upload_data.with_options(retries=0)(str(tmp_path / "a.txt"), storage="fedml-never-saved")

    with pytest.raises(ValueError, match="no FedMLStorage block named 'fedml-never-saved' is saved") as missing:
        by_a_name_never_saved()  # Prefect's own error came with its HTTP 404 chained: some 80 lines (helper-103)
    assert missing.value.__cause__ is None and missing.value.__suppress_context__


def test_the_cores_warnings_reach_the_runs_log(tmp_path: Path, caplog) -> None:
    """A damaged catalog entry that list skips was said only on the worker's stderr, never in Prefect's UI; then
    twice on the console (by the run's logger, and by the root logger Prefect sets up)."""
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    (tmp_path / "ok.txt").write_text("x")
    block.upload(str(tmp_path / "ok.txt"))
    (tmp_path / "store" / "default" / "manifests" / "bad.json").write_text("{not json")

    @flow
    def lists() -> list[str]:
        return [m["dataName"] for m in list_data(storage=block)]

    state = lists(return_state=True)
    assert state.result() == ["ok.txt"]
    logs = run_logs(state.state_details.flow_run_id)
    assert [m for m in logs if m.startswith("skipping 'bad'") and "delete_data('bad') removes it" in m], logs
    assert "listed 1 dataset(s): ok.txt" in logs  # the names, as Airflow's operator logs them (helper-103)
    with pytest.raises(FedMLStorageError, match=r"delete_data\('bad'\) removes it"):  # in Prefect's words (helper-103)
        block.get_metadata("bad")
    said_by = [r.name for r in caplog.records if r.getMessage().startswith("skipping 'bad'")]
    assert "fedml_storage" not in said_by and len(said_by) <= 1, said_by
    for data in (tmp_path / "store" / "default" / "data" / "ok.txt").rglob("ok.txt"):
        data.unlink()  # the stored data is lost: an unchanged upload sends it again, and says so

    @flow
    def uploads_again() -> bool:
        return upload_data(str(tmp_path / "ok.txt"), storage=block)["skipped"]

    state = uploads_again(return_state=True)
    assert state.result() is False
    logs = run_logs(state.state_details.flow_run_id)
    assert [m for m in logs if "stored data of 'ok.txt'" in m and "uploaded again" in m], logs


def test_warnings_from_the_cores_own_threads_reach_the_runs_log(tmp_path: Path, monkeypatch) -> None:
    """The zip writer runs in a thread of the core's: its warning (no room to spill the central directory) was
    forwarded by no handler keyed on the task's thread."""
    import tempfile

    import fedml_storage.zipformat as zipformat

    monkeypatch.setattr(zipformat, "_SPOOL_IN_MEMORY", 100)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(20):
        (tree / f"file-{i:03d}.txt").write_text(str(i))
    logs = _first_upload_logs(tree, tmp_path / "store")
    assert [m for m in logs if "central directory" in m and "temporary folder" in m], logs


def _first_upload_logs(tree: Path, store: Path) -> list[str]:
    """What a flow run that uploads `tree` for the first time (to a LOCAL store at `store`) logs."""
    block = FedMLStorage(service="LOCAL", local_root=str(store))

    @flow
    def up() -> bool:
        return upload_data(str(tree), storage=block)["skipped"]

    state = up(return_state=True)
    assert state.result() is False
    return run_logs(state.state_details.flow_run_id)


def test_outside_a_run_the_cores_warnings_are_said_once(tmp_path: Path, caplog) -> None:
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    (tmp_path / "store" / "default" / "manifests").mkdir(parents=True)
    (tmp_path / "store" / "default" / "manifests" / "bad.json").write_text("{not json")
    assert list_data.fn(storage=block) == []
    said = [r.name for r in caplog.records if r.getMessage().startswith("skipping 'bad'")]
    assert said == ["fedml_storage"], said  # not passed on to a run log that is not there


def test_artifact_keys_of_different_datasets_differ() -> None:
    """'my_data', 'My-Data' and 'my.data' all became fedml-upload-my-data; other scripts and long names collided;
    so did the same name in two namespaces (two teams' datasets in one artifact history)."""
    names = ["my_data", "My-Data", "my.data", "データ", "模型", "x" * 120, "x" * 119 + "y"]
    keys = [_artifact_key("fedml-upload", "default", n) for n in names]
    # another namespace is another dataset (and 'a-b' + 'c' is not 'a' + 'b-c'); so is another team's listing
    keys += [_artifact_key("fedml-upload", ns, n) for ns, n in (("team-a", "mnist"), ("a-b", "c"), ("a", "b-c"))]
    keys += [_artifact_key("fedml-storage-list", ns) for ns in ("default", "team-a", "Team_A")]
    assert len(set(keys)) == len(keys), keys
    assert all(len(k) <= 100 and k.replace("-", "").isalnum() and k == k.lower() for k in keys), keys
    assert _artifact_key("fedml-upload", "default", "mnist") == "fedml-upload-mnist"  # kept where nothing is lost
    assert _artifact_key("fedml-storage-list", "default") == "fedml-storage-list"
    assert _artifact_key("fedml-upload", "team-a", "mnist").startswith("fedml-upload-team-a-mnist-")


def test_a_task_body_called_outside_a_run_still_returns(tmp_path: Path) -> None:
    """`upload_data.fn(...)` uploaded, then raised MissingContextError from the run logger."""
    (tmp_path / "f.txt").write_text("x")
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor an artifact outside a run, which Prefect deprecates
        assert upload_data.fn(str(tmp_path / "f.txt"), storage=block)["name"] == "f.txt"
        assert [m["dataName"] for m in list_data.fn(storage=block)] == ["f.txt"]


def test_a_key_passed_in_the_wrong_argument_is_refused_and_never_shown(tmp_path: Path, monkeypatch) -> None:
    """The API takes api_key second; the tasks take a name, dest_path, block or flag there. A key passed so was
    stored as a dataset's name (in run names, artifacts, object keys) or echoed by Prefect's "block not found"
    (helper-89)."""
    from prefect import get_run_logger
    from prefect.context import get_run_context

    from prefect_tasks import delete_data, download_data, get_data_metadata

    from .conftest import task_run_names

    monkeypatch.setenv("FEDML_STORAGE_LOCAL_ROOT", str(tmp_path / "store"))
    key = "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    (tmp_path / "a.txt").write_text("a")
    calls = [lambda: upload_data.with_options(retries=0)(str(tmp_path / "a.txt"), key),
             lambda: download_data.with_options(retries=0)("a.txt", key),
             lambda: list_data.with_options(retries=0)(key),
             lambda: delete_data.with_options(retries=0)("a.txt", key),
             lambda: get_data_metadata.with_options(retries=0)("a.txt", key),
             lambda: delete_data.with_options(retries=0)(key)]

    @flow
    def ported_from_the_api() -> tuple[str, list[str]]:
        said = []
        for call in calls:
            try:
                call()
                said.append("accepted")
            except Exception as exc:
                said.append(f"{type(exc).__name__}: {exc}")
        get_run_logger().info("done")
        return str(get_run_context().flow_run.id), said

    run_id, said = ported_from_the_api()
    assert "accepted" not in said and key.split(":")[1] not in "\n".join(said), said
    seen = "\n".join([*task_run_names(run_id), *run_logs(run_id)])
    assert key.split(":")[1] not in seen and key.split(":")[0] not in seen, seen
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*AKIA*"))


def test_no_block_and_no_configuration_warns_that_data_stays_on_the_worker(isolated_home: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """Airflow's hook warned when no connection sent datasets to the worker's own disk; the Prefect tasks said
    nothing, and a retry logged no location at all (helper-103)."""
    (tmp_path / "ds.txt").write_text("x")

    @flow
    def uploads() -> str:
        return upload_data(str(tmp_path / "ds.txt"))["uri"]

    state = uploads(return_state=True)
    assert state.result().startswith("file://")
    warned = [m for m in run_logs(state.state_details.flow_run_id) if "No FedMLStorage block (storage=)" in m]
    assert len(warned) == 1 and "LOCAL store on this worker's disk" in warned[0], warned
    assert "Pass storage= a FedMLStorage block for a shared store" in warned[0]
    monkeypatch.setenv("FEDML_STORAGE_SERVICE", "LOCAL")  # kept there on purpose: nothing to warn of
    state = uploads(return_state=True)
    assert state.result().startswith("file://")
    assert not [m for m in run_logs(state.state_details.flow_run_id) if "No FedMLStorage block" in m]


def test_a_delete_of_a_name_not_stored_warns_in_the_runs_log(tmp_path: Path, caplog) -> None:
    """Its warning (which dataset was meant) came from a logger of the core's that the run's log did not take: it
    reached the worker's console only."""
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    (tmp_path / "model.safetensors").write_text("weights")
    block.upload(str(tmp_path / "model.safetensors"), "weights")

    @flow
    def clean() -> bool:
        return delete_data("weights", storage=block)

    state = clean(return_state=True)
    assert state.result() is False
    logs = run_logs(state.state_details.flow_run_id)
    assert [m for m in logs if m.startswith("'weights' was not stored, nothing was deleted (did you mean "
                                            "'weights.safetensors'?")], logs
    said_by = [r.name for r in caplog.records if r.getMessage().startswith("'weights' was not stored, nothing")]
    assert not [n for n in said_by if n.startswith("fedml_storage")], said_by  # said once on the console


def test_the_cores_notes_reach_the_runs_log_as_airflows_task_log(tmp_path: Path, caplog) -> None:
    """Only its warnings were passed on: its INFO lines (an item left out of an upload, a download going on from what
    an earlier one fetched) never reached a Prefect run's log, whose root logger stops INFO (helper-103)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data.csv").write_text("a,b\n")
    os.mkfifo(tree / "pipe")
    logs = _first_upload_logs(tree, tmp_path / "store")
    assert [m for m in logs if m == f"leaving out {tree / 'pipe'}: neither a file nor a folder"], logs
    said_by = [r.name for r in caplog.records if r.getMessage().startswith("leaving out")]
    assert not [n for n in said_by if n.startswith("fedml_storage")], said_by  # said once on the console
    assert logging.getLogger("fedml_storage").level == logging.NOTSET  # as it was


def test_a_blocks_methods_called_in_a_flow_say_the_cores_lines_in_its_log(tmp_path: Path) -> None:
    """They went to the worker's console only."""
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    (tmp_path / "model.safetensors").write_text("weights")
    block.upload(str(tmp_path / "model.safetensors"), "weights")

    @flow
    def clean() -> bool:
        return block.delete_data("weights")

    state = clean(return_state=True)
    assert state.result() is False
    assert [m for m in run_logs(state.state_details.flow_run_id) if m.startswith(
        "'weights' was not stored, nothing was deleted (did you mean 'weights.safetensors'?")]


def test_while_a_task_forwards_the_cores_lines_others_keep_the_cores_level(monkeypatch, caplog) -> None:
    """The core's logger lets INFO through while a run forwards its lines; lines of no run's work (another thread of
    the worker's) stay as quiet as they were."""
    import threading

    from prefect_tasks import run_log

    core = logging.getLogger("fedml_storage")
    run = logging.getLogger("tests.a-run")
    monkeypatch.setattr(run_log, "in_run", lambda: True)
    monkeypatch.setattr(run_log, "run_logger", lambda: run)
    caplog.set_level(logging.WARNING)  # Prefect's root level
    caplog.set_level(logging.INFO, logger="tests.a-run")
    with run_log.core_lines_in_run_log({}):
        core.info("the run's own")
        elsewhere = threading.Thread(target=core.info, args=("no run's",))
        elsewhere.start()
        elsewhere.join()
        core.warning("the run's warning")
    core.info("after the run")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("tests.a-run", "the run's own"), ("tests.a-run", "the run's warning")]
    assert core.level == logging.NOTSET and core.filters in ([], [run_log._FORWARDING])
