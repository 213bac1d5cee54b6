"""File modes and owners: the process's umask (the modes new files and folders may get), whether a file is one
this user's own code could have written, and opening a file to upload only while it is still a plain file."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO

from .errors import SourceChanged

_UMASK_LOCK = threading.Lock()


def umask() -> int:
    """The process's umask, read without loosening it even for a moment (other threads may create files)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # two threads at once would each put back the other's 077, which would then stay
        mask = os.umask(0o077)  # briefly stricter, never looser
        os.umask(mask)
    return mask


def own_plain_file(st: os.stat_result) -> bool:
    """A plain file of this user's with one link (no owner ids on Windows: there, any plain file with one link)."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == getattr(os, "geteuid", lambda: st.st_uid)()


def open_plain(path: str | Path) -> BinaryIO:
    """Open a file to upload for reading, refusing what is no longer a plain file: one replaced by a FIFO since the
    folder was read would otherwise wait for a writer for ever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SourceChanged(f"{path} is no longer a plain file (it was replaced while being uploaded); nothing "
                                "was published, upload it again")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a file system that honours it for files (FUSE) must not return short reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
