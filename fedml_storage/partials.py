"""What a failed download had fetched, kept for a while so that the next download of the same data goes on
from there instead of starting again.

A kept file is named by the SHA-256 of the stored data it begins (the manifest's), so it serves any version and
any destination with that content; the final SHA-256 check covers its bytes too. It is only ever moved by a
rename, so it is kept only where the keeping folder is on the destination's filesystem. A download that fails
keeps its own; one that is killed (SIGKILL, out of memory) cannot, so a note beside its part file (`<stem>.sha`)
says which data it holds and how much of it is in order, and the next download of that data into that folder
takes it up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from pathlib import Path

from .modes import own_plain_file
from .results import human_size

KEEP_SECONDS = 24 * 3600  # a kept prefix not taken up within this time is removed by the next download
MIN_BYTES = 8 * 1024 * 1024  # less is fetched again faster than it is worth keeping
NOTE_EVERY = 8 * 1024 * 1024  # a note of what is in order is rewritten at most this often

_NAME = re.compile(r"^[0-9a-f]{64}$")
_NOTE = re.compile(rb"([0-9a-f]{64}) ([0-9]{20})\n")

log = logging.getLogger("fedml_storage")


def take(folder: Path, sha256: str, into: Path) -> int:
    """Move the kept beginning of the data with this SHA-256 to `into` (replacing it); its length, 0 if none."""
    kept = folder / sha256
    try:
        st = os.lstat(kept)
        if time.time() - st.st_mtime >= KEEP_SECONDS or not own_plain_file(st):
            return 0
        os.utime(kept)  # it becomes a fresh temp file of `into`'s folder, not an old one a sweep would remove
        os.rename(kept, into)  # atomic: of two downloads of the same data, one gets it, the other starts afresh
    except OSError:
        return 0  # none, taken by another download, or on another filesystem
    return into.stat().st_size


def keep(folder: Path, sha256: str, part: Path, valid: int) -> bool:
    """Keep the first `valid` bytes of the part file `part` for the next download of this data; whether kept
    (the part file is left for the caller to remove if not)."""
    if valid < MIN_BYTES or not _NAME.match(sha256):
        return False
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(part, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.ftruncate(fd, valid)  # what lies past it was not (yet) verified as in order: out-of-order ranges
            os.utime(fd if os.utime in os.supports_fd else part)
        finally:
            os.close(fd)
        os.rename(part, folder / sha256)
    except OSError as exc:
        level = logging.DEBUG if exc.errno == errno.EXDEV else logging.WARNING
        log.log(level, "could not keep the %s already downloaded for the next try (%s)", human_size(valid), exc)
        return False
    log.info("kept the %s already downloaded in %s: a download of the same data within a day goes on from there",
             human_size(valid), folder)
    return True


class Note:
    """The `.sha` note beside a part file: the SHA-256 of the data being fetched and how many bytes at the part's
    start are that data's, in order; written from NOTE_EVERY bytes on (less is not worth keeping) and rewritten
    every NOTE_EVERY more: a killed download's note may lag, never lead."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sha256 = ""
        self._noted = 0

    def fetching(self, sha256: str, valid: int) -> None:
        """A fetch of the data with this SHA-256 starts, `valid` bytes in (what an earlier note said is void)."""
        if self._noted:
            self.remove()
        self._sha256, self._noted = sha256, 0
        self.advance(valid)

    def advance(self, valid: int) -> None:
        if valid - self._noted < NOTE_EVERY:
            return
        self._noted = valid
        try:  # one small write: a kill leaves the old note or the new one
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{self._sha256} {valid:020d}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # a note is a convenience: without one a killed download starts afresh

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def keep_killed(folder: Path, sha256: str, part: Path) -> None:
    """Keep what a killed download's part file holds when its note says it begins the data with this SHA-256 (the
    data about to be fetched: a killed part of other data is removed as before, freeing its space). Only a plain
    file of this user's, with no other links, is kept: a download folder may be shared."""
    note = _read_note(part.with_suffix(".sha"))
    if note is None or note[0] != sha256:
        return
    try:
        st = os.lstat(part)
    except OSError:
        return
    if own_plain_file(st):
        keep(folder, sha256, part, min(note[1], st.st_size))


def _read_note(path: Path) -> tuple[str, int] | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        found = _NOTE.fullmatch(os.read(fd, 128))
    except OSError:
        return None
    finally:
        os.close(fd)
    return (found[1].decode(), int(found[2])) if found else None


def sweep(folder: Path) -> None:
    """Remove what was kept longer than KEEP_SECONDS ago."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            if _NAME.match(entry.name) and now - entry.stat(follow_symlinks=False).st_mtime >= KEEP_SECONDS:
                os.unlink(entry.path)
        except OSError:
            pass  # taken up or removed by another download meanwhile
