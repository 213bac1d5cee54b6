"""Checks of user input, with messages that say what to change."""

from __future__ import annotations

import contextlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from .api_keys import looks_like_key
from .errors import InvalidInput

MAX_NAME_BYTES = 200  # in UTF-8, for new names: leaves room for '.json'/'.zip' in a file system's 255-byte names
MAX_STORED_NAME_BYTES = 1000  # what an S3 key can hold: older, longer names stay readable and deletable
RESERVED_PREFIX = ".fedml-download-"  # temp files of downloads; a dataset of that name would be swept with them
MAX_USER_METADATA_BYTES = 16 * 1024
MAX_DESCRIPTION_LENGTH = 4096
MAX_TAGS = 64
MAX_TAG_LENGTH = 256
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


@contextlib.contextmanager
def inputs_hidden() -> Iterator[None]:
    """Raise a validation error of the block as one without the values given (`without_inputs`)."""
    try:
        yield
    except ValidationError as exc:
        raise without_inputs(exc) from None


def without_inputs(exc: ValidationError) -> ValidationError:
    """The same validation error without the values given: its str hides them, but its details (`errors()`) and
    its pickle (Prefect writes a failed run's exception to result storage) keep them, and a value may be a key or
    hold one (an endpoint's user:secret@)."""
    # as custom errors of the same type and message: from_exception_data knows only pydantic-core's own types
    # (path_type, from pydantic's Python side, raised KeyError)
    details: list[Any] = [{"type": PydanticCustomError(e["type"], e["msg"]), "loc": e["loc"],  # (without a context
                           "input": "<hidden>"} for e in exc.errors()]  # its message is kept as it is, braces too)
    return ValidationError.from_exception_data(exc.title, details, hide_input=True)


def check_path(value: Any, what: str) -> Path:
    """The absolute local path a user gave as `what` ('data_path must be ...'); unusable ones are InvalidInput."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise InvalidInput(what)
    text = os.fspath(value)
    if isinstance(text, bytes) or "\0" in text:
        raise InvalidInput(f"{what}; {value!r} is not a usable path (bytes or a NUL character)")
    try:
        return Path(text).expanduser().absolute()
    except RuntimeError:  # '~someone' for a user this system does not know
        raise InvalidInput(f"{what}; {text!r} names a home folder (~user) this system does not know") from None


def resolved(path: Path) -> Path:
    """`path` with its links resolved; a loop of links is InvalidInput (Python 3.11 raises RuntimeError)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise InvalidInput(f"{path} leads into a loop of links ({type(exc).__name__}: {exc}); fix or remove the "
                           "links") from None


def check_progress_desc(desc: Any) -> None:
    if desc is not None and not isinstance(desc, str):
        raise InvalidInput(f"progress_desc must be a string (the progress bar's label), not {type(desc).__name__}")


def check_name(name: Any, *, new: bool = False) -> str:
    """A stored name: one path component, printable, not '.' or '..'; `new` for a name about to be stored."""
    if not isinstance(name, str):
        shown = f" {name!r}" if isinstance(name, (int, float)) else ""
        raise InvalidInput(f"a data name must be a string, not {type(name).__name__}{shown}; pass str(...)")
    if not name.strip():
        raise InvalidInput("a data name must be a non-empty string")
    if looks_like_key(name):  # a key passed where a name goes: it would land in names, logs and object keys
        raise InvalidInput("the data name is shaped like an access key pair (KEY_ID:SECRET), so it is refused and not "
                           "shown: pass a key as api_key (in a pipeline, in its connection or block), never as a name")
    if name in (".", "..") or "/" in name or "\\" in name:
        raise InvalidInput(f"invalid data name {name!r}: it must be one name, without '/' or '\\', and not '.' or "
                           "'..' (dots inside a name, as in 'weights.pt', are fine)")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in name):
        raise InvalidInput(f"invalid data name {name!r}: control characters and line breaks are not allowed")
    if name != name.strip():
        raise InvalidInput(f"invalid data name {name!r}: remove leading or trailing spaces")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInput(f"invalid data name {name!r}: it is not valid Unicode (undecodable file name?)") from None
    limit = MAX_NAME_BYTES if new else MAX_STORED_NAME_BYTES
    if size > limit:
        raise InvalidInput(f"data name is {size} bytes long in UTF-8; at most {limit} are allowed")
    if new and name.startswith(RESERVED_PREFIX):  # stored earlier: still listed, described and deletable
        raise InvalidInput(f"invalid data name {name!r}: names starting with {RESERVED_PREFIX!r} are reserved")
    return name


