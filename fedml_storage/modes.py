"""File modes and owners: the process's umask (the modes new files and folders may get), and whether a file is
one this user's own code could have written."""

from __future__ import annotations

import os
import stat
import threading

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
