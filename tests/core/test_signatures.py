"""The documented signatures are a contract: names, order and defaults of the documented parameters."""

from __future__ import annotations

import inspect

import pytest

from fedml_storage import api
from fedml_storage.api import fedml_response

DOCUMENTED = {
    "upload": [("data_path", inspect._empty), ("api_key", None), ("service", "R2"), ("name", None),
               ("description", None), ("metadata", None), ("show_progress", False), ("out_progress_to_err", True),
               ("progress_desc", None)],
    "download": [("data_name", inspect._empty), ("api_key", None), ("service", "R2"), ("dest_path", None),
                 ("show_progress", True)],
    "delete": [("data_name", inspect._empty), ("service", inspect._empty), ("api_key", None)],
    "get_storage_metadata": [("data_name", inspect._empty), ("api_key", None)],
    "get_storage_user_defined_metadata": [("data_name", inspect._empty), ("api_key", None)],
    "list_storage_objects": [("api_key", None)],
}


@pytest.mark.parametrize("func", sorted(DOCUMENTED))
def test_documented_parameters_come_first_unchanged(func: str) -> None:
    params = list(inspect.signature(getattr(api, func)).parameters.values())
    documented = DOCUMENTED[func]
    assert [(p.name, p.default) for p in params[: len(documented)]] == documented
    extra = params[len(documented):]
    # extensions never shift documented positions: tag_list (as the reference) or keyword-only
    assert all(p.kind == p.KEYWORD_ONLY or p.name == "tag_list" for p in extra)


def test_response_codes_are_the_documented_ones() -> None:
    assert [c.value for c in fedml_response.ResponseCode] == ["SUCCESS", "FAILURE", "ERROR"]
    r = fedml_response.FedMLResponse(fedml_response.ResponseCode.SUCCESS, "ok", 1)
    assert (r.code, r.message, r.data) == (fedml_response.ResponseCode.SUCCESS, "ok", 1)
