"""Fetching a dataset: stream to a temp file beside the destination, verify, extract, rename into place."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from . import partials, stops
from .archive import HashingWriter, safe_extract
from .backends.base import ObjectMissing
from .backends.ranges import RangeIgnored
from .catalog import Catalog, VersionRecord
from .dest_temps import TEMP_PREFIX, new_part, remove, swap_in, sweep
from .digests import DigestCache
from .errors import Conflict, IntegrityError, InvalidInput, NotFound, TransientError, name_folder
from .local_match import MADE, download_mode, folder_made, holds_already, place_file
from .made import MadeTree
from .progress import DOWNLOAD_DESC, progress_bar
from .removal import mount_points
from .results import DownloadResult, human_size
from .validation import check_name, check_path, check_progress_desc, resolved

FETCH_ATTEMPTS = 3  # a dataset replaced mid-download is fetched again, up to this often
# A file this large is remembered as downloaded: hashing it on a re-run costs more than the wait for the
# filesystem's clock that remembering takes (a tick or two on kernels before 6.13).
RECORD_FILE_BYTES = 16 << 20

log = logging.getLogger("fedml_storage")


def download(
    catalog: Catalog,
    data_name: str,
    dest_path: str | os.PathLike | None,
    version: str | None = None,
    show_progress: bool = True,
    out_progress_to_err: bool = True,
    progress_desc: str | None = None,
    partial_dir: Path | None = None,
    check_target: Callable[[Path], None] | None = None,
    cache: DigestCache | None = None,
    confirm_replace: Callable[[Path], bool] | None = None,
) -> DownloadResult:
    """Place the dataset at `dest_path/<name>`; on any failure nothing new is left there. What a failed fetch got
    is kept in `partial_dir` (when on dest's filesystem) for the next download of the same data to go on from.
    `check_target` refuses a target (dest/name) before anything is fetched. Given the digest `cache`, a target
    that holds exactly this version already is kept as it is and nothing is fetched. `confirm_replace` is asked
    before an existing target is replaced; False leaves it and fetches nothing."""
    started = time.monotonic()
    name = check_name(data_name)
    check_progress_desc(progress_desc)
    dest = _dest_folder(name, dest_path)
    if check_target is not None:
        check_target(dest / name)
    record = catalog.get(name).find(version)
    created = _make_folder(dest)
    sweep(dest, None if partial_dir is None else functools.partial(partials.keep_killed, partial_dir, record.sha256))
    if partial_dir is not None:
        partials.sweep(partial_dir)
    target = dest / name
    if cache is not None and holds_already(target, record, cache):
        return _result(target, name, record, started, catalog, replaced=False, skipped=True)
    if confirm_replace is not None and os.path.lexists(target):
        _check_target(target, record.kind)  # not asked, then refused: a folder where a file goes, a mount point
        _confirmed(confirm_replace, target)
    part: Path | None = None
    note: partials.Note | None = None
    unpacked: Path | None = None
    made: MadeTree | None = None
    claim: int | None = None
    tries: list[tuple[HashingWriter, VersionRecord]] = []  # the last: what was fetched, of which data
    adopted = 0
    keep_in: Path | None = None  # where what was fetched stays for a later try
    done = False
    try:
        _check_target(target, record.kind)
        fd, part, claim, adopted = new_part(
            dest, None if partial_dir is None else lambda tmp: partials.take(partial_dir, record.sha256, tmp))
        if partial_dir is not None:
            note = partials.Note(part.with_suffix(".sha"))
        _check_space(dest, record.size - adopted + (record.source_size if record.kind != "file" else 0),
                     record.kind != "file")
        with os.fdopen(fd, "r+b") as fh:
            record = _fetch(catalog, name, version, record, fh, adopted if adopted <= record.size else 0, tries,
                            note, show_progress, out_progress_to_err, progress_desc)
            if record.kind != "file":
                unpacked = part.with_suffix(".d")
                unpacked.mkdir(mode=0o700)  # private while files land (folders get their modes at the end)
                made = _extract(fh, unpacked, name, record, cache is not None)
        stops.check()  # a stopped download leaves dest as it was
        if record.kind == "file":
            replaced = _file_into_place(part, target, record, cache)
        else:
            mode = download_mode(record)
            assert unpacked is not None  # made above for a folder
            row = None if made is None else folder_made(unpacked, mode, made, part)  # while private
            replaced = _swap_folder(unpacked, mode, target, part)
            unpacked = None
            if row is not None and cache is not None:  # a re-run's check of the copy then reads no file
                cache.store_tree(MADE + str(target), row, record.sha256, 0, settled=True)
        done = True
    except IntegrityError:
        raise
    except BaseException as exc:  # a break, a full disk, Ctrl-C, a timeout: what was fetched may serve again
        keep_in = partial_dir
        name_folder(exc, dest, str(dest / TEMP_PREFIX))
        raise
    finally:
        if unpacked is not None:  # before the part file: a folder without one is taken for a killed download's
            remove(unpacked)  # opening up folders the archive made read-only
        if part is not None:
            if not (keep_in is not None and partials.keep(keep_in, *_fetched(part, tries, record, adopted))):
                part.unlink(missing_ok=True)
        if note is not None:
            note.remove()
        if claim is not None:
            os.close(claim)
        if not done:
            for folder in created:  # deepest first; only what this call made, and only while empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    return _result(target, name, record, started, catalog, replaced=replaced, skipped=False)


def _dest_folder(name: str, dest_path: str | os.PathLike | None) -> Path:
    """The folder to download `name` into (the working directory by default), checked."""
    if name.startswith(TEMP_PREFIX):
        raise InvalidInput(f"{name!r} cannot be downloaded: names starting with {TEMP_PREFIX!r} are reserved for "
                           "download temp files (it was stored by an older version). Its data is at the download_url of "
                           "get_storage_metadata; delete() removes it")
    dest = check_path(os.getcwd() if dest_path is None or dest_path == "" else dest_path,
                      "dest_path must be a folder path")
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"dest_path {str(dest)!r} is a file; give a folder to download into")
    return dest


def _extract(fh: BinaryIO, unpacked: Path, name: str, record: VersionRecord, remember: bool) -> MadeTree | None:
    """Unpack the verified archive open in `fh` into `unpacked`; `remember`: what it made, for a re-run's check."""
    fh.flush()
    made = MadeTree() if remember else None
    try:
        safe_extract(fh, unpacked, record.source_size, made)  # the handle verified, not a reopen
    except IntegrityError as exc:
        raise IntegrityError(
            f"{exc}. The archive of {name!r} version {record.version} matches its manifest, so it was "
            "stored this way, not as fedml-storage packs folders: check who can write to the store, "
            f"then delete({name!r}) and upload it again") from None
    return made


def _file_into_place(part: Path, target: Path, record: VersionRecord, cache: DigestCache | None) -> bool:
    """Rename the verified `part` to `target`; whether something was replaced."""
    _check_target(target, record.kind)  # again: something may have taken the place meanwhile
    os.chmod(part, download_mode(record))  # mkstemp made it private; a download gets the usual mode
    replaced = os.path.lexists(target)
    place_file(part, target, record.sha256, cache if record.size >= RECORD_FILE_BYTES else None)
    return replaced


def _swap_folder(unpacked: Path, mode: int, target: Path, part: Path) -> bool:
    """Put the `unpacked` folder at `target` with its `mode` (gone from `unpacked` on return); whether something was
    replaced."""
    os.chmod(unpacked, mode)
    _check_target(target, "directory")
    replaced = os.path.lexists(target)
    swap_in(unpacked, target, part.with_suffix(".old"))
    return replaced


def _confirmed(confirm_replace: Callable[[Path], bool], target: Path) -> None:
    """Ask before `target` is replaced; a no, or the callback's own failure, leaves it and fetches nothing."""
    try:
        yes = confirm_replace(target)
    except Exception as exc:
        raise InvalidInput(f"confirm_replace raised {type(exc).__name__}: {exc}; {target} was left as it is, nothing "
                           "was downloaded") from None
    if not yes:
        raise InvalidInput(f"{target} was left as it is (replacing it was declined): nothing was downloaded")


def _result(target: Path, name: str, record: VersionRecord, started: float, catalog: Catalog, *, replaced: bool,
            skipped: bool) -> DownloadResult:
    return DownloadResult(
        str(target), name=name, path=str(target), uri=catalog.store.uri(record.key), version=record.version,
        sha256=record.sha256, size=record.size, seconds=round(time.monotonic() - started, 3), kind=record.kind,
        replaced=replaced, skipped=skipped,
    )


def _fetch(catalog: Catalog, name: str, version: str | None, record: VersionRecord, fh: BinaryIO, resume_at: int,
           tries: list[tuple[HashingWriter, VersionRecord]], note: partials.Note | None, show_progress: bool,
           out_progress_to_err: bool, progress_desc: str | None) -> VersionRecord:
    """Fetch the data of `record` into `fh` and check it against its manifest, going on from byte `resume_at`
    (what an earlier download kept); the record it matches. Each try is added to `tries`."""
    replaced = 0
    doubted = False  # a fetch of the data found missing or not matching: once is a fault in transit, maybe
    while True:
        fh.seek(resume_at)
        fh.truncate()
        if note is not None:  # what a kill leaves is kept by the next download into this folder
            note.fetching(record.sha256, resume_at)
        writer = HashingWriter(fh, None if note is None else note.advance)
        tries.append((writer, record))
        if resume_at:
            writer.absorb(0, resume_at)
            log.info("going on with the %s of %r an earlier download fetched", human_size(resume_at), name)
        try:
            with progress_bar(record.size, show_progress, out_progress_to_err, progress_desc or DOWNLOAD_DESC,
                              resume_at) as adv:
                catalog.store.get_into(record.key, writer, record.size, adv, resume_at)
        except ObjectMissing:
            # Most often a writer replaced the dataset (and dropped this data) after we read the catalog:
            # read it again and fetch what it names now.
            fresh = catalog.get(name).find(version)
            replaced += fresh.key != record.key
            if fresh.key != record.key and replaced == FETCH_ATTEMPTS:
                raise Conflict(f"{name!r} kept being replaced while downloading it; try again") from None
            if fresh.key == record.key and not doubted and catalog.store.head(record.key) is not None:
                doubted = True  # the store has it: that answer was not the store's (a proxy's, say)
                log.warning("the data of %r was answered missing, yet the store has it; fetching it again", name)
                continue
            if fresh.key == record.key:
                raise NotFound(
                    f"the data of {name!r} version {record.version} is missing from the store although the "
                    "catalog lists it (removed outside fedml-storage, or by a cleanup with too short a grace "
                    "period); upload the dataset again to store it anew"
                ) from None
            log.info("%r changed while downloading it; fetching version %s", name, fresh.version)
            record, resume_at = fresh, 0
            continue
        except RangeIgnored:
            if not resume_at:
                raise
            log.info("the server sends whole objects only: fetching %r from its start", name)
            resume_at = 0
            continue
        except IntegrityError as exc:  # said of the stored object while going on from kept bytes: judged whole
            if not resume_at:
                raise
            log.warning("going on with what an earlier download of %r kept failed (%s); fetching it from its start",
                        name, exc)
            resume_at = 0
            continue
        if writer.size == record.size and writer.sha256.hexdigest() == record.sha256:
            return record
        if resume_at:
            log.warning("what an earlier download of %r kept does not match; fetching it from its start", name)
            resume_at = 0
            continue
        if not doubted:
            doubted = True
            log.warning("the data of %r fetched does not match its manifest; fetching it again (a fault in transit "
                        "would not happen twice)", name)
            continue
        raise IntegrityError(
            f"the stored data of {name!r} version {record.version} is corrupt (sha256 or size does not "
            f"match its manifest, twice fetched); nothing was written. Delete it (delete({name!r})) and upload it "
            "again (an upload of unchanged data alone sends nothing)"
        )


def _fetched(part: Path, tries: list[tuple[HashingWriter, VersionRecord]], record: VersionRecord,
             adopted: int) -> tuple[str, Path, int]:
    """The SHA-256 of the data the part file begins, the file, and how many bytes at its start are known to be
    that data's, in order."""
    if not tries:
        return record.sha256, part, adopted  # taken over, not yet touched
    writer, fetching = tries[-1]
    try:
        return fetching.sha256, part, min(writer.size, part.stat().st_size)  # past it, out-of-order ranges may lie
    except OSError:
        return fetching.sha256, part, 0


def _check_target(target: Path, kind: str) -> None:
    """Refuse to put a file where a folder is, or a folder where a file is: that is not a copy to replace."""
    if target.is_symlink() or not target.exists():
        return
    points = mount_points(target) if target.is_dir() else []
    if os.path.ismount(target) or str(resolved(target)) in points:  # a rename onto it fails (EBUSY): said first
        raise InvalidInput(f"{target} is a mount point (a volume mounted there), which a download cannot replace as it "
                           "replaces dest_path/<name>; download into another dest_path and copy from there, or mount "
                           "the volume one level up and download into it")
    if points:  # replacing the folder would take what is mounted there with it
        raise InvalidInput(f"{target} holds a mount point ({points[0]}), and a download replaces dest_path/<name> as "
                           "a whole, which would remove what is mounted there; unmount it, or download into another "
                           "dest_path")
    if kind == "file" and target.is_dir():
        raise InvalidInput(f"{target} is a folder; remove it or download into another dest_path")
    if kind != "file" and not target.is_dir():
        raise InvalidInput(f"{target} is a file, and this dataset is a folder; remove the file or download into "
                           "another dest_path")


def _check_space(dest: Path, need: int, folder: bool) -> None:
    """Fail before fetching anything when `dest` cannot hold what the download writes there: for good when its
    volume is smaller than that (not retried), else as a failure that freeing space cures."""
    try:
        usage = shutil.disk_usage(dest)
    except OSError:
        return
    if not usage.total or usage.free >= need:  # total 0: a file system that reports no sizes
        return
    what = "the archive and its unpacked copy" if folder else "the data"
    if usage.total < need:
        raise InvalidInput(f"{dest} is on a volume of {human_size(usage.total)} in all: the download needs "
                           f"{human_size(need)} there ({what}); choose a dest_path on a larger one")
    raise TransientError(f"not enough space in {dest}: the download needs {human_size(need)} there ({what}) and "
                         f"{human_size(usage.free)} is free; free some space or choose another dest_path")


def _make_folder(dest: Path) -> list[Path]:
    """Create `dest` and missing parents; the folders created, deepest first."""
    missing = []
    for folder in (dest, *dest.parents):
        if folder.exists():
            break
        missing.append(folder)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InvalidInput(f"dest_path {str(dest)!r} cannot be a folder: something that is not one is there (a broken "
                           "link?); remove it or choose another dest_path") from None
    except FileNotFoundError:  # /proc and the like: folders that take no new entries
        raise InvalidInput(f"dest_path {str(dest)!r} cannot be made: its parent takes no new folders (a /proc-like "
                           "file system?); choose another dest_path") from None
    return missing
