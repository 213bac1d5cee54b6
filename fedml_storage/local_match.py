"""Whether data on disk is exactly a stored version: an upload of it then sends nothing, a download of it fetches
nothing."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from . import stops
from .catalog import VersionRecord
from .digests import DigestCache, sha256_file
from .errors import StorageFailure
from .modes import own_plain_file, umask
from .made import MadeTree
from .trees import (Entries, Entry, Fingerprints, TreeDigest, batches, same_file_state, scan_tree,
                    tree_fingerprints)

log = logging.getLogger("fedml_storage")

PARALLEL_BYTES = 4 << 20  # a group of files holding this much is hashed on a helper thread
MADE = "made by a download:"  # the digest cache's rows of folders downloads made, apart from those of uploads


class TreeState(NamedTuple):
    """A scanned folder's stat fingerprints and its own permission bits."""

    fingerprints: Fingerprints
    top_mode: int


def tree_state(src: Path, entries: Entries) -> TreeState:
    return TreeState(tree_fingerprints(entries), folder_mode(src))


def folder_mode(folder: Path) -> int:
    """The folder's own permission bits."""
    return stat.S_IMODE(folder.stat().st_mode) & 0o777


def download_mode(record: VersionRecord) -> int:
    """The mode a download gives dest_path/<name>: a file the usual one, a folder its recorded own mode (the usual
    one for records made before it was), as the umask allows. A kept copy must have it too."""
    if record.kind == "file" or record.top_mode is None:
        return (0o666 if record.kind == "file" else 0o777) & ~umask()
    return record.top_mode & ~umask()


def tree_holds(src: Path, entries: Entries, state: TreeState, record: VersionRecord, cache: DigestCache, *,
               strict: bool = False) -> bool:
    """Whether the folder `src` (scanned into `entries`, in `state`) holds exactly `record`'s files, folders and
    modes. Reads only files the digest cache does not know as they are. A record made before modes were recorded
    matches any modes, unless `strict`."""
    fingerprint, modes, folder_modes = state.fingerprints
    unknown = () if strict else (None,)
    same_shape = (
        record.kind == "directory" and record.file_count == entries.files and record.source_size == entries.size
        # a mode change alone is a new version
        and record.modes in (*unknown, modes) and record.folder_modes in (*unknown, folder_modes)
        and record.top_mode in (*unknown, state.top_mode)
    )
    if not same_shape:
        return False
    if cache.lookup_tree(str(src), fingerprint) == record.content_digest:
        return True  # nothing in the tree changed since it was last digested
    digest = digest_tree(entries, cache)
    cache.store_tree(str(src), fingerprint, digest, entries.newest)
    return digest == record.content_digest


def digest_tree(entries: Entries, cache: DigestCache) -> str:
    """The tree digest, reading only the files the digest cache does not know as they are."""
    tree = TreeDigest()
    given_up = threading.Event()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for part in batches(entries, 4096):
            paths = [None if e.is_dir else e.path for e in part]
            known = cache.lookup([(path, e) for path, e in zip(paths, part) if path is not None])
            missing = [(path, e) for path, e in zip(paths, part) if path is not None and path not in known]
            # Groups of large files go to the helper threads (hashing them frees the GIL); small files are hashed
            # here, meanwhile: a future per file, or threads contending for the GIL over their syscalls, cost more.
            hashing = [stops.submit(pool, _sha256_files, group, given_up) if size >= PARALLEL_BYTES else group
                       for group, size in _groups(missing)]
            try:
                here = {i: _sha256_files(h, given_up) for i, h in enumerate(hashing) if not isinstance(h, Future)}
                fresh = [sha for i, h in enumerate(hashing)  # in context: each sees a caller's stop
                         for sha in (stops.result(h) if isinstance(h, Future) else here[i])]
            except BaseException:  # Ctrl-C too, which the helper threads do not see: they end within a chunk
                given_up.set()
                for h in hashing:
                    if isinstance(h, Future):
                        h.cancel()
                raise
            cache.store([(path, e, sha) for (path, e), sha in zip(missing, fresh)])
            known.update((path, sha) for (path, _), sha in zip(missing, fresh))
            tree.add((e, None if path is None else known[path]) for path, e in zip(paths, part))
    return tree.hexdigest()


