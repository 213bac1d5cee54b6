"""The FedMLStorage block's own fields: unknown ones refused, the api_key a secret however it is set."""

from __future__ import annotations

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
