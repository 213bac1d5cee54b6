"""`FedMLStorage`: a Prefect block holding the settings of one FedML store (the API key as a secret)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound
from pydantic import (ConfigDict, Field, GetJsonSchemaHandler, PrivateAttr, SecretStr, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from fedml_storage import (PLAIN_SETTINGS, FedMLResponse, FedMLStorageError, Reason, ResponseCode, StorageClient,
                           StorageSettings, is_unset)
from fedml_storage.advice import kept_in, relative_paths, unattended_dest
from fedml_storage.api_keys import check_api_key
from fedml_storage.config import SERVICES, SIZE_SETTINGS, Service, setting_hints, size_in_bytes
from fedml_storage.validation import inputs_hidden

from .run_log import core_lines_in_run_log

_SECRET_NAME = re.compile(r"key|secret|token|password", re.I)  # a secret's field by another name (aws_secret_...)


def _core(setting: str) -> dict[str, Any]:
    """The core's description and limits of a setting, for a block field of the same name."""
    info = StorageSettings.model_fields[setting]
    limits = {attr: getattr(m, attr) for m in info.metadata for attr in ("ge", "le") if hasattr(m, attr)}
    return {"description": info.description, **limits}


class _ClassOnly:
    """A Block classmethod reachable on the class only; on an instance, an error naming `delete_data`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if obj is None:
            return Block.__dict__[self.name].__get__(None, cls)

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise TypeError(f"FedMLStorage.{self.name}() is Prefect's: it removes a saved block document. To remove "
                            "a dataset call storage.delete_data(name); to remove this block, FedMLStorage."
                            f"{self.name}(block_name)")
        return refuse


PREFECT_LISTING = "list_data() (or a block's list())"  # what shows the datasets stored, in Prefect
PREFECT_CALLS = {"delete": "delete_data(", "cleanup": "a FedMLStorage block's .cleanup"}  # what removes things
LOG_ADVICE = kept_in(PREFECT_LISTING, **PREFECT_CALLS)  # the core's log lines in Prefect's words
FLOW_DIR = "is where the flow run started (a worker's holds the flow code it pulled)"


def require_dest_path(dest_path: Any, who: str) -> None:
    """Refuse a flow's download without an absolute dest_path (FedMLStorageError, not retried)."""
    if why := unattended_dest(dest_path, who, "machine running the flow", FLOW_DIR):
        raise FedMLStorageError(FedMLResponse(ResponseCode.FAILURE, why, None, Reason.INVALID_INPUT.value))


