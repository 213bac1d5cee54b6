"""The boto3 client for S3 settings: credentials, retries, and what S3-compatible endpoints need."""

from __future__ import annotations

import logging
import ssl
import threading
import traceback
from typing import Any

import botocore.exceptions
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.loaders import Loader, create_loader

from ..advice import R2_BY_DEFAULT
from ..config import StorageSettings
from ..errors import NotConfigured, redact

# botocore's modules that log requests at DEBUG: the canonical request and the headers hold a session token
_REQUEST_LOGGERS = ("botocore.auth", "botocore.endpoint", "botocore.awsrequest", "botocore.httpsession",
                    "botocore.hooks", "botocore.parsers", "botocore.retryhandler", "urllib3.connectionpool")


def _forms(secret: str) -> tuple[str, ...]:
    """A secret as botocore's DEBUG records may hold it: as it is, escaped (a dict of headers), and in hex (AWS's
    SignatureDoesNotMatch answer gives the canonical request as hex bytes, spaced, and the log holds the answer)."""
    raw = secret.encode()
    return tuple(dict.fromkeys((secret, repr(secret)[1:-1], repr(raw)[2:-1], raw.hex(), raw.hex(" "))))


class _Masking(logging.Filter):
    """Masks the secrets of the clients made here in botocore's own DEBUG records, with a traceback attached to
    one (this runs only for records logged, so costs nothing while DEBUG is off)."""

    KEPT = 64  # the most recent secrets: a process that makes clients for ever rotating tokens stays bounded

    def __init__(self) -> None:
        super().__init__()
        self._kept: tuple[tuple[str, ...], ...] = ()  # each secret's forms, kept or dropped together
        self._secrets: tuple[str, ...] = ()  # all their forms; both replaced whole, never changed in place: read
        self._lock = threading.Lock()  # without a lock

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            fresh = [forms for forms in map(_forms, filter(None, secrets)) if forms not in self._kept]
            self._kept = (*self._kept, *dict.fromkeys(fresh))[-self.KEPT:]
            self._secrets = tuple(form for forms in self._kept for form in forms)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._secrets
        if secrets:
            message = record.getMessage()
            if any(secret in message for secret in secrets):
                record.msg, record.args = redact(message, secrets), None
            if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
                text = "".join(traceback.format_exception(*record.exc_info))
                if any(secret in text for secret in secrets):  # formatters print exc_text as it is
                    record.exc_info, record.exc_text = None, redact(text, secrets).rstrip("\n")
        return True


_MASKING = _Masking()
for _name in _REQUEST_LOGGERS:
    logging.getLogger(_name).addFilter(_MASKING)


def s3_client(settings: StorageSettings) -> BaseClient:
    """A client for the settings' service and endpoint; NotConfigured when they cannot make one."""
    endpoint = settings.resolved_endpoint
    if settings.service == "R2" and not endpoint:
        raise NotConfigured("R2 needs r2_account_id (or endpoint_url): set it beside the other settings (an argument, "
                            "an Airflow connection's extra, a block's field, or FEDML_STORAGE_R2_ACCOUNT_ID)."
                            + R2_BY_DEFAULT)
    custom = settings.custom_endpoint  # an explicit AWS endpoint (regional, FIPS, VPC) gets boto3's defaults
    s3_options: dict | None = None
    if custom:
        s3_options = {"addressing_style": "path"}
        if endpoint is not None and endpoint.lower().startswith("https://"):
            # With when_required checksums botocore would SHA-256 every part for the signature. Over TLS that
            # buys nothing (AWS's own SDKs leave payloads unsigned there; R2 asks for it); plain http stays signed.
            s3_options["payload_signing_enabled"] = False
    checksums = settings.checksum_calculation
    if checksums == "auto":  # newer boto3 adds CRC checksums that R2 and other S3-compatible stores reject
        checksums = "when_required" if custom else "when_supported"
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=settings.concurrency + 4,
        connect_timeout=10,
        read_timeout=settings.read_timeout,
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
        s3=s3_options,
    )
    key_id = secret = token = None
    if settings.api_key:
        key_id, secret, *rest = settings.api_key.get_secret_value().split(":")
        token = rest[0] if rest else None  # temporary credentials (STS) carry a session token
        _MASKING.add(secret, token)
    region = settings.region or ("auto" if settings.service == "R2" else None)
    verify = ca_bundle_path(settings)
    try:
        return _new_client(
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=config,
            verify=verify,
        )
    except (ValueError, botocore.exceptions.BotoCoreError) as exc:  # e.g. a malformed endpoint or region
        raise NotConfigured(f"cannot set up the {settings.service} client: {str(exc).rstrip('.')}; check "
                            "endpoint_url and region") from None


_loaders: dict[str | None, Loader] = {}  # by AWS_DATA_PATH (botocore's data_path), made with a first client
_loaders_lock = threading.Lock()


def _new_client(**options: Any) -> BaseClient:
    """An S3 client of a fresh botocore session (credentials, profile and environment read anew, as by a new boto3
    session) that shares the process's loader of botocore's service models: loading those is most of what a new
    session's first client costs (~110 of ~125 ms here), and every API call makes a client."""
    session = botocore.session.Session()
    data_path = session.get_config_variable("data_path")
    with _loaders_lock:
        loader = _loaders.get(data_path)
        if loader is None:
            loader = _loaders[data_path] = create_loader(data_path)
    session.register_component("data_loader", loader)
    return session.create_client("s3", **options)


def ca_bundle_path(settings: StorageSettings) -> str | None:
    """The ca_bundle setting as botocore takes it; NotConfigured when it names no file."""
    if settings.ca_bundle is None:
        return None
    path = settings.ca_bundle.expanduser()
    if not path.is_file():
        raise NotConfigured(f"ca_bundle {str(path)!r} is not a file; give the PEM file of the certificate "
                            "authorities to trust, or unset ca_bundle for boto3's own")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise NotConfigured(f"ca_bundle {str(path)!r} holds no certificate TLS can use ({exc}); give a PEM file of "
                            "certificate authorities") from None
    return str(path)
