"""The name an upload stores under: the reference's naming, told before the upload where it can be."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInput
from .validation import check_name, check_path


def stored_name(src: Path, name: str | None) -> str:
    """The reference's naming: a directory keeps `name` (or its own); a file keeps its extension."""
    if name is None:
        if not src.name:
            raise InvalidInput(f"cannot take a data name from {str(src)!r}; pass name=...")
        try:
            return check_name(src.name, new=True)
        except InvalidInput as exc:
            raise InvalidInput(f"{exc} (the name of {str(src)!r}); pass name=... to store it under another name") from None
    check_name(name, new=True)
    if src.is_file() and src.suffix and not Path(name).suffix:
        name += src.suffix
    return check_name(name, new=True)


def planned_name(data_path: str | os.PathLike, name: str | None = None, *, on_disk: bool = True) -> str | None:
    """The name `upload(data_path, name)` will store under, without reading the data (a path that does not
    exist yet keeps `name` as given); None when it cannot be told or the upload would refuse it.

    `on_disk=False` tells it from the strings alone, for code that runs elsewhere than the upload (an Airflow DAG
    file parsed by another machine): None where only the data can tell, for a name without an extension given a
    path with one (a file gains the extension, a folder does not), and for '.' or '..' as the path."""
    if not on_disk:
        if not isinstance(data_path, (str, os.PathLike)) or not isinstance(name, (str, type(None))):
            return None
        if name is None and Path(data_path).name in ("", ".."):  # the folder it is read in: not known here
            return None
        if name is not None and Path(data_path).suffix and not Path(name).suffix:
            return None
    try:
        return stored_name(check_path(data_path, "data_path"), name)
    except (InvalidInput, OSError):
        return None