class FedMLStorage(Block):
    """Where datasets live: the embedded LOCAL store, S3 (or any S3-compatible endpoint) or Cloudflare R2.

    Fields left empty fall back to fedml-storage's own configuration (FEDML_STORAGE_* variables, the
    config file, or the embedded LOCAL store). Datasets are removed with `delete_data`: `delete` is Prefect's
    own, which deletes a saved block document.
    """

    # a mistyped api_key (a list, a dict) is never echoed; an api_key assigned later is a SecretStr too
    model_config = ConfigDict(hide_input_in_errors=True, validate_assignment=True)
    _block_type_name = "FedML Storage"
    _block_type_slug = "fedml-storage"
    _logo_url = None
    _description = "Settings to move datasets through FedML storage (LOCAL, S3 or R2) from Prefect flows."
    _documentation_url = "https://pypi.org/project/fedml-storage/"  # type: ignore[assignment]  # Prefect takes text
    _code_example = """
```python
from prefect_tasks import FedMLStorage, upload_data

FedMLStorage(service="S3", bucket="ml-datasets", api_key="ACCESS_KEY_ID:SECRET_ACCESS_KEY").save("BLOCK_NAME")

storage = FedMLStorage.load("BLOCK_NAME")
upload_data("data/mnist", storage=storage)
```"""

    service: Service | None = Field(None, description=f"Storage service: {', '.join(SERVICES)}.")
    bucket: str | None = Field(None, **_core("bucket"))
    endpoint_url: str | None = Field(None, **_core("endpoint_url"))
    region: str | None = Field(None, **_core("region"))
    r2_account_id: str | None = Field(None, **_core("r2_account_id"))
    ca_bundle: str | None = Field(None, **_core("ca_bundle"))
    namespace: str | None = Field(None, **_core("namespace"))
    local_root: str | None = Field(None, **_core("local_root"))
    partial_dir: str | None = Field(None, **_core("partial_dir"))
    api_key: SecretStr | None = Field(None, **_core("api_key"))
    keep_versions: int | None = Field(None, **_core("keep_versions"))
    part_size: int | None = Field(None, **_core("part_size"))
    concurrency: int | None = Field(None, **_core("concurrency"))
    max_attempts: int | None = Field(None, **_core("max_attempts"))
    read_timeout: int | None = Field(None, **_core("read_timeout"))
    download_threshold: int | None = Field(None, **_core("download_threshold"))
    download_part_size: int | None = Field(None, **_core("download_part_size"))
    stream_min_rate: int | None = Field(None, **_core("stream_min_rate"))
    compression: Literal["stored", "deflated"] | None = Field(None, **_core("compression"))
    checksum_calculation: Literal["auto", "when_required", "when_supported"] | None = Field(
        None, **_core("checksum_calculation"))
    # (saved block name, salt, key digest) of an api_key not yet read back after unpickling (see __reduce_ex__)
    _saved_key: tuple[str, bytes, bytes] | None = PrivateAttr(None)
    _digest: tuple[Any, bytes, bytes] | None = PrivateAttr(None)  # (the key object, salt, digest): see _key_digest

    def __init__(self, *args: Any, **data: Any) -> None:
        with inputs_hidden():  # its errors keep their inputs, a malformed key among them, and pickle them
            super().__init__(*args, **data)

    def __setattr__(self, name: str, value: Any) -> None:
        with inputs_hidden():  # block.api_key = "...": validated on assignment
            super().__setattr__(name, value)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, values: Any) -> Any:
        """Refuse a field the block does not have (Prefect's blocks take any, and drop it): a typo, or boto3's and
        prefect-aws's names (region_name, aws_secret_access_key), whose secret would show among a flow's
        parameters."""
        if isinstance(values, dict):
            # an unknown field left unset (None) is a setting of a newer release that saved the block: harmless
            values = {k: v for k, v in values.items() if v is not None or k in cls.model_fields}
            given = [k for k in values if isinstance(k, str) and k != "block_type_slug" and not k.startswith("_")]
            hints = setting_hints(given, cls.model_fields, _SECRET_NAME,
                                  "the key pair goes in api_key, ACCESS_KEY_ID:SECRET_ACCESS_KEY")
            if hints:
                raise ValueError(f"FedMLStorage has no field {', '.join(hints)}; its fields are "
                                 f"{', '.join(cls.model_fields)}")
        return values

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        """The schema refuses an object holding "$ref": with no required field, a saved block picked as a deployment
        parameter ({"$ref": {"block_document_id": ...}}, what the UI sends) matched the block's own schema as well as
        Prefect's reference schema, and the server refused the run (409, "valid under each of")."""
        schema = handler(core_schema)
        handler.resolve_ref_schema(schema)["not"] = {"required": ["$ref"]}
        return schema

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key_form(cls, value: Any) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str) and not raw.strip():
            return None  # blank: unset, as in the core
        if raw is not None:
            check_api_key(raw)  # told now, not at the first upload; never echoed
        return value

    @field_validator("endpoint_url", mode="before")
    @classmethod
    def _endpoint_form(cls, value: Any) -> Any:
        """Told now, not at the first task: a saved block's fields show in Prefect's UI, and a user:secret@ part
        in the URL would show there (never echoed)."""
        if isinstance(value, str) and value.strip():
            try:
                StorageSettings(endpoint_url=value)
            except ValidationError as exc:
                raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return value

    @field_validator(*SIZE_SETTINGS, mode="before")
    @classmethod
    def _bytes(cls, value: Any, info: ValidationInfo) -> Any:
        """Sizes with a unit ('64MiB'), as the core and an Airflow connection's extra take them."""
        return size_in_bytes(info.field_name, value)

    @field_validator("service", mode="before")
    @classmethod
    def _service_any_case(cls, value: Any) -> Any:
        return (value.strip().upper() or None) if isinstance(value, str) else value  # blank: unset, as in the core

    @field_validator("compression", "checksum_calculation", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return (value.strip().lower() or None) if isinstance(value, str) else value

    def __reduce_ex__(self, protocol: Any) -> Any:
        """A saved block's api_key is pickled as a reference to the saved block (Prefect writes a background task's
        arguments, `.delay()`, to result storage): unpickling reads it from there, with the other fields as they
        were."""
        name, reference = self._block_document_name, self._pending_key()
        if reference is None or self.api_key is not None:
            if self.api_key is None or not name or self._is_anonymous:
                return super().__reduce_ex__(protocol)
            reference = (name, *self._key_digest())
        keyless = self.model_copy(update={"api_key": None})
        keyless._saved_key = None  # pickled the usual way, holding no key
        return _with_saved_key, (keyless, *reference)  # (unpickled, not read back yet: the same reference again)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private and private.get("_digest") is not None:  # holds the key object: never pickled
            state["__pydantic_private__"] = {**private, "_digest": None}
        return state

    def settings(self) -> dict[str, Any]:
        """The fields as core settings (only the ones set)."""
        self._read_saved_key()
        values = {k: getattr(self, k) for k in PLAIN_SETTINGS if k in type(self).model_fields}
        if self.api_key is not None:
            values["api_key"] = self.api_key.get_secret_value()
        return {k: v for k, v in values.items() if not is_unset(v)}

    def _key_digest(self) -> tuple[bytes, bytes]:
        """(salt, digest) of the api_key, made once per key: the digest is slow by design, and a block handed to
        many tasks is pickled for each."""
        cached = (self.__pydantic_private__ or {}).get("_digest")
        if cached is None or cached[0] is not self.api_key:
            salt = os.urandom(16)
            digest = _fingerprint(self.api_key, salt)
            assert digest is not None  # asked only of a block holding a key
            cached = self._digest = (self.api_key, salt, digest)
        return cached[1], cached[2]

    def _pending_key(self) -> tuple[str, bytes, bytes] | None:
        # (a block pickled by an earlier release has no such private attribute)
        return (self.__pydantic_private__ or {}).get("_saved_key")

    def _read_saved_key(self) -> None:
        """Read back an unpickled block's api_key from its saved block; ValueError if gone or not the same key."""
        pending = self._pending_key()
        if pending is None or self.api_key is not None:  # a key assigned since unpickling wins
            self._saved_key = None
            return
        name, salt, fingerprint = pending
        try:
            key = type(self).load(name, _sync=True).api_key  # type: ignore[call-arg, union-attr]  # async_dispatch
        except ValueError as gone:
            if not isinstance(gone.__cause__, ObjectNotFound):
                raise
            raise ValueError(f"this FedMLStorage block's api_key is read from the saved block {name!r} (it is never "
                             f"pickled), which cannot be found: {gone}. Save the block again under that name, or "
                             "load the block inside the task") from None
        if not hmac.compare_digest(_fingerprint(key, salt) or b"", fingerprint):
            raise ValueError(f"this FedMLStorage block's api_key is not the one saved as block {name!r} (changed "
                             "after loading, or the saved block changed since): save the block with its key, or "
                             "pass the saved block's name")
        self.api_key, self._saved_key = key, None

    def client(self, **overrides: Any) -> StorageClient:
        """A core client for this store; close it (or use it in a `with` block) when done.

        Its failures are raised, not logged by the core too: Prefect (or the caller) logs what is raised.
        """
        saved = getattr(self, "_block_document_name", None)
        block = f"the FedMLStorage block{f' {saved!r}' if saved else ''}"
        settings = self.settings()
        if why := relative_paths(settings, block, "machine running the flow"):
            raise FedMLStorageError(FedMLResponse(ResponseCode.FAILURE, why, None, Reason.INVALID_INPUT.value))
        return StorageClient(origin=f"{block} or the task's arguments", log_failures=False, key_means_remote=True,
                             advice=kept_in(PREFECT_LISTING, block, f"the api_key field of {block}", **PREFECT_CALLS),
                             **{**settings, **{k: v for k, v in overrides.items() if not is_unset(v)}})

    @contextlib.contextmanager
    def _calls(self) -> Iterator[StorageClient]:
        """A client for the methods below; in a run, what the core logs meanwhile goes to the run's log."""
        with core_lines_in_run_log(LOG_ADVICE), self.client() as client:
            yield client

    def upload(self, data_path: str, name: str | None = None, description: str | None = None,
               metadata: dict[str, str] | None = None, tag_list: list[str] | None = None, *,
               ignore_patterns: list[str] | str | None = None) -> dict[str, Any]:
        """Store a file or directory (without a folder's items matching `ignore_patterns`, .gitignore syntax);
        the upload's details. Raises FedMLStorageError on failure."""
        with self._calls() as client:
            return client.upload(data_path, name, description, metadata, tag_list,
                                 ignore_patterns=ignore_patterns).unwrap().to_dict()

    def download(self, name: str, dest_path: str | None = None, version: str | None = None) -> str:
        """Fetch a dataset into the folder `dest_path` (required); its absolute path."""
        require_dest_path(dest_path, "FedMLStorage.download")
        with self._calls() as client:
            return str(client.download(name, dest_path, version=version).unwrap())

    # On an instance, Prefect's delete/adelete (which remove a saved block document: `storage.delete("mnist")`
    # would remove a block named "mnist") refuse and point here; on the class they are Prefect's.
    delete: ClassVar[Any] = _ClassOnly("delete")
    adelete: ClassVar[Any] = _ClassOnly("adelete")

    def delete_data(self, name: str, missing_ok: bool = True) -> bool:
        """Remove a dataset; whether it was there to delete (with `missing_ok`, a name not stored returns False)."""
        with self._calls() as client:
            return client.delete(name, missing_ok=missing_ok).unwrap()

    def list(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """Every dataset's metadata as dicts (of names starting with `prefix`, when given)."""
        with self._calls() as client:
            return [m.to_dict() for m in client.list(prefix=prefix).unwrap()]

    def get_metadata(self, name: str) -> dict[str, Any]:
        """Stored metadata (including the user-defined dict) of a dataset."""
        with self._calls() as client:
            return client.get_metadata(name).unwrap().to_dict()

    def cleanup(self, older_than_seconds: float = 3600) -> dict[str, int]:
        """Remove what interrupted uploads left in this store (never published data, incomplete multipart uploads)
        older than the grace period; the counts. What a warning's "run cleanup() later" asks for."""
        with self._calls() as client:
            return client.cleanup(older_than_seconds).unwrap()


def _fingerprint(key: SecretStr | str | None, salt: bytes) -> bytes | None:
    """A slow salted digest telling whether two keys are the same without holding either, and costly to guess a
    weak key from."""
    if key is None:
        return None
    value = key.get_secret_value() if isinstance(key, SecretStr) else key
    return hashlib.pbkdf2_hmac("sha256", value.encode(), salt, 200_000)


def _with_saved_key(block: FedMLStorage, name: str, salt: bytes, fingerprint: bytes) -> FedMLStorage:
    """`block` with the api_key of the saved block `name`, which must be the key it was pickled with (see
    FedMLStorage.__reduce_ex__). Where it cannot be read back now, the block is still made and says why when it is
    used: a task worker that fails to unpickle a task's arguments leaves the run scheduled for ever, while a task
    that fails is seen, and retried where that can help."""
    block._saved_key = (name, salt, fingerprint)
    with contextlib.suppress(Exception):
        block._read_saved_key()
    return block
