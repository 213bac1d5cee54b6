from __future__ import annotations

import pytest


@pytest.fixture(params=["LOCAL", "S3"])
def backend_env(request) -> dict[str, str]:
    """The environment that points the command line at LOCAL ({}: the default) or at the moto S3 server."""
    if request.param == "LOCAL":
        return {}
    return request.getfixturevalue("s3_env")
