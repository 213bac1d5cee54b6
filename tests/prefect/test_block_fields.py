"""The FedMLStorage block's own fields (unknown ones refused, any case taken, the api_key a secret however it is set)
and its delete, which leaves Prefect's own alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_tasks import FedMLStorage
from tests.conftest import TEST_API_KEY

SECRET = TEST_API_KEY.split(":", 1)[1]


@pytest.mark.parametrize("fields", [{"keep_version": 5}, {"region_name": "eu-west-1"},
                                    {"aws_secret_access_key": "typo-s3cr3t-XYZ"}])
def test_a_field_the_block_does_not_have_is_refused_not_dropped(fields: dict) -> None:
    """Prefect's blocks take any keyword and drop it on save; a secret under another name showed among a flow's
    parameters."""
    with pytest.raises(ValueError) as refused:
        FedMLStorage(service="S3", bucket="b", **fields)
    said = str(refused.value)
    assert f"FedMLStorage has no field {next(iter(fields))!r}" in said and "typo-s3cr3t" not in said
    assert ("did you mean 'keep_versions'" in said) == ("keep_version" in fields)
    assert ("the key pair goes in api_key" in said) == ("aws_secret_access_key" in fields)


def test_an_api_key_assigned_later_is_a_secret_too() -> None:
    block = FedMLStorage(service="LOCAL")
    block.api_key = TEST_API_KEY
    assert SECRET not in repr(block) and SECRET not in block.model_dump_json()
    assert block.settings()["api_key"] == TEST_API_KEY and block.list() == []  # AttributeError before
    with pytest.raises(ValueError):
        block.api_key = "no-colon-s3cr3t"


def test_the_block_deletes_datasets_with_delete_data_and_leaves_prefects_delete_alone(tmp_path: Path) -> None:
    """The block's own `delete(name)` hid Prefect's, which removes a saved block document."""
    (tmp_path / "f.txt").write_text("x")
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    block.save("fedml-to-remove", overwrite=True)
    block.upload(str(tmp_path / "f.txt"))
    with pytest.raises(TypeError, match=r"To remove a dataset call storage.delete_data\(name\)"):
        block.delete("fedml-to-remove")  # on an instance it would have removed the saved block named so
    with pytest.raises(TypeError, match="delete_data"):
        block.adelete("f.txt")
    assert FedMLStorage.load("fedml-to-remove", _sync=True).local_root == str(tmp_path / "store")
    assert block.delete_data("f.txt") is True
    FedMLStorage.delete("fedml-to-remove", _sync=True)
    with pytest.raises(ValueError, match="Unable to find block document named fedml-to-remove"):
        FedMLStorage.load("fedml-to-remove", _sync=True)


def test_block_fields_take_any_case_and_blank_is_unset() -> None:
    block = FedMLStorage(service=" s3", compression="DEFLATED", checksum_calculation="When_Required")
    assert (block.service, block.compression, block.checksum_calculation) == ("S3", "deflated", "when_required")
    assert FedMLStorage(service="").service is None
    block = FedMLStorage(service="LOCAL", namespace="team-a")
    with block.client(namespace="", service=" ") as client:  # a blank task argument leaves the block's value
        assert (client.settings.namespace, client.settings.service) == ("team-a", "LOCAL")


def test_block_sizes_take_a_unit_as_the_core_does() -> None:
    """'64MiB' was refused as "Input should be a valid integer", which the settings table and a connection take."""
    block = FedMLStorage(service="LOCAL", part_size="64MiB", download_threshold=" 2GiB ", stream_min_rate="128 MiB/s",
                         download_part_size=8388608)
    assert (block.part_size, block.download_threshold, block.stream_min_rate, block.download_part_size) == (
        64 << 20, 2 << 30, 128 << 20, 8 << 20)
    with block.client() as client:
        assert (client.settings.part_size, client.settings.download_threshold) == (64 << 20, 2 << 30)
    with pytest.raises(ValueError, match="give a whole number of bytes, or a size with a unit, e.g. 16MiB"):
        FedMLStorage(part_size="lots")


def test_a_blocks_r2_account_beats_the_workers_endpoint_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's FEDML_STORAGE_ENDPOINT_URL (its MinIO) took the block's R2 calls."""
    monkeypatch.setenv("FEDML_STORAGE_ENDPOINT_URL", "http://minio.internal:9000")
    block = FedMLStorage(service="R2", bucket="b", r2_account_id="a" * 32, api_key=TEST_API_KEY)
    with block.client() as client:
        assert client.settings.resolved_endpoint == f"https://{'a' * 32}.r2.cloudflarestorage.com"


