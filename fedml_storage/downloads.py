"""Fetching a dataset: stream to a temp file beside the destination, verify, extract, rename into place."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from .archive import HashingWriter, safe_extract, umask
from .backends.base import ObjectMissing
from .catalog import Catalog
from .errors import IntegrityError, InvalidInput, NotFound
from .progress import DOWNLOAD_DESC, progress_bar
from .results import DownloadResult
from .validation import RESERVED_PREFIX, check_name

TEMP_PREFIX = RESERVED_PREFIX
STALE_TEMP_SECONDS = 24 * 3600

log = logging.getLogger("fedml_storage")


def download(
    catalog: Catalog,
    data_name: str,
    dest_path: str | os.PathLike | None,
    version: str | None = None,
    show_progress: bool = True,
    out_progress_to_err: bool = True,
    progress_desc: str | None = None,
) -> DownloadResult:
    """Place the dataset at `dest_path/<name>`; on any failure nothing new is left there."""
    started = time.monotonic()
    name = check_name(data_name)
    if name.startswith(TEMP_PREFIX):
        raise InvalidInput(f"{name!r} cannot be downloaded: names starting with {TEMP_PREFIX!r} are reserved for "
                           "download temp files (it was stored by an older version). Its data is at the download_url of "
                           "get_storage_metadata; delete() removes it")
    if dest_path is not None and not isinstance(dest_path, (str, os.PathLike)):
        raise InvalidInput("dest_path must be a folder path")
    dest = Path(dest_path or os.getcwd()).expanduser().absolute()
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"dest_path {str(dest)!r} is a file; give a folder to download into")
    manifest = catalog.get(name)
    record = manifest.find(version)
    created = _make_folder(dest)
    _remove_stale_temps(dest)
    target = dest / name
    part: str | None = None
    unpacked: Path | None = None
    done = False
    try:
        fd, part = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=dest)
        with os.fdopen(fd, "w+b") as fh:
            writer = HashingWriter(fh)
            with progress_bar(record.size, show_progress, out_progress_to_err, progress_desc or DOWNLOAD_DESC) as adv:
                try:
                    catalog.store.get_into(record.key, writer, record.size, adv)
                except ObjectMissing:
                    raise NotFound(
                        f"the data of {name!r} version {record.version} is missing from the store (deleted or "
                        "replaced meanwhile?); list it again and retry"
                    ) from None
            if writer.size != record.size or writer.sha256.hexdigest() != record.sha256:
                raise IntegrityError(
                    f"the stored data of {name!r} version {record.version} is corrupt (sha256 or size does not "
                    "match its manifest); nothing was written. Upload the dataset again"
                )
            if record.kind != "file":
                unpacked = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=dest))
                fh.flush()
                safe_extract(fh, unpacked, record.source_size)  # the handle that was verified, not a reopen
        if record.kind == "file":
            if target.is_dir() and not target.is_symlink():
                raise InvalidInput(f"{target} is a folder; remove it or download into another dest_path")
            os.chmod(part, 0o666 & ~umask())  # mkstemp made it private; a download gets the usual mode
            os.replace(part, target)
        else:
            os.chmod(unpacked, 0o777 & ~umask())
            _swap_in(unpacked, target)
            unpacked = None
        done = True
    finally:
        if part is not None:
            Path(part).unlink(missing_ok=True)
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
        if not done:
            for folder in created:  # deepest first; only what this call made, and only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    return DownloadResult(
        str(target), name=name, path=str(target), version=record.version, sha256=record.sha256, size=record.size,
        seconds=round(time.monotonic() - started, 3), kind=record.kind,
    )


def _make_folder(dest: Path) -> list[Path]:
    """Create `dest` and missing parents; the folders created, deepest first."""
    missing = []
    for folder in (dest, *dest.parents):
        if folder.exists():
            break
        missing.append(folder)
    dest.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_stale_temps(dest: Path) -> None:
    """Remove what killed downloads left in `dest` (untouched for a day: no live download is that idle)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for leftover in dest.glob(TEMP_PREFIX + "*"):
        try:
            if leftover.lstat().st_mtime >= cutoff:
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            log.info("removed %s, left by an interrupted download", leftover)
        except OSError:
            pass  # another download's cleanup got there first, or it is not ours to remove


def _swap_in(new: Path, target: Path) -> None:
    """Rename `new` to `target`, replacing what was there; restore it if the rename fails."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target.parent)) / "old"
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old.parent, ignore_errors=True)
