"""The name an upload stores under, told beforehand: from the disk, or (on_disk=False) from the strings alone."""

from __future__ import annotations

from pathlib import Path

from fedml_storage import StorageClient, planned_name

from .conftest import Store


def test_a_planned_name_is_the_name_the_upload_stores_under(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_text("weights")
    (tmp_path / "run.d").mkdir()
    (tmp_path / "run.d" / "a.txt").write_text("a")
    client = StorageClient(service="LOCAL")
    for path, name, planned in ((tmp_path / "model.pt", None, "model.pt"), (tmp_path / "model.pt", "w", "w.pt"),
                                (tmp_path / "run.d", None, "run.d"), (tmp_path / "run.d", "run", "run")):
        assert planned_name(path, name) == planned == client.upload(str(path), name).unwrap().name


def test_from_the_strings_alone_only_what_they_tell(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_text("weights")
    (tmp_path / "run.d").mkdir()
    # a name without an extension for a path with one: a file gains it, a folder does not; only the data tells
    assert planned_name(tmp_path / "model.pt", "w", on_disk=False) is None
    assert planned_name(tmp_path / "run.d", "run", on_disk=False) is None
    assert planned_name(tmp_path / "model.pt", on_disk=False) == "model.pt"
    assert planned_name(tmp_path / "not-there.pt", "w.bin", on_disk=False) == "w.bin"
    assert planned_name(tmp_path / "data", "w", on_disk=False) == "w"
    assert planned_name(".", on_disk=False) is None and planned_name("..", on_disk=False) is None
    assert planned_name(".") == Path.cwd().name  # on the disk, "." is the folder it runs in
    assert planned_name(tmp_path / "x", "../y", on_disk=False) is None  # a name the upload refuses


def test_a_delete_of_a_name_missing_its_extension_says_which_was_meant(tmp_path: Path, caplog) -> None:
    """With missing_ok it succeeded quietly (INFO, no hint), and a clean-up step left the dataset it meant."""
    import logging

    (tmp_path / "model.safetensors").write_text("weights")
    client = StorageClient(service="LOCAL")
    assert client.upload(str(tmp_path / "model.safetensors"), "weights").unwrap().name == "weights.safetensors"
    with caplog.at_level(logging.WARNING, logger="fedml_storage"):
        response = client.delete("weights", missing_ok=True)
    assert response.ok and response.data is False
    assert "did you mean 'weights.safetensors'?" in response.message
    assert [r.levelname for r in caplog.records if "did you mean 'weights.safetensors'" in r.getMessage()] == [
        "WARNING"]
    assert client.get_metadata("weights.safetensors").ok  # still there, as asked
    caplog.clear()
    assert client.delete("gone", missing_ok=True).data is False and not caplog.records  # a retry's delete: quiet


def test_the_hint_for_a_folder_named_with_a_dot_gives_no_file_reason(tmp_path: Path) -> None:
    """A folder stored as 'm.zip' was hinted at with "a file keeps its extension": its name is as it was given."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("x")
    client = StorageClient(service="LOCAL")
    assert client.upload(str(tmp_path / "folder"), "m.zip").ok
    assert "(did you mean 'm.zip'?)" in client.get_metadata("m").message
    (tmp_path / "m.csv").write_text("a,b")
    assert client.upload(str(tmp_path / "m.csv")).ok
    assert "(did you mean 'm.csv' or 'm.zip'? a file keeps its extension)" in client.get_metadata("m").message


def test_from_the_strings_alone_what_is_no_path_or_name_tells_nothing() -> None:
    for path, name in ((b"data", None), (7, None), ("data", 7), ("data", ["a"])):
        assert planned_name(path, name, on_disk=False) is None and planned_name(path, name) is None


def test_a_retried_delete_that_finds_only_data_says_so(store, tmp_path: Path, caplog) -> None:
    """A delete whose answer was lost after the catalog entry went: its retry said "not stored: nothing to delete"
    and the data stayed, unsaid (helper-89)."""
    import logging

    (tmp_path / "amb.csv").write_text("a,b\n")
    client = store.client()
    assert client.upload(str(tmp_path / "amb.csv")).ok
    catalog = client._catalog()
    catalog.store.delete(catalog.manifest_key("amb.csv"))  # the first try's delete of the entry landed
    with caplog.at_level(logging.WARNING, logger="fedml_storage"):
        retry = client.delete("amb.csv", missing_ok=True)
    assert retry.ok and retry.data is False and "data stored under that name remains" in retry.message
    assert [r.levelname for r in caplog.records if "cleanup() removes it" in r.getMessage()] == ["WARNING"]
    assert client.cleanup(older_than_seconds=0).data["orphaned_objects_removed"] == 1
    caplog.clear()
    assert client.delete("amb.csv", missing_ok=True).data is False  # nothing left: quiet
    assert not [r for r in caplog.records if r.name.startswith("fedml_storage")]


def test_a_name_stored_in_another_unicode_form_is_pointed_to(store: Store, tmp_path: Path) -> None:
    """'café.txt' from macOS (decomposed) and typed (composed) look the same and differ (helper-94)."""
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café.txt")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / decomposed).write_text("x")
    assert store.client().upload(str(tmp_path / "src" / decomposed)).ok
    typed = store.client().download(unicodedata.normalize("NFC", "café.txt"), str(tmp_path / "out"))
    assert typed.reason == "not_found" and ascii(decomposed) in typed.message and "Unicode form" in typed.message