def _groups(files: list[tuple[str, Entry]], most_files: int = 256, most_bytes: int = 16 << 20
            ) -> Iterator[tuple[list[str], int]]:
    """The files' paths in order, in groups of at most `most_files` files or about `most_bytes`, with their bytes."""
    group: list[str] = []
    size = 0
    for path, e in files:
        group.append(path)
        size += e.st_size
        if len(group) >= most_files or size >= most_bytes:
            yield group, size
            group, size = [], 0
    if group:
        yield group, size


def _sha256_files(paths: list[str], given_up: threading.Event) -> list[str]:
    return [sha256_file(path, given_up) for path in paths if not given_up.is_set()]


def holds_already(target: Path, record: VersionRecord, cache: DigestCache) -> bool:
    """Whether `target` (a download's dest_path/<name>) is exactly what a download of `record` would put there: a
    plain file of this user's (one link, the mode a download gives) with its SHA-256, or a folder holding its files,
    folders and modes and nothing else. Any doubt is False."""
    try:
        st = os.lstat(target)  # not through a link: a download puts a copy of its own there
        if record.kind == "file":
            if not (own_plain_file(st) and st.st_size == record.source_size
                    and stat.S_IMODE(st.st_mode) == download_mode(record)):
                return False
            path = str(target)
            digest = cache.lookup([(path, st)]).get(path) or sha256_file(target, size=st.st_size)
            if not same_file_state(os.lstat(target), st):  # written meanwhile
                return False
            cache.store([(path, st, digest)])
            return digest == record.content_digest
        if not _only_what_a_download_makes(target, st, record):
            return False
        tree = scan_tree(target)
        try:
            if tree.left_out or tree.links:
                return False
            state = tree_state(target, tree.entries)
            row = made_key(state.fingerprints.state, state.top_mode)  # own mode: not in the archive, so compared
            if state.top_mode == download_mode(record) and cache.lookup_tree(MADE + str(target), row) == record.sha256:
                return True  # as a download of this version made it, and untouched since
            return tree_holds(target, tree.entries, state, record, cache, strict=True)
        finally:
            tree.entries.close()
    except (OSError, StorageFailure) as exc:  # unreadable, changing: fetched as usual
        log.debug("fetching %s again: %s", target, exc)
        return False


def _only_what_a_download_makes(top: Path, top_st: os.stat_result, record: VersionRecord) -> bool:
    """Whether the folder holds only what a download makes: this user's folders and plain files (one link each), no
    link, pipe or device, no mode bit a download would not set, and the record's count and bytes of files. Links are
    not followed and the walk ends at the first misfit: an unrelated tree at the target costs little."""
    mask = umask() | 0o7000  # a download never sets setuid, setgid or sticky bits, nor those the umask takes
    uid = getattr(os, "geteuid", lambda: None)()

    def fits(st: os.stat_result) -> bool:
        return (uid is None or st.st_uid == uid) and not stat.S_IMODE(st.st_mode) & mask

    if not (stat.S_ISDIR(top_st.st_mode) and fits(top_st)):
        return False
    files = size = 0
    folders = [str(top)]
    while folders:
        stops.check()
        with os.scandir(folders.pop()) as items:
            for item in items:
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) and fits(st):
                    folders.append(item.path)
                elif own_plain_file(st) and fits(st):
                    files, size = files + 1, size + st.st_size
                    if files > record.file_count or size > record.source_size:
                        return False
                else:
                    return False
    return (files, size) == (record.file_count, record.source_size)


def made_key(state: str, top_mode: int) -> str:
    """A downloaded folder's row key: its state fingerprint, its own mode and the umask its modes were made under."""
    return f"{state}:{top_mode:o}:{umask():o}"


