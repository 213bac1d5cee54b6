"""A download's temp files in its destination folder: made under a lock, swapped into place, and what killed
downloads left swept away by the next download there.

A download's files share one random stem: `<stem>.part` (the data; the live download holds an flock on it from
before it bears that name), `<stem>.sha` (a note of what the data is, see partials), `<stem>.d` (the unpacked
folder; for a file, a probe of the filesystem's clock) and `<stem>.old/<name>` (the copy being replaced, moved
aside where the system has no atomic exchange). A `.part` nobody holds, and a `.d`, `.sha` or `.old` whose `.part`
is gone, belong to a killed download: the copy in a `.old` goes back to its place if nothing took it, what the
`.part` holds is kept as its note says, the rest is removed (copies are dropped by first renaming their folder to
`<stem>.drop`, which is never put back). The part file is first made as `<stem>.new` and locked at once; one left
unlocked is cleared after NEW_GRACE_SECONDS (a download locks it within microseconds of making it, so no live one
is taken for dead). This assumes downloads into one folder run on one host (or on a filesystem whose flock locks
span hosts); where no lock can be taken (Windows, NFS), a `.part` and its siblings wait a day untouched (a `.new`,
which Windows never makes, a minute).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import Conflict
from .removal import remove_tree
from .validation import RESERVED_PREFIX

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = RESERVED_PREFIX
STALE_TEMP_SECONDS = 24 * 3600  # a `.part` whose lock cannot be tested, or a temp of an older version
NEW_GRACE_SECONDS = 10  # an unlocked `.new` younger than this may be a live download's, about to lock it
UNLOCKABLE_NEW_SECONDS = 60  # a `.new` where no lock can be tested: renamed to `.part` at once by a live download
CLAIM_ATTEMPTS = 100  # tries to lock a new part file while a sweep is testing it
SWAP_ATTEMPTS = 5  # renames tried when other downloads into the same folder keep replacing the target

log = logging.getLogger("fedml_storage")


def new_part(dest: Path, adopt: Callable[[Path], int] | None = None) -> tuple[int, Path, int | None, int]:
    """A new part file in `dest`, locked before it bears the `.part` name: (fd to write, path, lock fd, length).

    `adopt(path)` may move a file over the new one first (what an earlier download kept) and returns its length.
    """
    if fcntl is None:  # no lock to take first (and Windows cannot rename a file that is open)
        fd, part = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=dest)
        return fd, Path(part), None, 0
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".new", dir=dest)
    part = Path(tmp).with_suffix(".part")
    lock: int | None = None
    length = 0
    try:
        lock = _claim(tmp)  # at once: a sweep leaves a locked `.new` alone and clears an unlocked one
        if adopt is not None and (length := adopt(Path(tmp))):
            adopted = os.open(tmp, os.O_RDWR)
            os.close(fd)  # of the empty file it replaced
            fd = adopted
            os.close(lock)  # its lock was on that empty file too
            lock = None
            try:
                lock = _claim(tmp)  # the adopted file was touched by take(): fresh, so within the grace too
            except BlockingIOError:  # the sweep that kept it, stalled, holds it still: start afresh instead
                log.info("not going on with what an earlier download kept: the download that kept it holds it still")
                fresh_fd, fresh = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".new", dir=dest)
                held_fd, held = fd, tmp
                fd, tmp, part, length = fresh_fd, fresh, Path(fresh).with_suffix(".part"), 0  # (for the except below)
                os.close(held_fd)
                os.unlink(held)
                lock = _claim(tmp)
        os.rename(tmp, part)
    except BaseException:
        os.close(fd)
        if lock is not None:
            os.close(lock)
        Path(tmp).unlink(missing_ok=True)
        part.unlink(missing_ok=True)
        raise
    return fd, part, lock, length


def _claim(path: str) -> int:
    """An fd holding an exclusive flock on `path` (only the fd where this filesystem has no flock)."""
    lock = os.open(path, os.O_RDONLY)
    try:
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # a sweep testing it holds it for a moment (only if it looks old)
                if attempt == CLAIM_ATTEMPTS - 1:
                    raise
                time.sleep(0.01)
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            os.close(lock)
            raise
        # no flock on this filesystem: no download can test this file, so the time rules apply to it
    return lock


_NO_LOCKS = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EBADF, errno.EINVAL, errno.ENOLCK}


def _lock_state(part: Path) -> str:
    """'free' (its download is gone), 'held' (live), or 'unknown' (no locks to test here)."""
    with _testing_lock(part) as state:
        return state


@contextlib.contextmanager
def _testing_lock(part: Path) -> Iterator[str]:
    """`_lock_state(part)`, holding the lock through the block when 'free': what a sweep does with a killed
    download's part file, no other sweep does at the same time (one kept it, then took it up and fetched on, while
    the other, late, cut it back to what it had kept)."""
    state, fd = _test_lock(part)
    try:
        yield state
    finally:
        if fd is not None:
            os.close(fd)


def _test_lock(part: Path) -> tuple[str, int | None]:
    """The state of `part`'s lock, and the fd holding it when 'free' (a file no download made is 'free' too)."""
    if fcntl is None:
        return "unknown", None
    try:  # not opened unless a plain file: a FIFO's open waits for a writer (a download folder may be shared)
        if not stat.S_ISREG(os.lstat(part).st_mode):
            return "free", None  # no download's: it only ever makes plain files
        fd = os.open(part, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return "unknown", None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # (else swapped meanwhile)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "free", fd
    except OSError as exc:
        os.close(fd)
        return ("held" if isinstance(exc, BlockingIOError) else "unknown"), None
    os.close(fd)
    return "free", None


def sweep(dest: Path, keep: Callable[[Path], None] | None = None) -> None:
    """Clear what killed downloads left in `dest` (see the module's docstring); `keep(part)` may first take what
    a killed download's part file holds elsewhere."""
    now = time.time()
    for leftover in sorted(dest.glob(TEMP_PREFIX + "*")):
        try:
            age = now - leftover.lstat().st_mtime
            if leftover.suffix == ".part":
                with _testing_lock(leftover) as state:
                    if state == "held" or (state == "unknown" and age < STALE_TEMP_SECONDS):
                        continue
                    _put_back(leftover.with_suffix(".old"), dest)
                    drop(leftover.with_suffix(".old"))
                    remove(leftover.with_suffix(".d"))
                    if keep is not None and state == "free":  # by age alone it may be a live download stalled
                        keep(leftover)
                    remove(leftover.with_suffix(".sha"))
                    if not os.path.lexists(leftover):
                        continue  # kept for the download about to run
            elif leftover.suffix in (".d", ".old", ".sha"):
                if leftover.with_suffix(".part").exists():
                    continue  # judged with its part file
                if leftover.suffix == ".old":
                    _put_back(leftover, dest)
                    drop(leftover)
                    continue
            elif leftover.suffix == ".new":
                if age < NEW_GRACE_SECONDS:
                    continue
                state = _lock_state(leftover)
                if state == "held" or (state == "unknown" and age < UNLOCKABLE_NEW_SECONDS):
                    continue
            elif leftover.suffix != ".drop" and age < STALE_TEMP_SECONDS:
                continue
            if remove(leftover):  # not if its own download, done meanwhile, removed it
                log.info("removed %s, left by an interrupted download", leftover)
        except OSError:
            pass  # another download's sweep got there first, or it is not ours to remove


def _put_back(aside: Path, dest: Path) -> None:
    """Return the copy an interrupted download moved aside to its place, when nothing has taken that place."""
    if not aside.is_dir() or aside.is_symlink():
        return
    for copy in aside.iterdir():
        target = dest / copy.name
        if not os.path.lexists(target) and _rename_noreplace(copy, target):
            log.warning("put %s back in place: an interrupted download had moved it aside", target)


def swap_in(new: Path, target: Path, aside: Path) -> None:
    """Rename `new` to `target`, replacing what is there in one step where the system can (no moment without a
    copy at `target`, even if the process is killed); elsewhere move it into the folder `aside` first and put it
    back if the rename does not happen (a kill in between leaves that to the next download's sweep).

    Downloads into the same folder at once may race here: the last rename wins and nothing is left behind.
    """
    for _ in range(SWAP_ATTEMPTS):
        if os.path.lexists(target):
            try:
                if _exchange(new, target):
                    if not remove(new):  # now the replaced copy
                        log.warning("the copy %s replaced could not be removed entirely (a file in it immutable or "
                                    "another user's?); what is left of it is at %s", target, new)
                    return
            except FileNotFoundError:
                pass  # the target was moved away meanwhile
        try:
            if os.path.lexists(target):
                aside.mkdir(exist_ok=True)
                try:
                    os.rename(target, aside / target.name)
                except FileNotFoundError:
                    pass  # another download moved it aside first
            try:
                os.rename(new, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            # another download renamed its copy in since we looked: move that aside in turn
        finally:  # judged from what is on disk: an interrupt may come right after the move, before any flag
            if os.path.lexists(aside / target.name):
                _settle(aside, target)
            elif aside.is_dir():
                with contextlib.suppress(OSError):
                    aside.rmdir()  # made for a copy another download moved away first
    raise Conflict(f"{target} kept being replaced by other downloads into {target.parent}; download into "
                   "separate folders (nothing of this download was left there)")


def _settle(aside: Path, target: Path) -> None:
    """After a swap attempt: drop the copy moved aside if one is in place, else put it back (or say where it is)."""
    if not os.path.lexists(target):
        try:
            os.rename(aside / target.name, target)
        except OSError:
            log.error("could not put %s back; it is kept at %s, and the next download into %s puts it back",
                      target, aside / target.name, target.parent)
            return
    try:
        drop(aside)
    except OSError as exc:  # the swap itself is done; the next sweep removes what is left
        log.warning("could not remove %s (%s); the next download into %s does", aside, exc, target.parent)


def drop(aside: Path) -> None:
    """Remove a folder of moved-aside copies in one rename first, so that a kill while deleting never leaves a
    partial copy that a sweep would put back."""
    if not os.path.lexists(aside):
        return
    doomed = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=".drop", dir=aside.parent))  # never taken yet
    os.rename(aside, doomed / "copies")
    remove(doomed)


