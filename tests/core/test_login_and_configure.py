"""fedml_login and configure: keys taken, refused (never echoed, the saved one kept) and saved 0600; what they say
about a missing key and a bucket the default service does not use."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedml_storage import StorageClient, StorageSettings, api
from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.config import config_path, read_config_file
from tests.conftest import TEST_API_KEY

SECRET = TEST_API_KEY.split(":", 1)[1]


def test_configuring_a_bucket_beside_the_default_local_service_says_it_is_unused() -> None:
    response = api.configure(bucket="ml-datasets")
    assert response.ok and "still LOCAL, which uses no bucket" in response.message and "'ml-datasets'" in response.message
    assert "still LOCAL" not in api.configure(service="S3").message


def test_configure_without_settings_says_nothing_was_saved() -> None:
    """It said "settings saved to ..." and wrote a config file holding nothing."""
    response = api.configure()
    assert response.ok and response.message.startswith("nothing saved: no setting given (e.g. configure(bucket=...))")
    assert not config_path().exists() and response.data == str(config_path())


def test_login_without_a_key_says_none_was_given() -> None:
    response = api.fedml_login()
    assert response.code == ResponseCode.FAILURE and "no api_key given" in response.message
    assert not config_path().exists()


def test_login_stores_key_0600_and_never_echoes_it() -> None:
    response = api.fedml_login(TEST_API_KEY)
    assert response.code == ResponseCode.SUCCESS and SECRET not in response.message
    path = config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["api_key"] == TEST_API_KEY
    assert StorageSettings.resolve().api_key.get_secret_value() == TEST_API_KEY


def test_a_login_killed_before_its_rename_leaves_no_copy_of_the_key() -> None:
    assert api.fedml_login(TEST_API_KEY).ok
    folder = config_path().parent
    stale = folder / ".fedml-storage-config-k1lled_0.tmp"  # what a writer killed before its rename left
    stale.write_text(json.dumps({"api_key": TEST_API_KEY}))
    others = [folder / ".config-nvim-backup", folder / ".fedml-storage-config-notours.tmp"]  # not named as ours are
    for other in others:
        other.write_text("the user's")
    assert api.fedml_login(TEST_API_KEY).ok  # the next writer, holding the lock, removes it
    assert not stale.exists() and all(other.read_text() == "the user's" for other in others)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".fedml-storage-config-")) == [others[1].name]


@pytest.mark.parametrize("key", ["no-colon-here", ":secret-only", "id-only:", "", None, "id:with space"])
def test_login_rejects_malformed_keys(key) -> None:
    response = api.fedml_login(key)
    assert response.code == ResponseCode.FAILURE and "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in response.message
    if key:
        assert key not in response.message or len(key) < 4
    assert not config_path().exists()


@pytest.mark.parametrize(("key", "said"), [
    ("AKIAKEYID0001-wJalrSECRET", "has no ':'"),
    ("AKIAKEYID0001:wJalrSECRET:token:more", "has 4 parts"),
    ("AKIAKEYID0001::token", "SECRET_ACCESS_KEY part of api_key is empty"),
    ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRET:AKIAIOSFODNN7EXAMPLE", "wrong way round"),  # pasted swapped
    ("wJalrXUtnFEMIK7MDENGbPxRfiCYSECRET:AKIAIOSFODNN7EXAMPLE", "wrong way round"),
    ("0123456789abcdef0123456789abcdef", "A FedML platform API key is not a storage credential"),
    ("AKIA...:wJalr...", "placeholder"), ("<ACCESS_KEY_ID>:<SECRET_ACCESS_KEY>", "placeholder"),
])
def test_a_malformed_key_is_told_what_is_wrong_with_it_without_echoing_it(key: str, said: str) -> None:
    response = api.fedml_login(key)
    assert response.code == ResponseCode.FAILURE and said in response.message
    assert "wJalr" not in response.message and "AKIAKEYID0001" not in response.message
    assert "AKIAIOSFODNN7EXAMPLE" not in response.message
    assert not config_path().exists()
    swapped = StorageClient(service="S3", bucket="b", api_key=key).list()  # refused before any request is signed
    assert swapped.reason == "invalid_input" and said in swapped.message and "wJalr" not in swapped.message


@pytest.mark.parametrize("key", ["AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "minioadmin:minioadmin",
                                 "0123456789abcdef0123456789abcdef:" + "ab" * 32, "ASIAEXAMPLEID0001:s/e+c:tok/en==",
                                 "team/a+b:minio-secret-0001", "GOOG1EXAMPLEHMACID:bGoa+V7g/yqDXvKRqq+JTFn4uQZbPiQJo4pf9RzJ"])
def test_keys_as_aws_r2_and_minio_write_them_are_taken(key: str) -> None:
    assert api.fedml_login(key).ok
    assert read_config_file()["api_key"] == key  # saved as given: '/', '+', '=' and ':' kept


def test_a_refused_login_keeps_the_key_saved_before() -> None:
    assert api.fedml_login(TEST_API_KEY).ok
    saved = config_path().read_bytes()
    for bad in ("no-colon-here", "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRET:AKIAIOSFODNN7EXAMPLE", "AKIA:KEY:ID:SECRET", ""):
        assert api.fedml_login(bad).reason == "invalid_input"
        assert config_path().read_bytes() == saved
    assert read_config_file()["api_key"] == TEST_API_KEY


@pytest.mark.parametrize("key", ["\ufeffAKIAKEYID00001:secret-secret-1", "AKIAKEYID00001:secret-secret-1\u200b",
                                 '"AKIAKEYID00001:secret-secret-1"', "AKIAKEYID00001:sec\x00ret-secret-1",
                                 "AKIA:KEY:ID:SECRET"])
def test_login_refuses_keys_that_cannot_work(key: str) -> None:
    response = api.fedml_login(key)
    assert response.reason == "invalid_input" and "secret-secret-1" not in response.message
    assert not config_path().exists()


def test_login_saves_the_service_as_it_is_used_and_keeps_a_linked_config(isolated_home: Path, tmp_path: Path) -> None:
    kept_elsewhere = tmp_path / "dotfiles" / "fedml.json"
    kept_elsewhere.parent.mkdir()
    kept_elsewhere.write_text("{}")
    os.chmod(kept_elsewhere, 0o600)
    config_path().symlink_to(kept_elsewhere)
    assert api.fedml_login(TEST_API_KEY, service=" s3 ").ok
    assert config_path().is_symlink()  # still the user's link, and the file it names holds the settings
    assert json.loads(kept_elsewhere.read_text()) == {"api_key": TEST_API_KEY, "service": "S3"}
