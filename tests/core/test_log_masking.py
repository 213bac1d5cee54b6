"""Secrets in other libraries' logs: botocore's own DEBUG log carries what it signs with."""

from __future__ import annotations

import logging

from fedml_storage import StorageClient
from tests.conftest import TEST_API_KEY

SECRET = TEST_API_KEY.split(":", 1)[1]


def test_a_session_token_is_masked_in_botocores_own_debug_log(moto_endpoint: str, s3_bucket: str, caplog) -> None:
    token = "FwoGZXIvYXdzEXAMPLEsessionTOKEN/never+logged=="
    caplog.set_level(logging.DEBUG)  # botocore's DEBUG log holds the canonical request and the headers
    client = StorageClient(service="S3", bucket=s3_bucket, endpoint_url=moto_endpoint, region="us-east-1",
                           api_key=f"{TEST_API_KEY}:{token}")
    assert client.list().ok
    logged = caplog.text
    assert "x-amz-security-token" in logged.lower() and "****" in logged  # the header was logged, masked
    assert token not in logged and SECRET not in logged
    bad_region = StorageClient(service="S3", bucket=s3_bucket, region="not a region!", api_key=TEST_API_KEY).list()
    assert bad_region.reason == "not_configured" and ".;" not in bad_region.message


def test_the_log_masking_stays_bounded_and_safe_while_clients_are_made() -> None:
    import threading

    from fedml_storage.backends.s3_client import _MASKING

    logger, errors = logging.getLogger("botocore.auth"), []
    logger.setLevel(logging.DEBUG)

    def log_while_tokens_come() -> None:
        try:
            for _ in range(2000):
                logger.debug("x-amz-security-token:%s", "tok")
        except Exception as exc:  # a set changing size under iteration was one
            errors.append(exc)

    logging_thread = threading.Thread(target=log_while_tokens_come)
    logging_thread.start()
    for i in range(3000):
        _MASKING.add(f"rotating-session-token-{i:06d}")
    logging_thread.join()
    logger.setLevel(logging.NOTSET)
    assert errors == [] and len(_MASKING._kept) == _MASKING.KEPT


def test_a_failure_is_logged_in_the_words_its_message_was_given(isolated_home, caplog) -> None:
    """With advice for a framework, the message said "the list task" while the log line said
    list_storage_objects()."""
    from fedml_storage.advice import LISTING, kept_in

    client = StorageClient(service="LOCAL", advice=kept_in("the list task"))
    with caplog.at_level(logging.INFO, logger="fedml_storage"):
        got = client.get_metadata("never-stored")
    assert "the list task shows what is stored" in got.message and LISTING not in got.message
    assert [r.getMessage() for r in caplog.records if "never-stored" in r.getMessage()] == [got.message]


def test_advice_to_delete_or_clean_up_is_reworded_once_for_a_framework() -> None:
    from fedml_storage.advice import kept_in, reword

    advice = kept_in("the list task", delete="FedMLStorageDeleteOperator(name=", cleanup="FedMLStorageHook().cleanup")
    core = "delete('a') removes it; delete(\"it's\") too; run cleanup() later, or cleanup(older_than_seconds=0)"
    once = reword(core, advice)
    assert once == ("FedMLStorageDeleteOperator(name='a') removes it; FedMLStorageDeleteOperator(name=\"it's\") too; "
                    "run FedMLStorageHook().cleanup() later, or FedMLStorageHook().cleanup(older_than_seconds=0)")
    assert reword(once, advice) == once  # a message reworded again is unchanged
    from prefect_tasks.block import PREFECT_CALLS

    prefect = kept_in("list_data()", **PREFECT_CALLS)
    once = reword(core, prefect)
    assert "run a FedMLStorage block's .cleanup() later" in once and reword(once, prefect) == once  # (helper-104)
