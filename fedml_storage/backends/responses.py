"""Refusing S3 answers that arrived cut short.

A connection closed cleanly inside a response's headers reads, to http.client, as the end of the headers: botocore
then hands back a 200 without its ETag, UploadId or Content-Length, and a body that ends wherever the connection
did (an empty listing, a short object). Such an answer is sent again like any failed request and, if it still
comes cut short, raised as IncompleteResponse (a retryable failure) before anything acts on it.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import botocore.exceptions
import botocore.handlers

from ..abandon import Abandoned, abandoned

log = logging.getLogger("fedml_storage")


class IncompleteResponse(Exception):
    """A success answer whose headers or required fields are missing: it was cut short in transit."""


class WebPage(Exception):
    """A success answer that is an HTML page: the endpoint is a web server, not an S3 API."""


_SILENCE = (botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError)

_REQUIRED = {  # what every well-formed success answer of these operations carries (and the code reads)
    "HeadObject": ("ContentLength", "LastModified"),
    "PutObject": ("ETag",),
    "UploadPart": ("ETag",),
    "CreateMultipartUpload": ("UploadId",),
    "ListObjectsV2": ("IsTruncated",),
    "ListParts": ("IsTruncated",),
    "ListMultipartUploads": ("IsTruncated",),
}


def register(client: Any, max_attempts: int) -> None:
    """Have `client` send a request again when its answer came cut short, and refuse the answer if it still does."""

    def retry(response: Any, operation: Any, attempts: int, **_: Any) -> float | None:
        if response is None or attempts >= max_attempts or _missing(response[0], response[1], operation) is None:
            return None  # botocore's own retry rules decide
        return min(0.05 * 2 ** attempts, 2.0)  # seconds before the next attempt

    def refuse_web_pages(operation_model: Any, response_dict: dict, **_: Any) -> None:
        if _web_page(response_dict.get("status_code", 0), response_dict.get("headers", {}), response_dict.get("body")):
            raise WebPage(f"the answer to {operation_model.name} is a web page (HTML)")

    def warn_of_silence(attempts: int, caught_exception: Any = None, endpoint: Any = None, **_: Any) -> None:
        # botocore retries a request nobody answers silently: read_timeout x max_attempts can be many minutes
        if isinstance(caught_exception, _SILENCE) and attempts < max_attempts:
            log.warning("no answer from %s in time (attempt %d of %d); asking again. If this goes on, check "
                        "endpoint_url and the network, or raise read_timeout for a slow store",
                        getattr(endpoint, "host", "the storage endpoint"), attempts, max_attempts)

    def check(http_response: Any, parsed: dict, model: Any, **_: Any) -> None:
        if (missing := _missing(http_response, parsed, model)) is not None:
            raise IncompleteResponse(f"the answer to {model.name} came without {missing}, {max_attempts} times: it was "
                                     "cut short in transit")

    def stop_if_abandoned(response: Any = None, caught_exception: Any = None, **_: Any) -> None:
        failed = caught_exception is not None or response is not None and response[0].status_code >= 400
        if failed and abandoned():
            raise Abandoned("not asked again: the caller gave up waiting for this request")

    client.meta.events.register_first("needs-retry.s3", retry)
    client.meta.events.register_first("needs-retry.s3", stop_if_abandoned)
    client.meta.events.register("needs-retry.s3", warn_of_silence)
    # first of all, before botocore takes an unparsable 200 for a server error and retries it as one
    handle_200 = getattr(botocore.handlers, "_handle_200_error", None)
    if handle_200 is not None:
        client.meta.events.unregister("before-parse.s3.*", handle_200)
    client.meta.events.register_first("before-parse.s3.*", refuse_web_pages)
    if handle_200 is not None:
        client.meta.events.register_first("before-parse.s3.*", handle_200)
    client.meta.events.register("after-call.s3", check)
    # No 'Expect: 100-continue' on uploads: botocore loops for ever on an interim answer cut short (boto/botocore
    # #3755). Bodies are at most one part; a refused request costs sending it, not a hung process.
    client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)


def malformed(exc: BaseException) -> bool:
    """Whether botocore failed to parse an answer (a header cut inside its value: 'Wed, 25 N' as a date)."""
    return isinstance(exc, ValueError) and any("botocore" in frame.f_code.co_filename
                                               for frame, _ in traceback.walk_tb(exc.__traceback__))


def _web_page(status: int, headers: Any, body: Any) -> bool:
    """Whether a success answer is an HTML page (a web app or a console where the S3 API was expected). Some
    S3 servers label empty answers text/html: it takes a page, or for an object, no ETag. (botocore's headers
    are looked up regardless of case.)"""
    if not 200 <= status < 300 or not str(headers.get("content-type", "")).lower().startswith("text/html"):
        return False
    if isinstance(body, bytes):
        return body.lstrip()[:64].lower().startswith((b"<!doctype html", b"<html"))
    return "etag" not in headers  # an object's answer (its body streams), whose own type may well be HTML


def _missing(http_response: Any, parsed: dict, model: Any) -> str | None:
    """What a success answer lacks that every whole one has, or None."""
    status = getattr(http_response, "status_code", 0)
    if not 200 <= status < 300 or status == 204:
        return None
    headers = {k.lower() for k in http_response.headers}
    if "content-length" not in headers and "transfer-encoding" not in headers:
        return "its length (no Content-Length, not chunked)"
    return next((field for field in _REQUIRED.get(model.name, ()) if field not in parsed), None)