def _unicode(text: str, what: str) -> None:
    """Refuse text that cannot be stored as UTF-8 (a lone surrogate, from an undecodable file name or variable)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode (text from an undecodable file name or environment "
                           "variable?); pass it as proper text") from None


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """User metadata: a dict of string keys and string values, at most 16 KiB as JSON."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a dict of strings, not {type(metadata).__name__}")
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise InvalidInput(f"metadata keys and values must be strings; fix the entries {bad[:5]!r}")
    for key, value in metadata.items():
        _unicode(key + value, f"metadata entry {key!r}")
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > MAX_USER_METADATA_BYTES:
        raise InvalidInput(
            f"metadata is {size} bytes as JSON; at most {MAX_USER_METADATA_BYTES} are allowed. "
            "Store large metadata as a file in the dataset"
        )
    return dict(metadata)


def metadata_value_as_stored(value: Any) -> str | None:
    """A value to compare with stored user metadata, whose values are text: a whole number as its text (a template
    rendered as a native object turns "3" into 3); any other value but text or None is refused (3.10 renders 3.1)."""
    if value is None or isinstance(value, str):
        return value
    whole = isinstance(value, int) and not isinstance(value, bool)
    if whole and abs(value) < 10 ** 100:  # (str() refuses huge ones)
        return str(value)
    shown = "of over 100 digits" if whole else repr(value)
    raise InvalidInput(f"metadata_value {shown} is a {type(value).__name__}, never stored: user-metadata values are "
                       "text, and this one may not read as the text stored (3.10 becomes 3.1); pass the stored text "
                       "(a template rendered as a native object keeps it text when quoted: \"'{{ ... }}'\")")


def check_tags(tags: Any) -> list[str] | None:
    """Tags: a list of non-empty strings, at most MAX_TAGS different ones of at most MAX_TAG_LENGTH characters."""
    if tags is None:
        return None
    if isinstance(tags, str) or not isinstance(tags, (list, tuple)):
        raise InvalidInput("tag_list must be a list of strings, e.g. ['images', 'v2']")
    if not all(isinstance(t, str) and t.strip() for t in tags):
        raise InvalidInput("tag_list must hold non-empty strings, e.g. ['images', 'v2']")
    unique = list(dict.fromkeys(t.strip() for t in tags))
    for tag in unique:
        _unicode(tag, f"tag {tag[:40]!r}")
    if len(unique) > MAX_TAGS:
        raise InvalidInput(f"tag_list holds {len(unique)} different tags; at most {MAX_TAGS} are allowed")
    for tag in unique:
        if len(tag) > MAX_TAG_LENGTH:
            raise InvalidInput(f"tag {tag[:40]!r}... is {len(tag)} characters long; at most {MAX_TAG_LENGTH} are "
                               "allowed (a tag labels a dataset; put longer text in description or metadata)")
    return unique


def check_description(description: Any) -> str | None:
    """Description: a string of at most 4096 characters."""
    if description is None:
        return None
    if not isinstance(description, str):
        raise InvalidInput("description must be a string")
    _unicode(description, "description")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidInput(f"description is longer than {MAX_DESCRIPTION_LENGTH} characters")
    return description


def check_prefix(prefix: Any) -> str:
    """A listing's name prefix ("" for every name); one that no name can start with is InvalidInput."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise InvalidInput(f"prefix must be a string (the start of dataset names), not {type(prefix).__name__}")
    _unicode(prefix, "prefix")
    if any(ch in "/\\" or unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in prefix):
        raise InvalidInput(f"prefix {prefix!r} holds a character no dataset name has ('/', '\\', a control "
                           "character or line break); give the start of the names to list")
    if prefix != prefix.lstrip():
        raise InvalidInput(f"prefix {prefix!r} starts with a space, as no dataset name does; remove it")
    if len(prefix.encode("utf-8")) > MAX_STORED_NAME_BYTES:
        raise InvalidInput(f"prefix is longer than any dataset name ({MAX_STORED_NAME_BYTES} bytes in UTF-8)")
    return prefix


def byte_size(value: Any) -> Any:
    """A size given as text with a unit ('16MiB', '64 MB', '1g'; binary multiples, as the AWS CLI reads them) in
    bytes; text without one as it is, for the field's own check (so are values that are not text)."""
    if not isinstance(value, str) or value.strip().isdigit():
        return value
    if not (found := _SIZE.fullmatch(value)) or not found.group(2) and "." in found.group(1):  # 1.9 bytes
        raise ValueError("give a whole number of bytes, or a size with a unit, e.g. 16MiB, 64 MB or 1GiB")
    number, unit = found.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))
