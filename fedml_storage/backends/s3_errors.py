"""botocore's errors mapped to the core's, with advice and no secrets."""

from __future__ import annotations

import http.client
import re
from types import TracebackType

import botocore.exceptions
import urllib3.exceptions

from ..advice import NO_CREDENTIALS
from ..errors import AccessDenied, NotConfigured, PreconditionFailed, StorageFailure, TransientError, Unsupported
from .base import ObjectMissing
from .responses import IncompleteResponse, WebPage, malformed

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "403"}
_EXPIRED = {"ExpiredToken", "TokenRefreshRequired"}
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_UNSUPPORTED = {"NotImplemented", "501"}
_NEVER_BARE_404 = {"ListObjectsV2", "PutObject", "CreateMultipartUpload"}  # a store's 404 there names its error
_TRANSIENT = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling", "503", "500", "502",
              "OperationAborted"}  # (a conflicting operation in progress: S3 says to try again)

NOT_S3 = ("check that endpoint_url is the store's S3 API (for MinIO the API port, usually 9000, not the console's "
          "9001)")


def web_page_answer(location: str) -> str:
    return f"{location} answered with a web page, not as an S3 API; {NOT_S3}"


_SETUP_ERRORS = (  # settings that can never work: retrying does not help
    botocore.exceptions.ParamValidationError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.NoRegionError,
    botocore.exceptions.InvalidRegionError,
)


class translate:
    """Context manager mapping botocore errors to the core's errors, with advice and no secrets."""

    def __init__(self, key: str, location: str, conditional: bool = False) -> None:
        self.key, self.location, self.conditional = key, location, conditional

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # never swallows: raises the core's error or lets exc go on
        if exc is None or isinstance(exc, (StorageFailure, ObjectMissing, TransientError, PreconditionFailed)):
            return
        mapped = self._answered(exc) if isinstance(exc, botocore.exceptions.ClientError) else self._unanswered(exc)
        if mapped is not None:
            raise mapped from None

    def _unanswered(self, exc: BaseException) -> Exception | None:
        """The core's error for a request the store did not answer with an error: no credentials, a transport or
        TLS failure, a setting botocore refused; None for what is not botocore's."""
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return NotConfigured(f"no storage credentials found; {NO_CREDENTIALS}")
        if isinstance(exc, botocore.exceptions.ReadTimeoutError):  # before the broad transport check below
            return TransientError(f"{self.location} stopped sending data (read timeout, every attempt); it may be "
                                  "overloaded: try again, or raise read_timeout for a slow endpoint")
        if isinstance(exc, WebPage):
            return NotConfigured(web_page_answer(self.location))
        if isinstance(exc, (IncompleteResponse, urllib3.exceptions.HTTPError, http.client.HTTPException,
                            ConnectionError)) or malformed(exc):  # a transport error that reached us unwrapped
            return TransientError(f"the connection to {self.location} broke ({type(exc).__name__}: {exc}); if this "
                                  f"persists, {NOT_S3}")
        if isinstance(exc, botocore.exceptions.SSLError) and (tls := _tls_misconfigured(str(exc), self.location)):
            return NotConfigured(tls)
        if isinstance(exc, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionError)):
            return TransientError(f"cannot reach the storage endpoint for {self.location} ({type(exc).__name__}); "
                                  "check endpoint_url (or r2_account_id) and the network")
        if isinstance(exc, botocore.exceptions.ParamValidationError) and \
                (bad := re.match(r'\s*Invalid bucket name "([^"]*)"', str(exc.kwargs.get("report", "")))):
            return NotConfigured(f"bucket name {bad.group(1)!r} is not valid: bucket names are 3 to 63 lowercase "
                                 "letters, digits, '.' and '-', starting and ending with a letter or digit; check the "
                                 "bucket setting")
        if isinstance(exc, _SETUP_ERRORS):
            return NotConfigured(f"the request to {self.location} could not be made ({type(exc).__name__}: {exc}); "
                                 "fix the setting it names (retrying will not help)")
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return TransientError(f"storage request to {self.location} failed ({type(exc).__name__}: {exc})")
        return None

    def _answered(self, exc: botocore.exceptions.ClientError) -> Exception:
        """The core's error for an error answer: by its S3 code, or by its HTTP status when no store wrote it."""
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int) and _not_from_store(exc, code, status):
            return self._not_s3(status)  # a web page, a proxy's answer
        if self.conditional and (code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)):
            return PreconditionFailed(self.key)
        if code in _UNSUPPORTED or status == 501:
            return Unsupported(self._unsupported(err.get("Message", "")))
        if code == "NoSuchBucket":
            return NotConfigured(f"bucket {self.location} does not exist; create it or configure another bucket")
        if code in MISSING_CODES:
            return ObjectMissing(self.key)
        if code in _EXPIRED:
            return AccessDenied(
                f"{self.location} refused an expired session token ({code}): temporary credentials last hours; "
                "renew them, give the new ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN and run again")
        if code in _DENIED:
            return AccessDenied(f"access denied by {self.location} ({code}); check the API key "
                                "(ACCESS_KEY_ID:SECRET_ACCESS_KEY) and that it may read and write this bucket")
        if code in _TRANSIENT or (isinstance(status, int) and status >= 500):
            retried = exc.response.get("ResponseMetadata", {}).get("RetryAttempts")
            tries = f", {retried + 1} tries" if isinstance(retried, int) and retried else ""  # botocore's, silent
            return TransientError(f"storage service busy or failing ({code or status}{tries}) at {self.location}")
        return StorageFailure(f"storage service refused the request for {self.key!r} ({code}: {err.get('Message', '')})")

    def _not_s3(self, status: int) -> Exception:
        said = (f"{self.location} answered HTTP {status} {http.client.responses.get(status, '')} without an S3 error: "
                "a web server or a proxy answered, not the store itself".replace("  ", " "))
        where = f"{NOT_S3}, and any proxy in front of the store"
        if status == 501:  # a web server that takes GET only: no S3 API, and asking again will not make one
            return NotConfigured(f"{said}; it does not implement this request: {where}")
        if status >= 500 or status in (408, 429):
            return TransientError(f"{said}; if this persists, {where}")
        if status == 413:
            return NotConfigured(f"{said}; a proxy may limit the size of requests (nginx: client_max_body_size): "
                                 "raise that limit, or lower part_size below it")
        if status in (401, 403):
            return AccessDenied(f"{said}; {where}, and that the network lets you reach it")
        return NotConfigured(f"{said}; {where}")

    def _unsupported(self, message: str) -> str:
        said = f" ({message})" if message else ""
        if self.conditional:
            return (f"{self.location} refused a conditional request (If-Match / If-None-Match){said}, which "
                    "fedml-storage needs so that two writers of one name never mix, nor a delete remove another "
                    "writer's upload; use a store that supports them (AWS S3, Cloudflare R2 and recent MinIO and Ceph "
                    "releases do; AWS took them on deletes in 2025)")
        return (f"{self.location} does not implement a request fedml-storage made for {self.key!r}{said}; retrying "
                "will not help")


