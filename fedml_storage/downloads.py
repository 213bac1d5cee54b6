"""Fetching a dataset: stream to a temp file beside the destination, verify, extract, rename into place."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from .archive import HashingWriter, safe_extract, umask
from .backends.base import ObjectMissing
from .catalog import Catalog
from .errors import Conflict, IntegrityError, InvalidInput, NotFound
from .progress import DOWNLOAD_DESC, progress_bar
from .results import DownloadResult
from .validation import RESERVED_PREFIX, check_name

TEMP_PREFIX = RESERVED_PREFIX
STALE_TEMP_SECONDS = 24 * 3600  # temps that no lock tells about (Windows; moved-aside folders) go after a day
CLAIM_GRACE_SECONDS = 60  # a part file just created may not be locked yet
SWAP_ATTEMPTS = 5  # renames tried when other downloads into the same folder keep replacing the target
FETCH_ATTEMPTS = 3  # a dataset replaced mid-download is fetched again, up to this often

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
    record = catalog.get(name).find(version)
    created = _make_folder(dest)
    _remove_stale_temps(dest)
    target = dest / name
    part: str | None = None
    unpacked: Path | None = None
    claim: int | None = None
    done = False
    try:
        fd, part = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=dest)
        claim = _claim(part)
        with os.fdopen(fd, "w+b") as fh:
            for attempt in range(FETCH_ATTEMPTS):
                fh.seek(0)
                fh.truncate()
                writer = HashingWriter(fh)
                try:
                    with progress_bar(record.size, show_progress, out_progress_to_err,
                                      progress_desc or DOWNLOAD_DESC) as adv:
                        catalog.store.get_into(record.key, writer, record.size, adv)
                    break
                except ObjectMissing:
                    # Most often a writer replaced the dataset (and dropped this data) after we read the catalog:
                    # read it again and fetch what it names now.
                    fresh = catalog.get(name).find(version)
                    if fresh.key != record.key and attempt + 1 == FETCH_ATTEMPTS:
                        raise Conflict(f"{name!r} kept being replaced while downloading it; try again") from None
                    if fresh.key == record.key:
                        raise NotFound(
                            f"the data of {name!r} version {record.version} is missing from the store although the "
                            "catalog lists it (removed outside fedml-storage, or by a cleanup with too short a grace "
                            "period); upload the dataset again to store it anew"
                        ) from None
                    log.info("%r changed while downloading it; fetching version %s", name, fresh.version)
                    record = fresh
            if writer.size != record.size or writer.sha256.hexdigest() != record.sha256:
                raise IntegrityError(
                    f"the stored data of {name!r} version {record.version} is corrupt (sha256 or size does not "
                    "match its manifest); nothing was written. Upload the dataset again"
                )
            if record.kind != "file":
                unpacked = Path(part).with_suffix(".d")  # lives as long as the claimed part file
                unpacked.mkdir()
                fh.flush()
                safe_extract(fh, unpacked, record.source_size)  # the handle that was verified, not a reopen
        if record.kind == "file":
            if target.is_dir() and not target.is_symlink():
                raise InvalidInput(f"{target} is a folder; remove it or download into another dest_path")
            os.chmod(part, 0o666 & ~umask())  # mkstemp made it private; a download gets the usual mode
            os.replace(part, target)
        else:
            os.chmod(unpacked, 0o777 & ~umask())
            _swap_in(unpacked, target, Path(part).with_suffix(".old"))
            unpacked = None
        done = True
    finally:
        if unpacked is not None:  # before the part file: a folder without one is taken for a killed download's
            shutil.rmtree(unpacked, ignore_errors=True)
        if part is not None:
            Path(part).unlink(missing_ok=True)
        if claim is not None:
            os.close(claim)
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


def _claim(part: str) -> int | None:
    """Lock our part file for the whole download, so that other downloads can tell it is live; the lock's fd."""
    if fcntl is None:
        return None
    fd = os.open(part, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # no locks on this filesystem: then no other download can take the file for abandoned either
        pass
    return fd


def _abandoned(part: Path) -> bool:
    """Whether no live download holds this part file (it could be locked, so its owner is gone)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(part, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held by a live download, or no locks here: cannot tell
        return False
    finally:
        os.close(fd)


def _remove_stale_temps(dest: Path) -> None:
    """Remove what killed downloads left in `dest`: a part file no live download holds, with its unpacked
    folder, at once (after a minute's grace for one being created); anything else of ours after a day."""
    now = time.time()
    for leftover in dest.glob(TEMP_PREFIX + "*"):
        try:
            age = now - leftover.lstat().st_mtime
            if age < CLAIM_GRACE_SECONDS:
                continue
            if leftover.suffix == ".part":
                if not (_abandoned(leftover) or age > STALE_TEMP_SECONDS):
                    continue
                for sibling in _SIBLINGS:
                    _remove(leftover.with_suffix(sibling))
            elif not (age > STALE_TEMP_SECONDS or (leftover.suffix in _SIBLINGS and _orphan(leftover))):
                continue
            _remove(leftover)
            log.info("removed %s, left by an interrupted download", leftover)
        except OSError:
            pass  # another download's cleanup got there first, or it is not ours to remove


_SIBLINGS = (".d", ".old")  # what a download names after its part file: the unpacked folder, the replaced copy


def _orphan(unpacked: Path) -> bool:
    """A sibling of a part file that is gone: a live download removes its siblings first."""
    return fcntl is not None and not unpacked.with_suffix(".part").exists()


def _swap_in(new: Path, target: Path, aside: Path) -> None:
    """Rename `new` to `target`, replacing what is there in one step where the system can (no moment without a
    copy at `target`, even if the process is killed); elsewhere move it to `aside` first (a name the download's
    lock covers) and put it back on failure.

    Downloads into the same folder at once may race here: the last rename wins and nothing is left behind.
    """
    for _ in range(SWAP_ATTEMPTS):
        if os.path.lexists(target):
            try:
                if _exchange(new, target):
                    _remove(new)  # now the replaced copy
                    return
            except FileNotFoundError:
                pass  # another download moved it aside meanwhile
        old: Path | None = None
        try:
            if os.path.lexists(target):
                try:
                    os.rename(target, aside)
                    old = aside
                except FileNotFoundError:
                    pass  # another download moved it aside first
            try:
                os.rename(new, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    if old is not None and not os.path.lexists(target):
                        os.rename(old, target)
                        old = None
                    raise
            # another download renamed its copy in since we looked: move that aside in turn
        finally:
            if old is not None:
                _drop_or_keep(old, target)
    raise Conflict(f"{target} kept being replaced by other downloads into {target.parent}; download into "
                   "separate folders (nothing of this download was left there)")


def _drop_or_keep(old: Path, target: Path) -> None:
    """Remove the copy moved aside once another is in place; else keep it beside the target, and say where."""
    if os.path.lexists(target):
        _remove(old)
        return
    kept = target.with_name(f"{target.name}.previous-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        os.rename(old, kept)
    except OSError:
        kept = old
    log.error("the previous %s could not be put back; it is kept at %s", target, kept)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False  # an old kernel, a filesystem without it, or a sandbox that forbids it
    raise OSError(err, os.strerror(err), str(a), None, str(b))