def _rename_noreplace(a: Path, b: Path) -> bool:
    """Rename `a` to `b` unless something is at `b` (atomically where the system can); whether it was renamed."""
    err = _rename2(a, b, _RENAME_NOREPLACE)
    if err == 0:
        return True
    if err == errno.EEXIST:
        return False
    if os.path.lexists(b):
        return False
    os.rename(a, b)
    return True


def remove(path: Path) -> bool:
    """Remove a file, link or folder (folders best effort); whether it was there and now is gone. Folders made
    read-only inside a copy being replaced are made writable first, as deleting their files needs."""
    if path.is_dir() and not path.is_symlink():
        try:
            remove_tree(path)
        except OSError as exc:
            if not os.path.lexists(path):
                return False  # its own download removed it meanwhile
            if exc.errno == errno.EBUSY:  # a mount inside (remove_tree leaves such a tree whole): not opened up either
                return False
            _make_writable(path)
            remove_tree(path, ignore_errors=True)
        return not os.path.lexists(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _make_writable(root: Path) -> None:
    """Give the owner read, write and search rights on every folder under `root` (links are not followed)."""
    with contextlib.suppress(OSError):
        os.chmod(root, stat.S_IMODE(os.lstat(root).st_mode) | stat.S_IRWXU)
    with contextlib.suppress(RecursionError):  # os.walk recurses once per level (Python 3.11): best effort too
        for folder, subfolders, _ in os.walk(root):  # top-down: each folder is opened up before it is listed
            for name in subfolders:
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    if stat.S_ISDIR(st.st_mode):
                        os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)


_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
if _renameat2 is not None:
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _rename2(a: Path, b: Path, flags: int) -> int | None:
    """Linux renameat2: 0, or the errno it failed with; None where the system has no renameat2."""
    if _renameat2 is None:
        return None
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return 0
    return ctypes.get_errno()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    err = _rename2(a, b, _RENAME_EXCHANGE)
    if err is None or err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False  # no renameat2, an old kernel, a filesystem without it, or a sandbox that forbids it
    if err == 0:
        return True
    raise OSError(err, os.strerror(err), str(a), None, str(b))
