"""Assets and lineage of the operators and the hook, called in-process: outlets, inlets, aliases, hook lineage."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider.hook import FedMLStorageHook
from airflow_provider.operators import FedMLStorageDownloadOperator, FedMLStorageUploadOperator
from fedml_storage import StorageClient

from .conftest import task_context

pytestmark = pytest.mark.usefixtures("unit_test_mode")


def test_a_namespace_set_only_in_the_connection_reaches_outlets_and_inlets(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "extra": {"service": "LOCAL", "namespace": "team-a"}}))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("x")
    unaware = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "ds"))
    assert [type(a) for a in unaware.outlets] == [AssetAlias]  # the DAG file does not tell the namespace
    ctx = task_context()
    result = unaware.execute(ctx)
    assert ctx["outlet_events"][unaware.outlets[0]].added[0][0] == "fedml://team-a/ds"  # what was stored
    assert [m.dataName for m in StorageClient(service="LOCAL", namespace="team-a").list().data] == ["ds"]
    down = FedMLStorageDownloadOperator(task_id="down", name="ds", dest_path=str(tmp_path / "o"))
    assert down.inlets == []  # never the wrong fedml://default/ds
    assert down.execute(task_context()).endswith("ds")
    aware = FedMLStorageDownloadOperator(task_id="down2", name="ds", namespace="team-a", dest_path=str(tmp_path))
    assert [a.uri for a in aware.inlets] == ["fedml://team-a/ds"]
    templated = FedMLStorageUploadOperator(task_id="up2", data_path=str(tmp_path / "ds"), namespace="{{ params.ns }}")
    assert [type(a) for a in templated.outlets] == [AssetAlias]

    # outlets declared by hand for another namespace are refused before anything is published
    wrong = FedMLStorageUploadOperator(task_id="up3", data_path=str(tmp_path / "ds"), name="other",
                                       outlets=[Asset("fedml://default/other")])
    ctx = task_context()
    with pytest.raises(AirflowFailException, match="nothing was uploaded. Make them agree: pass namespace="):
        wrong.execute(ctx)
    assert not ctx["outlet_events"]
    assert [m.dataName for m in StorageClient(service="LOCAL", namespace="team-a").list().data] == ["ds"]
    assert result["name"] == "ds"


def test_user_aliases_get_the_event_and_mapped_uploads_declare_one(tmp_path: Path) -> None:
    from airflow.sdk import DAG

    (tmp_path / "f.txt").write_text("x")
    mine = AssetAlias("my-alias")
    op = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt"), outlets=[mine])
    ctx = task_context()
    result = op.execute(ctx)
    assert ctx["outlet_events"][mine].added == [
        ("fedml://default/f.txt", {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")})]
    with DAG("mapping_dag", schedule=None):
        mapped = FedMLStorageUploadOperator.partial(task_id="up").expand(data_path=["a", "b"])
        chosen = FedMLStorageUploadOperator.partial(task_id="up2", outlets=[mine]).expand(data_path=["a"])
    assert mapped.outlets == [AssetAlias("fedml-storage-upload:mapping_dag.up")]
    assert chosen.outlets == [mine]


def test_a_user_alias_beside_the_declared_asset_gets_the_event_too(tmp_path: Path, caplog, capfd) -> None:
    (tmp_path / "f.txt").write_text("x")
    mine = AssetAlias("my-alias")
    declared = Asset("fedml://default/f.txt")
    op = FedMLStorageUploadOperator(task_id="up", data_path=str(tmp_path / "f.txt"), namespace="default",
                                    outlets=[declared, mine])
    ctx = task_context()
    result = op.execute(ctx)
    extra = {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")}
    assert ctx["outlet_events"][declared].extra == extra
    assert ctx["outlet_events"][mine].added == [("fedml://default/f.txt", extra)]
    bare = FedMLStorageUploadOperator(task_id="bare", data_path=str(tmp_path / "f.txt"))
    bare.outlets = []  # as a mapped upload made outside any DAG: nothing to carry the event
    capfd.readouterr()
    with caplog.at_level(logging.WARNING):
        bare.execute(task_context())
    logged = caplog.text + "".join(capfd.readouterr())  # Airflow's task loggers write to the console
    assert "no outlet of this task carries an event for fedml://default/f.txt" in logged


def test_lineage_that_fails_never_fails_a_finished_transfer(tmp_path: Path, monkeypatch, caplog, capfd) -> None:
    import airflow_provider.hook as hook_module

    class Refusing:
        def add_output_asset(self, **kwargs):
            raise ValueError("Asset name cannot exceed 1500 characters")

        add_input_asset = add_output_asset

    monkeypatch.setattr(hook_module, "get_hook_lineage_collector", Refusing)
    (tmp_path / "f.txt").write_text("kept")
    with caplog.at_level(logging.WARNING), FedMLStorageHook() as hook:
        assert hook.upload(str(tmp_path / "f.txt"))["name"] == "f.txt"
        assert Path(hook.download("f.txt", str(tmp_path / "out"))).read_text() == "kept"
    logged = caplog.text + "".join(capfd.readouterr())
    said = [line for line in logged.splitlines() if "not reporting lineage" in line]
    assert len(said) == 2 and all("1500 characters" in line for line in said), logged


def test_outlet_follows_the_core_naming(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_FEDML_STORAGE_DEFAULT", json.dumps(
        {"conn_type": "fedml_storage", "extra": {"service": "LOCAL"}}))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    static = FedMLStorageUploadOperator(task_id="up", data_path=str(model), name="weights.bin", namespace="default")
    assert [a.uri for a in static.outlets] == ["fedml://default/weights.bin"]  # a name with an extension is kept
    assert [a.uri for a in FedMLStorageUploadOperator(task_id="up0", data_path=str(model),
                                                      namespace="default").outlets] == ["fedml://default/model.pt"]
    ctx = task_context()
    assert static.execute(ctx)["name"] == "weights.bin"
    assert [a.uri for a in ctx["outlet_events"]] == ["fedml://default/weights.bin"]

    # name="weights" for a path ending in ".pt": a file gains the extension, a folder (here one made only at run
    # time, "v1.0") does not. The DAG file does not tell which, so the run emits the Asset through the task's alias
    upload = FedMLStorageUploadOperator(task_id="up1", data_path=str(model), name="weights")
    run_dir = tmp_path / "runs" / "v1.0"
    later = FedMLStorageUploadOperator(task_id="up2", data_path=str(run_dir), name="mnist")
    late_file = tmp_path / "late.pt"
    guessed = FedMLStorageUploadOperator(task_id="up3", data_path=str(late_file), name="late-weights")
    for op in (upload, later, guessed):
        assert [type(a) for a in op.outlets] == [AssetAlias]
        assert op.outlets[0].name == f"fedml-storage-upload:{op.dag_id}.{op.task_id}"
    run_dir.mkdir(parents=True)
    (run_dir / "a.txt").write_text("x")
    late_file.write_bytes(b"late")
    for op, stored in ((upload, "weights.pt"), (later, "mnist"), (guessed, "late-weights.pt")):
        ctx = task_context()
        result = op.execute(ctx)
        assert result["name"] == stored
        assert ctx["outlet_events"][op.outlets[0]].added == [
            (f"fedml://default/{stored}", {k: result[k] for k in ("version", "sha256", "size", "skipped", "uri")})]

    # outlets declared by hand that the upload would not write are refused before anything is published
    wrong = FedMLStorageUploadOperator(task_id="up4", data_path=str(late_file), name="other",
                                       outlets=[Asset("fedml://default/other")])
    with pytest.raises(AirflowFailException, match="nothing was uploaded.*name='weights' for model.pt"):
        wrong.execute(task_context())
    assert [m.dataName for m in StorageClient(service="LOCAL").list().data] == ["late-weights.pt", "mnist",
                                                                                "weights.bin", "weights.pt"]


def test_uploads_and_downloads_report_hook_lineage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import lineage, plugins_manager

    monkeypatch.setattr(plugins_manager, "get_hook_lineage_readers_plugins", lambda: [lineage.HookLineageReader])
    lineage.get_hook_lineage_collector.cache_clear()  # a real collector, as when a lineage reader is installed
    try:
        (tmp_path / "seen.csv").write_text("a\n")
        hook = FedMLStorageHook(namespace="team-b")
        hook.upload(str(tmp_path / "seen.csv"))
        hook.download("seen.csv", str(tmp_path / "o"))
        collected = lineage.get_hook_lineage_collector().collected_assets
    finally:
        lineage.get_hook_lineage_collector.cache_clear()
    assert [i.asset.uri for i in collected.outputs] == ["fedml://team-b/seen.csv"]
    assert [i.asset.uri for i in collected.inputs] == ["fedml://team-b/seen.csv"]
    assert collected.outputs[0].context is hook