def test_a_malformed_key_is_kept_out_of_the_error_and_of_result_storage(tmp_path: Path) -> None:
    """The error's str hid the key, but its details held it (errors()[0]["input"]), and Prefect pickles a failed
    run's exception into result storage: the whole key landed on disk."""
    import pickle

    from prefect import flow
    from pydantic import ValidationError

    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYzz"
    for bad in (f"'AKIAKEYID0001:{secret}'", f"AKIAKEYID0001{secret}"):
        with pytest.raises(ValidationError, match="api_key") as refused:
            FedMLStorage(service="S3", api_key=bad)
        assert secret not in repr(refused.value.errors()) and secret.encode() not in pickle.dumps(refused.value)
    with pytest.raises(ValidationError, match="no field 'region_name'") as refused:  # the whole input, key masked
        FedMLStorage(api_key=f"AKIAKEYID0001:{secret}", region_name="eu-west-1")
    assert secret.encode() not in pickle.dumps(refused.value)
    with pytest.raises(ValidationError, match="aws_secret_access_key") as refused:  # a secret by prefect-aws's name
        FedMLStorage(aws_secret_access_key=secret)
    assert secret.encode() not in pickle.dumps(refused.value)
    for given in ({"endpoint_url": f"http://AKIAKEYID0001:{secret}@minio:9000"}, {"credentials": f"ID:{secret}"},
                  {"passwd": secret}):  # a secret in a field whose name says nothing of it (helper-102)
        with pytest.raises(ValidationError) as refused:
            FedMLStorage(service="S3", bucket="b", **given)
        assert secret not in repr(refused.value.errors()) and secret.encode() not in pickle.dumps(refused.value)
    block = FedMLStorage(service="S3")
    with pytest.raises(ValidationError, match="api_key") as refused:  # set after the block was made
        block.api_key = f"'AKIAKEYID0001:{secret}'"
    assert secret.encode() not in pickle.dumps(refused.value)

    @flow
    def builds_a_block() -> None:
        FedMLStorage(service="S3", api_key=f"'AKIAKEYID0001:{secret}'")

    state = builds_a_block(return_state=True)
    failure = state.result(raise_on_failure=False)  # what Prefect persists of the failed run
    assert state.is_failed() and isinstance(failure, ValidationError) and "api_key" in str(failure)
    assert secret.encode() not in pickle.dumps(failure)


def test_a_block_saved_by_a_newer_release_loads_where_its_new_settings_are_unset(tmp_path: Path) -> None:
    """Every save writes every field: a worker on an older release could load no block a newer one saved."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    block_id = FedMLStorage(service="LOCAL", local_root=str(tmp_path)).save("fedml-newer", overwrite=True)
    with get_client(sync_client=True) as client:  # what a newer release with one more setting would have saved
        client.update_block_document(block_id, BlockDocumentUpdate(data={"a_later_setting": None}))
    assert FedMLStorage.load("fedml-newer", _sync=True).local_root == str(tmp_path)
    with get_client(sync_client=True) as client:  # one it sets is not ignored: it might change where data goes
        client.update_block_document(block_id, BlockDocumentUpdate(data={"a_later_setting": "on"}))
    with pytest.raises(RuntimeError, match="failed validation"):
        FedMLStorage.load("fedml-newer", _sync=True)


def test_advice_names_the_block_and_the_tasks_not_python_calls(tmp_path: Path) -> None:
    """A block without a bucket was told to run configure(bucket=...) or pass bucket= to StorageClient; a missing
    name to call list_storage_objects()."""
    from fedml_storage import FedMLStorageError

    with pytest.raises(FedMLStorageError) as no_bucket:
        FedMLStorage(service="S3").list()
    said = str(no_bucket.value)
    assert "set bucket in the FedMLStorage block (or service LOCAL for the embedded store)" in said
    assert "StorageClient" not in said and "configure(" not in said
    with pytest.raises(FedMLStorageError) as missing:
        FedMLStorage(service="LOCAL", local_root=str(tmp_path)).get_metadata("nope")
    assert "list_data() (or a block's list()) shows what is stored" in str(missing.value)
    assert "list_storage_objects" not in str(missing.value)


def test_a_relative_path_in_a_block_is_refused(tmp_path: Path) -> None:
    """A flow run's working directory differs between runs: a relative local_root kept each run's datasets in a
    store of its own (helper-86)."""
    from fedml_storage import FedMLStorageError

    for fields in ({"local_root": "relstore"}, {"partial_dir": "partial", "local_root": str(tmp_path)}):
        with pytest.raises(FedMLStorageError, match="is relative: on a machine running the flow"):
            FedMLStorage(service="LOCAL", **fields).list()
    assert FedMLStorage(service="LOCAL", local_root=str(tmp_path)).list() == []
    assert FedMLStorage(service="LOCAL", local_root=f" {tmp_path}\n").list() == []  # as the settings take it
    assert not Path("relstore").exists()  # nothing made in the working directory


@pytest.mark.parametrize(("url", "said"), [
    ("http://AKIAIOSFODNN7EXAMPLE:s3cr3t-in-url@minio:9000", "must not hold credentials"),
    ("minio:9000", "must be an http:// or https:// URL"),
])
def test_an_endpoint_url_is_checked_when_the_block_is_made(url: str, said: str) -> None:
    """A saved block's fields show in Prefect's UI: a user:secret@ part was kept there, refused only at the first
    task (helper-89)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=said) as refused:
        FedMLStorage(service="S3", bucket="b", endpoint_url=url)
    assert "s3cr3t" not in str(refused.value)
    assert FedMLStorage(service="S3", bucket="b", endpoint_url=" http://minio:9000 ").endpoint_url


def test_the_block_cleans_up_what_interrupted_uploads_left(tmp_path: Path) -> None:
    """Warnings say "run cleanup() later"; from Prefect that took the block's undocumented client() (helper-89)."""
    block = FedMLStorage(service="LOCAL", local_root=str(tmp_path / "store"))
    (tmp_path / "a.txt").write_text("a")
    assert block.upload(str(tmp_path / "a.txt"))["name"] == "a.txt"
    left = tmp_path / "store" / "default" / "data" / "killed" / "20261126T000000000000Z-0badc0de" / "killed.zip"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"partial")  # never published
    assert block.cleanup(older_than_seconds=3600)["orphaned_objects_removed"] == 0  # in its grace period
    assert block.cleanup(older_than_seconds=0)["orphaned_objects_removed"] == 1 and not left.exists()
    assert [d["dataName"] for d in block.list()] == ["a.txt"]