def _not_from_store(exc: botocore.exceptions.ClientError, code: str, status: int) -> bool:
    """Whether an error answer came from a web server or proxy, not the store: no S3 error code in it."""
    operation = exc.operation_name
    if operation == "HeadObject" or code not in ("", str(status)):  # a HEAD has no body: its code is always generic
        return False
    if status == 404 and operation == "GetObject":  # a missing key, as ever (a proxy may put a page of its own on
        return False  # the store's answer; a web server's is caught by the listing a not-found hint makes)
    page = str(exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("content-type", "")).lower() \
        .startswith("text/html")
    # a listing or write answered 404 without a body: a store says NoSuchBucket (a sandbox's or a proxy's 404)
    bare_404 = code == "404" and operation in _NEVER_BARE_404
    return page or not code or bare_404


def _tls_misconfigured(text: str, location: str) -> str | None:
    """What to fix when a TLS failure is the endpoint's certificate or port, which retrying does not cure."""
    verify = re.search(r"certificate verify failed: (.+?)\s*\(_ssl", text)
    host = re.search(r"hostname '[^']*' doesn't match .*'", text)  # urllib3's own check (botocore turns off ssl's)
    if verify or host or "CERTIFICATE_VERIFY_FAILED" in text:
        why = verify.group(1) if verify else host.group(0) if host else "certificate verify failed"
        return (f"the TLS certificate of the endpoint for {location} could not be verified ({why}); retrying will "
                "not help: if a private certificate authority signs it, set ca_bundle to that authority's PEM file, "
                "and if it has expired or names another host, renew it or fix endpoint_url")
    if "WRONG_VERSION_NUMBER" in text:
        return (f"the endpoint for {location} does not answer TLS there (WRONG_VERSION_NUMBER): use http:// for a "
                "plain-http endpoint, or the port that serves https")
    return None
