"""An exclusive lock across processes, held on a file beside what it guards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) until the block ends; waits for other holders."""
    if os.name == "nt":  # no flock: the filelock package (a Windows-only dependency) does it there
        from filelock import FileLock

        with FileLock(path):
            yield
        return
    import fcntl

    try:
        fh = open(path, "a+b")
    except PermissionError:  # another user's, in a shared store: a lock needs only to be open, not writable
        fh = open(path, "rb")
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
