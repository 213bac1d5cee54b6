"""An exclusive lock across processes, held on a file beside what it guards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def exclusive_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) until the block ends; waits for other holders. `shared`:
    the lock file may be another user's (a shared store), which a lock needs open, not writable."""
    if os.name == "nt":  # no flock: the filelock package (a Windows-only dependency) does it there
        from filelock import FileLock

        with FileLock(path):
            yield
        return
    import fcntl

    fh: IO[bytes]
    try:
        fh = open(path, "a+b")
    except PermissionError as denied:
        if not shared:
            raise
        try:
            fh = open(path, "rb")
        except OSError:
            raise denied from None  # (none there, and no right to make one: the first error says why)
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
