"""How botocore's errors map to the core's, one case per branch of `s3_errors.translate`. Each case's real path
(moto, the cutting proxy, wrong endpoints) is tested elsewhere; this table pins the mapping for the answers a
test server cannot easily give (a proxy's 413, an expired token, NotImplemented)."""

from __future__ import annotations

import pytest
from botocore.exceptions import (ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError,
                                 ParamValidationError, ReadTimeoutError, SSLError)

from fedml_storage.backends.base import ObjectMissing
from fedml_storage.backends.s3_errors import translate
from fedml_storage.errors import (AccessDenied, NotConfigured, PreconditionFailed, StorageFailure, TransientError,
                                  Unsupported)

WHERE = "bucket 'b'"


def answer(code: str | None, status: int, operation: str = "PutObject", message: str = "", html: bool = False) -> ClientError:
    headers = {"content-type": "text/html"} if html else {"content-type": "application/xml"}
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}, operation)


@pytest.mark.parametrize(("exc", "conditional", "expected", "phrase"), [
    (answer("NoSuchKey", 404, "GetObject"), False, ObjectMissing, ""),
    (answer("404", 404, "HeadObject"), False, ObjectMissing, ""),
    (answer("404", 404, "ListObjectsV2"), False, NotConfigured, "answered HTTP 404 Not Found without an S3 error"),
    (answer("", 502, "GetObject", html=True), False, TransientError, "if this persists"),
    (answer("413", 413, "UploadPart", html=True), False, NotConfigured, "client_max_body_size"),
    (answer("403", 403, "PutObject", html=True), False, AccessDenied, "the network lets you reach it"),
    (answer("PreconditionFailed", 412), True, PreconditionFailed, ""),
    (answer("ConditionalRequestConflict", 409), True, PreconditionFailed, ""),
    (answer("PreconditionFailed", 412), False, StorageFailure, "refused the request for 'k' (PreconditionFailed"),
    (answer("OperationAborted", 409), False, TransientError, "busy or failing (OperationAborted)"),
    (answer("OperationAborted", 409), True, PreconditionFailed, ""),
    (answer("Conflict", 409), True, PreconditionFailed, ""),
    (answer("NotImplemented", 501, message="If-Match"), True, Unsupported, "refused a conditional request"),
    (answer("NotImplemented", 501), False, Unsupported, "does not implement a request"),
    (answer("NoSuchBucket", 404), False, NotConfigured, "does not exist; create it"),
    (answer(None, 400, "PutObject"), False, NotConfigured, "answered HTTP 400 Bad Request without an S3 error"),
    (answer("ExpiredToken", 400), False, AccessDenied, "expired session token"),
    (answer("SignatureDoesNotMatch", 403), False, AccessDenied, "check the API key"),
    (answer("SlowDown", 503), False, TransientError, "busy or failing (SlowDown)"),
    (answer("WeirdError", 507), False, TransientError, "busy or failing (WeirdError)"),
    (answer("InvalidArgument", 400, message="nope"), False, StorageFailure, "refused the request for 'k' "
                                                                             "(InvalidArgument: nope)"),
    (NoCredentialsError(), False, NotConfigured, "no storage credentials found"),
    (ReadTimeoutError(endpoint_url="http://x"), False, TransientError, "stopped sending data"),
    (ConnectionResetError(), False, TransientError, "connection to bucket 'b' broke"),
    (SSLError(endpoint_url="https://x", error="[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1)"), False,
     NotConfigured, "does not answer TLS"),
    (EndpointConnectionError(endpoint_url="http://x"), False, TransientError, "cannot reach the storage endpoint"),
    (ParamValidationError(report='Invalid bucket name "B!": must match'), False, NotConfigured,
     "bucket name 'B!' is not valid"),
    (NoRegionError(), False, NotConfigured, "retrying will not help"),
])
def test_each_botocore_error_becomes_the_core_error_that_says_what_to_do(exc, conditional, expected, phrase) -> None:
    with pytest.raises(expected) as raised:
        with translate("k", WHERE, conditional=conditional):
            raise exc
    assert type(raised.value) is expected
    assert phrase in str(raised.value)
    assert raised.value.__suppress_context__  # botocore's own error (request details) is not chained in


def test_errors_that_are_not_botocore_s_pass_through() -> None:
    with pytest.raises(KeyError):
        with translate("k", WHERE):
            raise KeyError("ours")
    with pytest.raises(TransientError, match="already ours"):
        with translate("k", WHERE):
            raise TransientError("already ours")
