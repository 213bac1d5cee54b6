"""Secrets where helper-102 found them: in a validation error's details, in a repr, in keys of other providers than
AWS and R2, and in botocore's DEBUG log in forms other than the key's own."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from fedml_storage import StorageClient, StorageSettings, api
from tests.conftest import TEST_API_KEY
from tests.cutting_proxy import CuttingProxy

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
OTHER_KEYS = [  # shaped as DigitalOcean Spaces', Backblaze B2's, GCS HMAC, R2 and IBM COS keys are
    "DO00QWERTYUIOPASDFGH:Xk3mPq9vAbCdEfGhIjKlMnOpQrStUvWxYz0123456",
    "0012c4a5b6c7d8e0000000003:K001abcdEFGHijklMNOPqrstUVWXyz0",
    "GOOG1EABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH:abcdEFGHijklMNOPqrstUVWXyz0123456789abcd",
    "7bfd00dacd3eaddb2706dc9dfa8e89c5:30c0902e8d17d2f2c183ae72701e04d25e571946a900c3e9a39eb2777b55f127",
    "1f2e3d4c5b6a79881f2e3d4c5b6a7988:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071",
]
NAMES = ["COCO2017TRAINIMAGES:FasterRCNNResNet50FPN", "EXPERIMENT20240601T1200Z:BaselineRunWithAugment",
         "9fceb02d0ae598e95dc970b74767f19372d61af8:Models", "sha256:" + "e3b0c442" * 8,
         "ASIA2023CENSUSDATA01:populationbyprovince"]  # names, not keys (helper-104)


@pytest.mark.parametrize("build", [
    lambda: StorageSettings(api_key=f"AKIAIOSFODNN7EXAMPLE {SECRET}"),
    lambda: StorageSettings(service="S3", bucket="b", endpoint_url=f"http://AKIAIOSFODNN7EXAMPLE:{SECRET}@minio:9000"),
    lambda: StorageSettings.model_validate({"api_key": f"'AKIAIOSFODNN7EXAMPLE:{SECRET}'"}),
    lambda: StorageSettings(aws_secret_access_key=SECRET),
    lambda: setattr(StorageSettings(), "api_key", f"AKIAIOSFODNN7EXAMPLE:{SECRET}"),  # frozen: refused
    lambda: StorageSettings.model_validate_json(f'{{"api_key": "AKIAIOSFODNN7EXAMPLE:{SECRET}"'),  # cut short
    lambda: StorageSettings(local_root=3, region=SECRET),  # an error type only pydantic's Python side knows
    lambda: TypeAdapter(StorageSettings).validate_python({"api_key": SECRET}),  # not through __init__ (helper-105)
    lambda: type("Job", (BaseModel,), {"__annotations__": {"s": StorageSettings}})(s={"region": 3, "api_key": SECRET}),
])
def test_a_settings_error_keeps_no_value_given(isolated_home: Path, build) -> None:
    """Its str hid the values, but its details (errors()) and its pickle, which Prefect writes to result storage for
    a failed run, held them."""
    with pytest.raises(ValidationError) as refused:
        build()
    assert refused.value.errors() and SECRET not in repr(refused.value.errors()) + str(refused.value)
    assert SECRET.encode() not in pickle.dumps(refused.value)
    assert all(e["type"] and e["msg"] for e in refused.value.errors())  # what is wrong is still said


def test_names_with_a_colon_are_names_not_keys(isolated_home: Path, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()  # a folder: stored under the name as given
    (tmp_path / "d" / "a.txt").write_text("x")
    for name in NAMES:
        assert api.upload(str(tmp_path / "d"), name=name, service="LOCAL").ok, name
        assert api.get_storage_metadata(name).data.dataName == name
        assert api.delete(name, service="LOCAL").data is True


def test_settings_errors_keep_their_kind_and_validation_its_options(isolated_home: Path) -> None:
    """Hiding the values made a path_type error a KeyError ("please report this"), and model_validate lost strict=
    (helper-104)."""
    refused = StorageClient(local_root=3).list()
    assert refused.reason == "invalid_input" and "local_root: Input is not a valid path" in refused.message
    with pytest.raises(ValidationError) as strict:
        StorageSettings.model_validate({"max_attempts": "3"}, strict=True)
    assert strict.value.errors()[0]["type"] == "int_type"
    assert StorageSettings.model_validate({"max_attempts": "3"}).max_attempts == 3
    with pytest.raises(ValidationError, match=r"expected `,` or `}` at") as cut:  # braces as pydantic wrote them
        StorageSettings.model_validate_json('{"service": "S3" "bucket": "b"}')
    assert "}}" not in str(cut.value)


def test_a_clients_repr_shows_an_unknown_argument_by_name_only(isolated_home: Path) -> None:
    client = StorageClient(service="S3", bucket="bkt", aws_secret_access_key=SECRET, region=OTHER_KEYS[0])
    assert "aws_secret_access_key" in repr(client) and "'bkt'" in repr(client)
    assert SECRET not in repr(client) and OTHER_KEYS[0].split(":")[1] not in repr(client)


@pytest.mark.parametrize("key", OTHER_KEYS)
def test_a_key_of_another_provider_given_as_a_name_is_refused_unechoed(isolated_home: Path, tmp_path: Path,
                                                                      key: str) -> None:
    data = tmp_path / "data.txt"
    data.write_text("x")
    secret = key.split(":")[1]
    uploaded = api.upload(str(data), name=key, service="LOCAL")
    assert not uploaded.ok and "key pair" in uploaded.message and secret not in uploaded.message
    assert api.list_storage_objects().data == []  # the key did not become a dataset's name
    for got in (api.get_storage_metadata(key), api.download(key, dest_path=str(tmp_path / "out"), service="LOCAL"),
                api.delete(key, service="LOCAL")):
        assert not got.ok and secret not in got.message


def test_a_session_token_in_hex_or_in_a_traceback_is_masked_in_botocores_log(
        moto_endpoint: str, s3_bucket: str, moto_proxy: CuttingProxy, caplog) -> None:
    """AWS's SignatureDoesNotMatch answer gives the canonical request as spaced hex bytes, with the token's header;
    botocore logs the answer at DEBUG. A record's traceback was never masked."""
    token = "FwoGZXIvYXdzEXAMPLEsessionTOKENhex/never+logged=="
    spaced = token.encode().hex(" ")
    moto_proxy.answer(rb"^GET ", "403 Forbidden", "SignatureDoesNotMatch",
                      f"The request signature we calculated does not match. x-amz-security-token: {spaced}", times=9)
    caplog.set_level(logging.DEBUG)
    client = StorageClient(service="S3", bucket=s3_bucket, endpoint_url=moto_proxy.endpoint,
                           region="us-east-1", api_key=f"{TEST_API_KEY}:{token}")
    assert not client.list().ok
    assert "SignatureDoesNotMatch" in caplog.text and spaced not in caplog.text and token not in caplog.text
    try:
        raise ValueError(f"could not parse a body echoing x-amz-security-token:{token}")
    except ValueError:
        logging.getLogger("botocore.parsers").debug("Exception caught when parsing error response body:",
                                                    exc_info=True)
    assert "Exception caught when parsing" in caplog.text and token not in caplog.text
    assert "could not parse a body echoing x-amz-security-token:****" in caplog.text
