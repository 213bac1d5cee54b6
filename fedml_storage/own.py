"""fedml-storage's own files and folders (its home, config file, caches, LOCAL store, kept partial downloads):
an upload never takes them and a download never replaces them."""

from __future__ import annotations

import os
from pathlib import Path

from .config import StorageSettings, config_path, storage_home
from .backends.local import TMP_DIR
from .errors import InvalidInput
from .validation import resolved

_LABELS = ("home folder", "config file (which may hold your key)", "config lock", "cache", "LOCAL store",
           "kept partial downloads")


def own_paths(settings: StorageSettings) -> tuple[Path, ...]:
    """The home first, then what it (or the settings) place elsewhere; in the order of _LABELS."""
    home, config = storage_home(), config_path()
    return home, config, config.parent / ".config.lock", home / "cache", settings.store_root, settings.partials_folder


def check_source(src: Path, own: tuple[Path, ...], namespace: str) -> None:
    """Refuse to upload one of them, or something inside one (but the home, and a LOCAL root's folders beside the
    namespace's, its temp folder and its lock: they may be broad folders of the user's, as downloads take them)."""
    inner = [resolved(path) for path in own[1:]]
    where, store = resolved(src), inner[_LABELS.index("LOCAL store") - 1]
    if any(where == path or (path in where.parents and not (path == store and _beside_store(where, store, namespace)))
           for path in inner):
        raise InvalidInput(f"data_path {str(src)!r} is fedml-storage's own (its config file, which may hold your key, "
                           "its caches, its LOCAL store or kept partial downloads), not data to upload; upload data "
                           "from elsewhere")


def _beside_store(where: Path, root: Path, namespace: str) -> bool:
    """Whether `where`, inside a LOCAL root, lies beside the store's parts there: the namespace's folder, the temp
    folder and the lock (other namespaces' folders are data of their own to upload, if one wants)."""
    return where.relative_to(root).parts[0] not in (namespace, TMP_DIR, ".lock")


def check_target(target: Path, settings: StorageSettings) -> None:
    """Refuse a download target that is one of them, holds one, or lies in a folder whose contents are theirs (the
    cache, the namespace's part of the LOCAL store, partial_dir): replacing it would lose stored data or the saved
    key. A LOCAL root may be a broad folder: only its namespace folders are the store's."""
    where = resolved(target.parent) / target.name  # a link there is replaced itself, not what it points to
    home, config, lock, cache, store, partials = own = own_paths(settings)
    contents_too = (None, None, None, cache, store / settings.namespace, partials)  # a target inside is theirs too
    for label, path, folder in zip(_LABELS, own, contents_too):
        if any(form.is_relative_to(where) for form in _forms(path)):
            _refuse(target, label, path)
        if folder is not None and any(where.is_relative_to(form) for form in _forms(folder)):
            _refuse(target, label, folder)


def _forms(path: Path) -> set[Path]:
    """The path as written (absolute) and with links resolved: a link to the store is its place too."""
    return {Path(os.path.abspath(path)), resolved(path)}


def _refuse(target: Path, label: str, path: Path) -> None:
    raise InvalidInput(f"{target} is, holds or lies in fedml-storage's {label} ({path}), which a download "
                       "there would replace or mix with; download into another dest_path")
