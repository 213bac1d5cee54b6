"""Settings: one validated model, resolved from arguments, FEDML_STORAGE_* variables and a config file."""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, SecretStr, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from .api_keys import check_api_key
from .errors import InvalidInput, NotConfigured
from .validation import byte_size, inputs_hidden, resolved

log = logging.getLogger("fedml_storage")

Service = Literal["LOCAL", "S3", "R2"]
SERVICES: tuple[str, ...] = get_args(Service)
ENV_PREFIX = "FEDML_STORAGE_"
MiB = 1024 * 1024
SIZE_SETTINGS = ("part_size", "download_threshold", "download_part_size", "stream_min_rate")  # bytes, or with a unit


def size_in_bytes(field: str | None, value: Any) -> Any:
    """A size setting's value in bytes when it is text with a unit ('16MiB'; '128 MiB/s' for stream_min_rate);
    anything else as it is, for the field's own check. Raises ValueError for text that is no size."""
    if field == "stream_min_rate" and isinstance(value, str):
        value = value.strip().removesuffix("/s")  # as the settings table writes it
    return byte_size(value)


_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_R2_ACCOUNT_RE = re.compile(r"^[0-9a-f]{32}$")


def storage_home() -> Path:
    """Folder for the config file, digest cache and default LOCAL store."""
    return Path(os.environ.get(ENV_PREFIX + "HOME") or Path.home() / ".fedml-storage").expanduser()


def config_path() -> Path:
    """Path of the user config file (JSON, mode 0600)."""
    return storage_home() / "config.json"


