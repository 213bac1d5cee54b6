"""fedml_login and configure: what they say about a missing key and a bucket the default service does not use."""

from __future__ import annotations

from fedml_storage import api
from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.config import config_path


def test_configuring_a_bucket_beside_the_default_local_service_says_it_is_unused() -> None:
    response = api.configure(bucket="ml-datasets")
    assert response.ok and "still LOCAL, which uses no bucket" in response.message and "'ml-datasets'" in response.message
    assert "still LOCAL" not in api.configure(service="S3").message


def test_login_without_a_key_says_none_was_given() -> None:
    response = api.fedml_login()
    assert response.code == ResponseCode.FAILURE and "no api_key given" in response.message
    assert not config_path().exists()