def folder_made(folder: Path, top_mode: int, made: MadeTree, probe: Path) -> str | None:
    """The key of the folder a download has just made at `folder` (private still; `top_mode` is what it will get),
    as `made` saw it written, taken once the filesystem's clock has passed every time in it, so that any later
    change shows in its stat (a check then reads no file, whatever the modes). `probe`: a temp file of ours on that
    filesystem. None if the clock did not pass soon, or `made` gave up (files out of path order, too many
    folders)."""
    if (state := made.state()) is None:
        return None
    try:
        return made_key(state, top_mode) if _clock_past(made.newest, probe) else None
    except OSError as exc:
        log.debug("not remembering %s as downloaded: %s", folder, exc)
        return None


def place_file(part: Path, target: Path, sha256: str, cache: DigestCache | None) -> None:
    """Rename a downloaded file (`part`: private still, its mode set, its SHA-256 checked) to `target`. Given the
    digest `cache`, remember it there as downloaded, once the filesystem's clock has passed both its last write and
    the rename: a later write or chmod then shows in its stat, and a re-run's check reads nothing. (A rename sets
    a file's ctime: the stat its digest is kept by is taken after it.)"""
    probe = part.with_suffix(".d")  # what a killed download leaves of it is swept with the part file's siblings
    try:
        written = None if cache is None else _settled_stat(part, probe)
        os.replace(part, target)
        if written is not None and cache is not None:
            _remember_file(target, written, probe, sha256, cache)
    finally:
        if cache is not None:  # also when interrupted while waiting for the clock
            probe.unlink(missing_ok=True)


def _settled_stat(part: Path, probe: Path) -> os.stat_result | None:
    """The stat of `part` once the filesystem's clock has passed its last write (a write after it then changes
    its mtime), or None; makes `probe`, a file to read that clock by (the caller removes it)."""
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        log.debug("not remembering %s as downloaded: %s", part, exc)
        return None
    try:
        written = os.stat(part)
        if _clock_past(written.st_mtime_ns, probe):
            return written
    except OSError as exc:
        log.debug("not remembering %s as downloaded: %s", part, exc)
    return None


def _remember_file(target: Path, written: os.stat_result, probe: Path, sha256: str, cache: DigestCache) -> None:
    """Store the digest of the file just renamed to `target` if it is still the one `written` saw (no write since:
    its mtime would differ), keyed by its stat once the clock has passed the rename."""
    try:
        placed = os.lstat(target)
        if ((placed.st_ino, placed.st_size, placed.st_mtime_ns) == (written.st_ino, written.st_size,
                                                                   written.st_mtime_ns)
                and _clock_past(placed.st_ctime_ns, probe) and same_file_state(os.lstat(target), placed)):
            cache.store([(str(target), placed, sha256)], settled=True)
    except OSError as exc:
        log.debug("not remembering %s as downloaded: %s", target, exc)


def _clock_past(newest: int, probe: Path) -> bool:
    """Whether the filesystem's clock passes `newest` (ns) soon, read by setting the times of `probe` (a temp file
    of ours on it). Times set after that are later than `newest`, so a change shows in a stat taken then."""
    if os.name == "nt":  # a ctime there is the file's creation time, not the time of its last change
        return False
    deadline = time.monotonic() + 0.05  # a kernel's clock ticks within 10 ms
    retried = False
    while True:
        late = time.monotonic() > deadline  # read first: a thread held up past the deadline still tries once more
        os.utime(probe)
        ctime = os.stat(probe).st_ctime_ns
        if ctime > newest:
            return True
        if ctime % 1_000_000 == 0 or late:  # whole ms or coarser (FAT, HFS+, ext3): waiting for the next second
            return False  # would cost each download more than it saves a re-run
        if retried:  # the first retry comes at once: from 6.13 Linux gives a file whose times were just read a
            time.sleep(0.001)  # fine-grained time, where the first try could only repeat the latest time handed out
        retried = True
