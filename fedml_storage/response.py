"""The documented response type of every Storage API call."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class ResponseCode(Enum):
    """API result code, as documented."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    ERROR = "ERROR"


class Reason(str, Enum):
    """Why a call did not succeed; lets callers decide whether to retry."""

    NOT_FOUND = "not_found"
    INVALID_INPUT = "invalid_input"
    NOT_CONFIGURED = "not_configured"
    ACCESS_DENIED = "access_denied"
    CONFLICT = "conflict"
    CHANGED = "changed"  # changed under a delete: trying again would delete what the caller has not seen
    TRANSIENT = "transient"
    INTERNAL = "internal"


class FedMLStorageError(Exception):
    """Raised by `FedMLResponse.unwrap()` for a response that did not succeed."""

    def __init__(self, response: FedMLResponse) -> None:
        super().__init__(response.message)
        self.response = response
        self.code = response.code
        self.reason = response.reason
        self.retryable = response.retryable

    # picklable: Prefect stores and ships failed tasks' exceptions
    def __reduce__(self) -> tuple[type, tuple[FedMLResponse]]:
        return type(self), (self.response,)


@dataclass
class FedMLResponse:
    """Result of an API call: `code`, `message`, `data` (documented) and `reason` on failure."""

    code: ResponseCode
    message: str
    data: Any = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.code == ResponseCode.SUCCESS

    @property
    def retryable(self) -> bool:
        """True when trying the same call again may succeed (network, throttling, 5xx, a concurrent writer)."""
        return self.reason in (Reason.TRANSIENT.value, Reason.CONFLICT.value)

    def unwrap(self) -> Any:
        """Return `data` on success; raise `FedMLStorageError` with the message otherwise."""
        if not self.ok:
            raise FedMLStorageError(self)
        return self.data

    def __repr__(self) -> str:
        reason = f", reason={self.reason!r}" if self.reason else ""
        return f"FedMLResponse(code={self.code.value}, message={self.message!r}, data={self.data!r}{reason})"


__all__ = ["FedMLResponse", "FedMLStorageError", "Reason", "ResponseCode"]
