"""Writing the config file: a whole new copy, 0600, renamed into place; copies left by killed writers removed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

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
