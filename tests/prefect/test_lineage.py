"""Real Prefect flow runs: the upload and download task runs carry the fedml:// asset lineage themselves."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from prefect import flow
from prefect.assets import materialize
from prefect.context import AssetContext

from prefect_tasks import download_data, upload_data
from tests.prefect.conftest import task_run_names


def _dir(root: Path, name: str) -> str:
    (root / name).mkdir()
    (root / name / "x.txt").write_text(name)
    return str(root / name)


@materialize("file://tmp/report", task_run_name="report")
def report(*upstream: object) -> list[str]:
    """What a user's materialising task sees upstream."""
    return sorted(a.key for a in AssetContext.get().upstream_assets)


def test_downstream_materialize_sees_the_fedml_asset_with_no_extra_task_run(tmp_path: Path, emitted: list) -> None:
    src = _dir(tmp_path, "lin1")

    @flow
    def lineage() -> tuple[list[str], list[str]]:
        up = upload_data(src)
        path = download_data("lin1", dest_path=str(tmp_path / "out"))  # takes nothing from the upload
        return report(up), report.with_options(task_run_name="report-download")(path)

    state = lineage(return_state=True)
    after_upload, after_download = state.result()
    assert after_upload == ["fedml://default/lin1"]
    assert after_download == ["fedml://default/lin1"]
    # the upload's own run materialised the asset: no nested 'materialize ...' task run
    assert task_run_names(state.state_details.flow_run_id) == ["download lin1", "report", "report-download",
                                                                "upload lin1"]
    done = [(key, roles) for event, key, roles in emitted if event == "prefect.asset.materialization.succeeded"]
    assert ("fedml://default/lin1", {"asset-materialized-by": ["fedml-storage"]}) in done
    assert [roles["asset"] for key, roles in done if key == "file://tmp/report"] == [["fedml://default/lin1"]] * 2


def test_mapped_uploads_materialise_one_asset_each_in_their_own_runs(tmp_path: Path, emitted: list) -> None:
    paths = [_dir(tmp_path, "m1"), _dir(tmp_path, "café")]

    @flow
    def mapped() -> list[list[str]]:
        ups = upload_data.map(paths)
        return [report(up) for up in ups]

    state = mapped(return_state=True)
    state.result()
    assert task_run_names(state.state_details.flow_run_id) == ["report", "report", "upload café", "upload m1"]
    done = sorted(key for event, key, _ in emitted if event == "prefect.asset.materialization.succeeded"
                  and key.startswith("fedml://"))
    assert done == ["fedml://default/café", "fedml://default/m1"]  # non-ASCII kept: Prefect refuses '%'


def test_a_failed_upload_is_a_failed_materialisation(tmp_path: Path, emitted: list) -> None:
    @flow
    def fails() -> None:
        upload_data.with_options(retries=0)(str(tmp_path / "gone"))

    assert fails(return_state=True).is_failed()
    assert ("prefect.asset.materialization.failed", "fedml://default/gone") in [(e, k) for e, k, _ in emitted]


def test_uploads_sharing_only_a_namespace_string_are_not_linked(tmp_path: Path, emitted: list) -> None:
    first, second = _dir(tmp_path, "n1a"), _dir(tmp_path, "n1c")
    team = "".join(["te", "am"])  # one string object, passed to both calls as a user's variable would be

    @flow
    def two_uploads() -> None:
        upload_data(first, namespace=team, service="LOCAL")
        upload_data(second, namespace=team, service="LOCAL")

    two_uploads()
    done = {key: roles for event, key, roles in emitted if event == "prefect.asset.materialization.succeeded"}
    assert set(done) == {"fedml://team/n1a", "fedml://team/n1c"}
    assert "asset" not in done["fedml://team/n1c"], done  # no upstream: it read nothing the first one made


def test_a_result_key_a_later_task_also_uses_does_not_link_them(tmp_path: Path, emitted: list) -> None:
    first, second = _dir(tmp_path, "k1"), _dir(tmp_path, "k2")

    @flow
    def two_uploads() -> None:
        upload_data(first)
        upload_data(second, metadata={"version": "2"})  # "version" is also a key of the first upload's result

    two_uploads()
    done = {key: roles for event, key, roles in emitted if event == "prefect.asset.materialization.succeeded"}
    assert "asset" not in done["fedml://default/k2"], done


def test_an_upload_inside_a_users_materialize_keeps_its_by(tmp_path: Path, emitted: list) -> None:
    src = _dir(tmp_path, "by1")

    @materialize("file://tmp/by-report", by="dbt")
    def build() -> None:
        upload_data.fn(src)  # the upload's body runs in the user's own materialising task

    @flow
    def wrapped() -> None:
        build()

    wrapped()
    done = {key: roles for event, key, roles in emitted if event == "prefect.asset.materialization.succeeded"}
    assert done["fedml://default/by1"].get("asset-materialized-by") == ["dbt"], done


def test_a_one_character_name_a_later_task_also_uses_does_not_link_them(tmp_path: Path, emitted: list) -> None:
    first, second = _dir(tmp_path, "src1"), _dir(tmp_path, "src2")

    @flow
    def two_uploads() -> None:
        upload_data(first, name="x")  # CPython shares one-character strings: "x" is one object everywhere
        upload_data(second, name="y", description="x")

    two_uploads()
    done = {key: roles for event, key, roles in emitted if event == "prefect.asset.materialization.succeeded"}
    assert set(done) == {"fedml://default/x", "fedml://default/y"}
    assert "asset" not in done["fedml://default/y"], done


def test_objects_made_after_a_dropped_result_are_not_linked_to_it(tmp_path: Path, emitted: list) -> None:
    src = _dir(tmp_path, "drop1")

    @flow
    def drops() -> list[list[str]]:
        upload_data(src)  # its result is dropped at once
        seen = []
        for _ in range(10):  # Prefect lets go of it a little later; new objects could then take its ids
            time.sleep(0.25)
            gc.collect()
            made = [[str(i), {"n": str(i)}] for i in range(5000)]
            seen.append(report.with_options(task_run_name="probe")(made))
        return seen

    assert drops() == [[]] * 10


def test_an_unchanged_upload_says_so_in_its_materialization(tmp_path: Path, emitted: list) -> None:
    """Both runs emitted the same payload: a deployment triggered on the asset retrained on every no-op upload."""
    src = _dir(tmp_path, "same")

    @flow
    def twice() -> None:
        upload_data(src)
        upload_data(src)

    twice()
    payloads = [p for (event, key, _), p in zip(emitted, emitted.payloads)
                if event == "prefect.asset.materialization.succeeded" and key == "fedml://default/same"]
    assert [p.get("skipped") for p in payloads] == [False, True], payloads
    assert payloads[0]["version"] == payloads[1]["version"]