class StorageSettings(BaseModel):
    """Everything the core needs to reach a store. Secrets are `SecretStr` and never printed."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    service: Service = Field("LOCAL", description="Default storage service.")
    local_root: Path | None = Field(None, description="Folder of the embedded LOCAL store.")
    partial_dir: Path | None = Field(
        None, description="Folder where a failed download keeps what it fetched, for a day, so that the next "
        "download of the same data goes on from there (when on the destination's filesystem; default "
        "`<home>/partial`)."
    )
    bucket: str | None = Field(None, description="Bucket for S3 and R2.")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph, R2, moto).")
    region: str | None = Field(None, description="Region for S3.")
    r2_account_id: str | None = Field(None, description="Cloudflare account id; gives the R2 endpoint.")
    ca_bundle: Path | None = Field(None, description="PEM file of the certificate authorities that sign the endpoint's "
                                   "TLS certificate (a private CA); default: boto3's (AWS_CA_BUNDLE, or certifi's).")
    namespace: str = Field("default", description="Key prefix, so several teams can share a bucket.")
    api_key: SecretStr | None = Field(None, description="ACCESS_KEY_ID:SECRET_ACCESS_KEY for S3 and R2 (with "
                                      "':SESSION_TOKEN' for temporary credentials).")
    part_size: int = Field(16 * MiB, ge=5 * MiB, le=5 * 1024 * MiB, description="Multipart upload part size.")
    download_threshold: int = Field(
        1024 * MiB, ge=0, description="Objects up to this size start as one streamed GET; larger in parallel ranges."
    )
    download_part_size: int = Field(64 * MiB, ge=1 * MiB, description="Ranged download part size.")
    stream_min_rate: int = Field(
        128 * MiB, ge=0, description="A streamed GET slower than this (bytes/s) over its first part hands the rest "
        "to parallel ranges; 0 never switches."
    )
    concurrency: int = Field(8, ge=1, le=64, description="Parallel parts per transfer.")
    max_attempts: int = Field(6, ge=1, le=20, description="Attempts per request (botocore retries with backoff).")
    read_timeout: int = Field(60, ge=1, le=3600, description="Seconds a request may wait for data before it is "
                              "retried (a server that stopped sending).")
    keep_versions: int = Field(1, ge=1, le=1000, description="Versions kept downloadable per name.")
    compression: Literal["stored", "deflated"] = Field("stored", description="Zip method for directories.")
    checksum_calculation: Literal["auto", "when_required", "when_supported"] = Field(
        "auto", description="boto3's request checksums (CRC32 per part, checked by the server): auto = "
        "when_supported on AWS S3, when_required on custom endpoints (some reject them); when_supported suits "
        "MinIO and moto."
    )

    @field_validator("service", mode="before")
    @classmethod
    def _service(cls, value: Any) -> Any:
        if isinstance(value, str):
            upper = value.strip().upper()
            if upper not in SERVICES:
                raise ValueError(f"unknown service; valid services are {', '.join(SERVICES)}")
            return upper
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        value = value.strip()
        if not _NAMESPACE_RE.match(value):
            raise ValueError("namespace must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or raw == "":
            return None
        return SecretStr(check_api_key(raw))

    @field_validator("bucket", "endpoint_url", "region", "r2_account_id", "ca_bundle", "local_root", "partial_dir",
                     mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator(*SIZE_SETTINGS, mode="before")
    @classmethod
    def _bytes(cls, value: Any, info: ValidationInfo) -> Any:
        return size_in_bytes(info.field_name, value)

    @field_validator("compression", "checksum_calculation", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        example = "e.g. https://minio.example.com:9000"
        try:
            parts = urlsplit(value)
            if parts.port == 0:  # .port raises for one that is no number up to 65535
                raise ValueError
        except ValueError:
            raise ValueError(f"endpoint_url is not a valid URL (host, and port from 1 to 65535); {example}") from None
        if parts.username is not None or parts.password is not None:  # never echoed: it holds a credential
            raise ValueError("endpoint_url must not hold credentials (user:secret@); put them in api_key")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint_url must be an http:// or https:// URL with a host; {example}")
        return value

    @field_validator("r2_account_id")
    @classmethod
    def _r2_account(cls, value: str | None) -> str | None:
        if value is not None and not _R2_ACCOUNT_RE.match(value.lower()):
            raise ValueError("r2_account_id must be the 32-character hex account id shown in the Cloudflare dashboard "
                             "(not the endpoint: for a full URL set endpoint_url)")
        return value.lower() if value else value

    @property
    def store_root(self) -> Path:
        """The LOCAL store folder (default: `<home>/store`)."""
        return resolved((self.local_root or storage_home() / "store").expanduser())

    @property
    def partials_folder(self) -> Path:
        """Where failed downloads keep what they fetched (default: `<home>/partial`)."""
        return (self.partial_dir or storage_home() / "partial").expanduser().absolute()

    @property
    def resolved_endpoint(self) -> str | None:
        """The endpoint URL, derived from the account id for R2."""
        if self.endpoint_url:
            return self.endpoint_url
        if self.service == "R2" and self.r2_account_id:
            return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"
        return None

    @property
    def custom_endpoint(self) -> bool:
        """Whether requests go to an S3-compatible store rather than AWS S3 (an endpoint not on amazonaws.com)."""
        endpoint = self.resolved_endpoint
        if endpoint is None:
            return False
        host = (urlsplit(endpoint).hostname or "").lower()
        return not host.endswith((".amazonaws.com", ".amazonaws.com.cn"))

    def secret_values(self) -> list[str]:
        """Strings that must never appear in output."""
        return [self.api_key.get_secret_value()] if self.api_key else []

    @model_validator(mode="wrap")
    @classmethod
    def _inputs_hidden(cls, data: Any, handler: ModelWrapValidatorHandler[StorageSettings]) -> StorageSettings:
        """Every way in (built, validated, from JSON, as another model's field) keeps the values given out of its
        validation error's details (validation.inputs_hidden)."""
        with inputs_hidden():
            return handler(data)

    def __setattr__(self, name: str, value: Any) -> None:  # refused (frozen), with the value in the details
        with inputs_hidden():
            super().__setattr__(name, value)

    @classmethod
    def model_validate_json(cls, *args: Any, **kwargs: Any) -> StorageSettings:  # JSON that does not parse
        with inputs_hidden():  # fails before any validator: its error holds the whole text
            return super().model_validate_json(*args, **kwargs)

    def masked_dict(self) -> dict[str, Any]:
        """Settings for display: JSON-able, with the API key masked."""
        data = self.model_dump(mode="json")
        data["api_key"] = "****" if self.api_key else None
        data["local_root"] = str(self.store_root)
        data["partial_dir"] = str(self.partials_folder)
        return data

    def __repr_args__(self) -> list[tuple[str | None, Any]]:  # keep reprs short and secret-free
        return [(k, v) for k, v in super().__repr_args__() if k != "api_key" or v is None] + (
            [("api_key", "****")] if self.api_key else []
        )

    @classmethod
    def resolve(cls, origin: str = "the argument", *, also_remote: Iterable[str] = (), **overrides: Any
                ) -> StorageSettings:
        """Explicit arguments, then FEDML_STORAGE_* variables, then the config file, then defaults; `origin`
        names where the explicit ones came from, for messages. `also_remote` names settings given beside these
        that, as a bucket does, mean a remote store."""
        refuse_unknown(overrides)
        values: dict[str, Any] = {k: v for k, v in read_config_file().items() if not is_unset(v)}
        sources = dict.fromkeys(values, str(config_path()))
        for field, (variable, env) in env_settings().items():
            values[field], sources[field] = env, variable
        _warn_unknown_variables()
        given = {k: v for k, v in overrides.items() if not is_unset(v)}
        values.update(given)
        sources.update(dict.fromkeys(given, origin))
        _r2_endpoint_from_closest(values, sources, origin)
        remote = sorted({k for k in _REMOTE_ONLY if k in given} | set(also_remote))
        if remote and "service" not in sources:  # e.g. a block or connection that names a bucket but no service
            raise NotConfigured(
                f"{origin} sets {' and '.join(remote)} but no service, and none is configured: the default, LOCAL, "
                f"would ignore {'it' if len(remote) == 1 else 'them'} and keep the data on this machine. Set "
                "service='S3' (AWS or another S3-compatible store) or 'R2' there, or 'LOCAL' if that is meant")
        return validate_settings(values, sources, origin)


def _r2_endpoint_from_closest(values: dict[str, Any], sources: dict[str, str], origin: str) -> None:
    """For R2, an account id set closer to the call than endpoint_url (argument, then variable, then file) decides
    the endpoint: a worker's FEDML_STORAGE_ENDPOINT_URL sent the R2 calls of a block naming its account elsewhere."""
    if "endpoint_url" in values and "r2_account_id" in values and str(values.get("service")).strip().upper() == "R2":
        def rank(source: str) -> int:
            return 2 if source == origin else 1 if source.startswith(ENV_PREFIX) else 0

        if rank(sources["r2_account_id"]) > rank(sources["endpoint_url"]):
            log.info("using R2 account %s's endpoint (from %s), not endpoint_url from %s", values["r2_account_id"],
                     sources["r2_account_id"], sources["endpoint_url"])
            del values["endpoint_url"]


def without_userinfo(url: str) -> str:
    """`url` with any user:secret@ part masked, for display (endpoint_url refuses one, but a repr shows input)."""
    if "@" not in url:
        return url
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)  # an endpoint has no other '@': mask up to the last
    return (scheme.group(0) if scheme else "") + "****@" + url.rpartition("@")[2]


