"""Internal exceptions and their translation into `FedMLResponse` failures."""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Iterable

from .api_keys import mask_keys
from .response import FedMLResponse, Reason, ResponseCode

log = logging.getLogger("fedml_storage")
# No NullHandler: where the application configures no logging, Python's last-resort handler shows our warnings
# (a typo in a FEDML_STORAGE_* variable, a config file others can read) on stderr instead of dropping them.


class StorageFailure(Exception):
    """An expected failure: becomes a FAILURE response with this message."""

    reason = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class InvalidInput(StorageFailure):
    reason = Reason.INVALID_INPUT


class NotFound(StorageFailure):
    reason = Reason.NOT_FOUND

    def __init__(self, message: str, similar: str = "") -> None:
        super().__init__(message)
        self.similar = similar  # the hint in the message for a name given without its extension, or ""


class NotConfigured(StorageFailure):
    reason = Reason.NOT_CONFIGURED


class AccessDenied(StorageFailure):
    reason = Reason.ACCESS_DENIED


class Conflict(StorageFailure):
    reason = Reason.CONFLICT


class SourceChanged(Conflict):
    """The data was written to while it was uploaded: nothing was published; another try, once the writer is done,
    succeeds (so Airflow and Prefect retry it)."""


class Changed(StorageFailure):
    """A delete found the dataset published again since it read it: not retried, so as not to delete that."""

    reason = Reason.CHANGED


class Unsupported(StorageFailure):
    """The store does not implement what a request needs (S3 NotImplemented): retrying does not help."""

    reason = Reason.NOT_CONFIGURED


class PreconditionFailed(Exception):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class TransientError(Exception):
    """A failure that may pass on retry (network, throttling, 5xx): becomes ERROR, retryable."""


def size_not_content(path: object, read: int, size: int) -> InvalidInput:
    """A file that gives other bytes than its size says (/proc, sysfs, some FUSE files): never storable as is."""
    return InvalidInput(f"{path} gives {read} bytes where its size says {size} (a /proc-like or special file, whose "
                        "size is not its content's); nothing was published: copy it to a regular file and upload "
                        "that, or leave it out of a folder with ignore_patterns")


class IntegrityError(StorageFailure):
    """Stored bytes do not match the manifest (corruption or tampering)."""

    reason = Reason.INTERNAL


MAY_PASS = "This may pass: try again."  # how a failure that may pass ends

MIN_SECRET_CHARS = 8  # key ids and secrets are 20-64 characters; masking shorter strings garbles messages
# (a placeholder api_key="api_key" would hide every mention of the setting)


def redact(text: str, secrets: Iterable[object]) -> str:
    """Replace every secret (and each part of an ID:SECRET[:TOKEN] key) in `text` with '****', and mask whatever
    else is shaped like a key pair."""
    text = mask_keys(text)
    for secret in secrets:
        if hasattr(secret, "get_secret_value"):
            secret = secret.get_secret_value()
        if not secret or not isinstance(secret, str):
            continue
        parts = [secret, *secret.split(":")]
        for part in sorted(parts, key=len, reverse=True):
            if len(part) >= MIN_SECRET_CHARS:
                text = text.replace(part, "****")
    return text


def name_folder(exc: BaseException, folder: object, ours: str) -> None:
    """Make a local error about space or access name `folder` when it names no file (a write to a full disk) or only
    a temp file of ours (a path starting with `ours`), which would tell the user nothing."""
    if isinstance(exc, OSError) and exc.errno in _FOLDER_ERRORS and (not exc.filename or
                                                                     str(exc.filename).startswith(ours)):
        exc.filename = str(folder)


_FOLDER_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def local_os_error(exc: OSError) -> StorageFailure | TransientError | None:
    """The user-facing form of a local file-system error the user can act on, or None."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(f"no space left on the local disk{where}; free some space or choose another folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AccessDenied(f"the local file system refused access{where}: {exc.strerror}; check its permissions "
                            "or choose another folder")
    if exc.errno == errno.EBUSY:
        return InvalidInput(f"a local path is busy{where}: in use, or a mount point (a volume or a file mounted there), "
                            "which cannot be renamed, replaced or removed; choose another folder")
    if exc.errno == errno.EFBIG:
        return InvalidInput(f"a file grew larger than this file system or the process's file-size limit (ulimit -f) "
                            f"allows{where}; choose another folder or raise the limit")
    if exc.errno in _PATH_ERRORS:
        return InvalidInput(f"a local path cannot be used{where}: {exc.strerror} ({_PATH_ERRORS[exc.errno]}); "
                            "check the path")
    return None


_PATH_ERRORS = {
    errno.ENAMETOOLONG: "a name or the whole path is longer than the file system allows",
    errno.ELOOP: "links lead in a circle",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def to_response(
    exc: BaseException, action: str, secrets: Iterable[str | None] = (), after_error: str = "", log_it: bool = True
) -> FedMLResponse:
    """Turn an exception raised while doing `action` into a FAILURE or ERROR response (logged when `log_it`).

    `after_error` says what an unexpected error left behind (e.g. "Nothing was published").
    """
    secrets = list(secrets)
    if isinstance(exc, OSError) and (mapped := local_os_error(exc)) is not None:
        exc = mapped
    if isinstance(exc, StorageFailure):
        code, reason, message = ResponseCode.FAILURE, exc.reason, f"{action} failed: {exc}"
    elif isinstance(exc, TransientError):
        code, reason = ResponseCode.ERROR, Reason.TRANSIENT
        message = f"{action} failed: {exc}. {MAY_PASS}"
    else:
        code, reason = ResponseCode.ERROR, Reason.INTERNAL
        left = f"{after_error}; please" if after_error else "Please"
        message = (
            f"{action} failed unexpectedly: {type(exc).__name__}: {exc}. "
            f"{left} report this with the log if it happens again."
        )
        trace = "".join(traceback.format_exception(exc))
        log.debug("unexpected error during %s:\n%s", action, redact(trace, secrets))
    message = redact(message, secrets)
    if log_it:
        log.info("%s", message)
    return FedMLResponse(code, message, None, reason.value)
