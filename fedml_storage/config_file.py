"""Writing the config file: settings merged and validated under a lock, a whole new copy, 0600, renamed into
place; copies left by killed writers removed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .config import config_path, env_settings, is_unset, read_config_file, refuse_unknown, validate_settings
from .errors import InvalidInput
from .locks import exclusive_lock
from .modes import own_plain_file

_TEMP_PREFIX, _TEMP_SUFFIX = ".fedml-storage-config-", ".tmp"
_TEMP_NAME = re.compile(re.escape(_TEMP_PREFIX) + "[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX))  # as mkstemp names it


def replace_config(target: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `target` atomically, mode 0600. Call it under the lock every writer holds."""
    _remove_killed_writes(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            with contextlib.suppress(OSError):  # mkstemp's mode is 0600 already; a file system may refuse
                os.chmod(tmp, 0o600)
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_killed_writes(folder: Path) -> None:
    """Remove the copies writers killed before their rename left (maybe with a key): only files named as they name
    them, plain and of this user's."""
    for stale in folder.glob(_TEMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            st = stale.lstat()
            if _TEMP_NAME.fullmatch(stale.name) and own_plain_file(st):
                stale.unlink()


def overridden_note(fields: Iterable[str]) -> str:
    """'; X, set in the environment, still ...' for saved settings a FEDML_STORAGE_* variable takes precedence over."""
    env = env_settings()
    names = [env[f][0] for f in fields if f in env]
    if not names:
        return ""
    one = len(names) == 1
    return (f"; {' and '.join(names)}, set in the environment, still take{'s' if one else ''} precedence over what "
            f"was saved (unset {'it' if one else 'them'} to use the saved value{'' if one else 's'})")


def write_config_file(updates: dict[str, Any]) -> Path:
    """Merge `updates` into the config file (None or blank removes a key), validated, written 0600 atomically;
    concurrent writers (two `fedml_login`s, a login and a `configure`) each keep the other's settings."""
    refuse_unknown(updates)
    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            target = path.resolve() if path.is_symlink() else path  # a config kept elsewhere stays there
        except (RuntimeError, OSError):  # a link loop (RuntimeError before Python 3.13)
            raise InvalidInput(f"the config file {path} is a link that loops; remove the link") from None
        if not target.parent.is_dir():
            raise InvalidInput(f"the config file {path} links to {target}, in a folder that does not exist; create "
                               "that folder or remove the link")
        with exclusive_lock(target.parent / ".config.lock"):
            data = read_config_file()
            for key, value in updates.items():
                if is_unset(value):
                    data.pop(key, None)
                else:
                    data[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
            settings = validate_settings(data)
            for key in ("local_root", "partial_dir"):  # told now, not by every call after
                folder = getattr(settings, key)
                if not is_unset(updates.get(key)) and folder is not None and \
                        (where := folder.expanduser()).exists() and not where.is_dir():
                    raise InvalidInput(f"{key} {str(folder)!r} is not a folder: name a folder (it is made when first "
                                       "used)")
            if not is_unset(updates.get("ca_bundle")):  # told now, not by every call after
                from .backends.s3_client import ca_bundle_path  # (botocore: imported only when it is needed)

                ca_bundle_path(settings)
            data = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
            used = settings.model_dump(mode="json", exclude={"api_key"})
            for key in set(data) & set(updates) - {"api_key"}:  # as used: "S3", not " s3 "; 16, not "16"
                data[key] = used[key]
            for key in ("local_root", "partial_dir", "ca_bundle"):  # saved absolute: else they move with the cwd
                if data.get(key):
                    data[key] = str(Path(data[key]).expanduser().absolute())
            replace_config(target, data)
    except PermissionError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise InvalidInput(f"cannot write the config file {path}: {exc.strerror}{where}; fix its permissions or set "
                           "FEDML_STORAGE_HOME to a folder of yours") from None
    return path
