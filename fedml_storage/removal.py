"""Removing a folder tree however deep it is, without following links out of it or into a mount."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

_FD_BASED = {os.open, os.rmdir, os.unlink} <= os.supports_dir_fd and os.scandir in os.supports_fd
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# What stops shutil.rmtree on a deep tree: it recurses and holds a handle per level (Python 3.11).
_TOO_DEEP = {errno.EMFILE, errno.ENFILE, errno.ENAMETOOLONG}


def mount_points(path: Path | str) -> list[str]:
    """Mount points at or below `path` (bind mounts of the same file system too), from /proc/self/mountinfo; none
    where the system has no such file."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
            lines = info.read().splitlines()
    except OSError:
        return []
    top = os.path.realpath(path)
    inside = top.rstrip("/") + "/"
    found = []
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:  # the fifth field is the mount point, with spaces and the like as octal escapes
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == top or point.startswith(inside):
                found.append(point)
    return found


def remove_tree(path: Path | str, ignore_errors: bool = False) -> None:
    """shutil.rmtree, going on level by level where a tree is too deep for it: some 1,000 levels exhaust Python's
    stack (RecursionError, even with ignore_errors), or the process's open files, or the longest path. A tree
    holding a mount point is left whole: removing it would empty what is mounted there (another file system, or
    a folder bind-mounted from elsewhere)."""
    if points := mount_points(path):
        if ignore_errors:
            return
        raise OSError(errno.EBUSY, f"{points[0]} is mounted inside it: left as it is", str(path))
    try:
        shutil.rmtree(path, ignore_errors=ignore_errors)
    except (RecursionError, OSError) as exc:
        too_deep = isinstance(exc, RecursionError) or exc.errno in _TOO_DEEP
        if not (too_deep and (_FD_BASED or ignore_errors)):  # without folder handles there is nothing else to try
            raise
    if _FD_BASED and os.path.lexists(path):
        try:
            _remove_deep(str(path))
        except OSError:
            if not ignore_errors:
                raise


def _remove_deep(top: str) -> None:
    """Remove `top` and all below it, one level at a time through folder handles (relative names, so no path
    grows long), with at most two handles open. Links are removed, never followed; a folder swapped for another
    meanwhile stops the removal."""
    fd = os.open(top, _DIR_FLAGS)
    levels: list[tuple[str, tuple[int, int], list[str]]] = []  # below top: name, identity, subfolders left
    try:
        here, subs = _identity(fd), _clear(fd)
        while True:
            if subs:
                name = subs.pop()
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                levels.append((name, here, subs))
                os.close(fd)
                fd, here, subs = child, _identity(child), _clear(child)
                continue
            if not levels:
                break
            name, parent_id, subs = levels.pop()
            parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd, here = parent, _identity(parent)
            if here != parent_id:
                raise OSError(errno.ESTALE, "a folder was moved while its tree was being removed", top)
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(top)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _clear(fd: int) -> list[str]:
    """Remove the folder's entries other than folders; the names of its folders."""
    subs = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subs.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return subs