_REMOTE_ONLY = ("bucket", "endpoint_url", "r2_account_id", "ca_bundle")  # settings LOCAL has no use for


def is_unset(value: Any) -> bool:
    """None or a blank string, secret or not (an empty variable, a form field left empty): the next source
    decides."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return value is None or (isinstance(value, str) and not value.strip())


def env_settings() -> dict[str, tuple[str, str]]:
    """The settings FEDML_STORAGE_* variables set: {setting: (variable, value)}."""
    found = {}
    for field in StorageSettings.model_fields:
        name = ENV_PREFIX + field.upper()
        value = os.environ.get(name)
        if value is not None and not is_unset(value):
            found[field] = (name, value)
    return found


def configured_here() -> bool:
    """Whether this machine configures fedml-storage itself: FEDML_STORAGE_* settings or a config file."""
    return bool(env_settings()) or config_path().is_file()


# The settings a framework may hold in plain fields (connection extras, block fields); the API key is a secret.
PLAIN_SETTINGS = tuple(k for k in StorageSettings.model_fields if k != "api_key")


def validate_settings(values: dict[str, Any], sources: dict[str, str] | None = None,
                      origin: str = "the argument") -> StorageSettings:
    """Build settings, turning validation errors into a secret-free InvalidInput naming where each bad value came
    from (`sources`: setting -> `origin` of explicit ones, variable or file) but never the value."""
    try:
        return StorageSettings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            field = ".".join(map(str, e["loc"])) or "settings"
            problem = f"{field}: {e['msg'].removeprefix('Value error, ')}"
            if sources and field in sources:  # where, not what: a value might be (part of) a pasted key
                problem += f" (from {sources[field]})"
            problems.append(problem)
        raise InvalidInput(f"invalid settings ({'; '.join(problems)}). Fix {origin}, the FEDML_STORAGE_* variable "
                           f"or {config_path()}.") from None


_warned: set[str] = set()


def _warn_unknown_variables() -> None:
    """Say once about a FEDML_STORAGE_* variable that is no setting (a typo is otherwise silently ignored)."""
    known = {ENV_PREFIX + "HOME", *(ENV_PREFIX + f.upper() for f in StorageSettings.model_fields)}
    for name in sorted(os.environ):
        if name.startswith(ENV_PREFIX) and name not in known and name not in _warned:
            _warned.add(name)
            close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX).lower(), [*StorageSettings.model_fields,
                                                                                     "home"], n=1)
            log.warning("ignoring %s: no such setting%s", name, f" (did you mean {ENV_PREFIX}{close[0].upper()}?)"
                        if close else f"; settings are {', '.join(sorted(known))}")


def setting_hints(names: Iterable[str], known: Iterable[str] = PLAIN_SETTINGS,
                  secret: re.Pattern[str] = re.compile(r"^api_key$"),
                  where_secrets_go: str = "secrets go in their own field") -> list[str]:
    """Each of `names` not in `known`, quoted, with the one likely meant, or where secrets go for a name that
    `secret` matches."""
    known = list(known)
    hints = []
    for name in sorted({str(n) for n in names} - set(known)):
        close = difflib.get_close_matches(name.lower(), known, n=1)
        hints.append(repr(name) + (f" ({where_secrets_go})" if secret.search(name) else
                                   f" (did you mean {close[0]!r}?)" if close else ""))
    return hints


def refuse_unknown(names: Iterable[str]) -> None:
    """Refuse names that are not settings (the caller's own arguments: a typo is theirs to fix)."""
    if unknown := set(names) - set(StorageSettings.model_fields):
        raise InvalidInput(f"unknown setting(s) {sorted(unknown)}; valid: {sorted(StorageSettings.model_fields)}")


def unknown_settings(names: Iterable[str]) -> str | None:
    """What is wrong with keys that are not plain settings (a typo, or the API key out of its place); None if
    every key is one. For wrappers reading settings from their framework's own fields."""
    hints = setting_hints(names)
    return f"unknown setting(s) {', '.join(hints)}; the settings are {', '.join(PLAIN_SETTINGS)}" if hints else None


def read_config_file() -> dict[str, Any]:
    """The saved settings, or {} when there is no config file."""
    path = config_path()
    try:
        if not (stat.S_ISREG(mode := path.stat().st_mode) or stat.S_ISDIR(mode)):  # a pipe blocks every read
            raise InvalidInput(f"config file {path} is not a regular file (a pipe or a device?); remove it")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise InvalidInput(f"config file {path} is not UTF-8 text (JSON); fix or remove it") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc.strerror}") from None
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077 and str(path) not in _warned:
        _warned.add(str(path))  # said once per process: every call reads the file
        log.warning("config file %s is readable by other users; run: chmod 600 %s", path, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise InvalidInput(f"config file {path} is not valid JSON; fix or remove it") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"config file {path} must hold a JSON object")
    known = {k: v for k, v in data.items() if k in StorageSettings.model_fields}
    unknown = sorted(set(data) - set(known))
    if unknown and f"{path} {unknown}" not in _warned:  # once per process, as above
        _warned.add(f"{path} {unknown}")
        log.warning("ignoring unknown keys in %s: %s", path, unknown)
    return known
