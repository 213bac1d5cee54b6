"""Directories as zip archives: scan, tree digest, streamed packing and guarded extraction."""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

from .errors import IntegrityError, InvalidInput

log = logging.getLogger("fedml_storage")

CHUNK = 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip local file header (30 bytes)
METHODS = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}


class Entry(NamedTuple):
    """One file or folder of a tree, by its POSIX path relative to the root, with the stat fields an upload needs
    to pack it and to tell whether it changed. Flat, one object per entry: with a million entries, a kept
    os.stat_result (or a second tuple) costs hundreds of MB, and every extra object makes Python's garbage
    collector walk the whole heap more often while the tree is read."""

    rel: str
    root: str  # one string shared by all entries: a path per entry would double what a tree holds
    is_dir: bool
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_ino: int
    st_mode: int

    @classmethod
    def of(cls, rel: str, root: str, st: os.stat_result, is_dir: bool) -> Entry:
        return cls(rel, root, is_dir, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)

    @property
    def st(self) -> Entry:
        """The stat fields (st_size, st_mtime_ns, ...), read as those of an os.stat_result."""
        return self

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.rel)


class Tree(NamedTuple):
    """A folder's files and subfolders (sorted by relative path), and what was left out."""

    entries: list[Entry]
    left_out: list[str]  # FIFOs, sockets, devices, and links to folders the upload already holds


def scan_tree(root: Path) -> Tree:
    """Files and folders under `root`, links followed. Every folder is read once: a link to a folder the
    upload already holds (`latest -> run-7`, a link back up, two links to one place) is left out, like FIFOs,
    sockets and devices. So links can neither loop nor multiply the tree."""
    tree = Tree([], [])
    seen = {_folder_id(os.stat(root))}
    links: list[tuple[str, str, os.stat_result]] = []
    top = str(root)
    _scan(top, top, "", tree, seen, links)
    while links:  # judged once every real folder of the tree is known, so a real folder always wins over a link
        rel, path, st = links.pop(0)
        if _folder_id(st) in seen:
            log.info("leaving out %s: it links to a folder the upload already holds", path)
            tree.left_out.append(rel)
            continue
        seen.add(_folder_id(st))
        tree.entries.append(Entry.of(rel, top, st, True))
        _scan(top, path, rel + "/", tree, seen, links)
    tree.entries.sort()  # by rel: it is the first field and unique
    tree.left_out.sort()
    return tree


def _folder_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _scan(top: str, folder: str, prefix: str, tree: Tree, seen: set[tuple[int, int]],
          links: list[tuple[str, str, os.stat_result]]) -> None:
    try:
        with os.scandir(folder) as it:
            items = sorted(it, key=lambda item: item.name)  # which of two links is followed must not vary
    except OSError as exc:
        raise InvalidInput(f"cannot read {folder}: {exc.strerror}") from None
    for item in items:
        rel = prefix + item.name
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{item.path!r} has a name that is not valid UTF-8, which a zip cannot hold; rename it "
                               "and upload again") from None
        try:
            st = _stat(item)
        except FileNotFoundError:
            raise InvalidInput(f"{item.path} is a broken link; remove it or fix its target") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise InvalidInput(f"{item.path} is a link that leads back to itself; remove it or fix its target") from None
        if stat.S_ISDIR(st.st_mode):
            if item.is_symlink():
                links.append((rel, item.path, st))
                continue
            if _folder_id(st) in seen:  # inside a linked folder, already held through another link (or a bind mount)
                log.info("leaving out %s: the upload already holds this folder", item.path)
                tree.left_out.append(rel)
                continue
            seen.add(_folder_id(st))
            tree.entries.append(Entry.of(rel, top, st, True))
            _scan(top, item.path, rel + "/", tree, seen, links)
        elif stat.S_ISREG(st.st_mode):
            tree.entries.append(Entry.of(rel, top, st, False))
        else:
            log.info("leaving out %s: neither a file nor a folder", item.path)
            tree.left_out.append(rel)


def _stat(item: os.DirEntry) -> os.stat_result:
    """The entry's stat, links followed, with real inode numbers (a DirEntry on Windows reports 0)."""
    st = item.stat()
    return st if st.st_ino else os.stat(item.path)


def same_file_state(a: os.stat_result | Entry, b: os.stat_result | Entry) -> bool:
    """Whether nothing wrote to the file between the two stats (ctime catches a write whose mtime was put back)."""
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


def tree_fingerprint(entries: list[Entry]) -> str:
    """Changes whenever any path, size, mtime, ctime or inode in the tree does: the key of the tree digest cache.
    (ctime too: tools that restore an mtime after writing, such as tar, unzip or cp -p, cannot restore it.)"""
    lines = "".join(f"{e.rel}\0{e.st.st_size}\0{e.st.st_mtime_ns}\0{e.st.st_ctime_ns}\0{e.st.st_ino}\0{e.is_dir:d}\n"
                    for e in entries)
    return hashlib.sha256(lines.encode("utf-8", "surrogateescape")).hexdigest()


def tree_digest(entries: list[Entry], digests: dict[str, str]) -> str:
    """SHA-256 over every path, size and file digest: equal exactly when the trees' contents are."""
    h = hashlib.sha256()
    for e in entries:
        line = f"D\0{e.rel}\n" if e.is_dir else f"F\0{e.rel}\0{e.st.st_size}\0{digests[e.rel]}\n"
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class HashingWriter:
    """A non-seekable writer that hashes and counts what passes through to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash(data)
        self._out.write(data)
        return len(data)

    def _hash(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)

    def stages(self) -> list[Callable[[bytes], object]]:
        """`write` as two steps that may run on two threads, each seeing every chunk in order."""
        return [self._hash, self._out.write]

    def flush(self) -> None:
        pass

    def unordered(self) -> BinaryIO:
        """The seekable file beneath, for out-of-order (ranged) writes; `absorb` (in order) or `rehash` them."""
        return self._out

    def absorb(self, offset: int, length: int) -> None:
        """Hash and count `length` bytes that out-of-order writes put in the file beneath at `offset`, right after
        what was hashed so far (needs os.pread; else use `rehash`)."""
        if offset != self.size:
            raise ValueError(f"absorbing at {offset}, but {self.size} bytes are hashed")
        fd, end = self._out.fileno(), offset + length
        while offset < end:
            chunk = os.pread(fd, min(CHUNK * 4, end - offset), offset)
            if not chunk:
                return  # the file is shorter: the size check reports it
            self.sha256.update(chunk)
            self.size += len(chunk)
            offset += len(chunk)

    def rehash(self) -> None:
        """Hash and count the whole file beneath, after out-of-order writes."""
        self._out.flush()
        self.sha256, self.size = hashlib.sha256(), 0
        with open(self._out.fileno(), "rb", closefd=False) as fh:
            fh.seek(0)
            while chunk := fh.read(CHUNK * 4):
                self.sha256.update(chunk)
                self.size += len(chunk)


def write_zip(
    entries: list[Entry], out: BinaryIO, method: str = "stored", progress: Callable[[int], None] | None = None
) -> dict[str, str]:
    """Write a zip of `entries` to the non-seekable `out`; returns each file's SHA-256 by relative path."""
    digests: dict[str, str] = {}
    compression = METHODS[method]
    with zipfile.ZipFile(out, "w", compression=compression, compresslevel=1 if compression else None) as zf:
        for e in entries:
            info = zipfile.ZipInfo(e.rel + ("/" if e.is_dir else ""), _zip_time(e.st.st_mtime))
            info.external_attr = (stat.S_IMODE(e.st.st_mode) | (stat.S_IFDIR if e.is_dir else stat.S_IFREG)) << 16
            if e.is_dir:
                info.external_attr |= 0x10  # MS-DOS directory flag
                zf.writestr(info, b"")
                continue
            info.compress_type = compression
            info.file_size = e.st.st_size
            h = hashlib.sha256()
            read = 0
            try:
                src = open(e.path, "rb")
            except FileNotFoundError:
                raise InvalidInput(f"{e.path} was removed while the folder was being uploaded; nothing was "
                                   "published, upload it again") from None
            with src, zf.open(info, "w", force_zip64=e.st.st_size > 0x7FFFFFFF) as dst:
                while chunk := src.read(CHUNK):
                    read += len(chunk)
                    h.update(chunk)
                    dst.write(chunk)
                    if progress:
                        progress(len(chunk))
                after = os.fstat(src.fileno())
            if read != e.st.st_size or not same_file_state(after, e.st):
                raise InvalidInput(f"{e.path} changed while it was being uploaded; nothing was published, "
                                   "upload it again once it is no longer being written")
            digests[e.rel] = h.hexdigest()
    return digests


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    return _zip_second(int(min(max(mtime, 315532800 + 86400), 4354819200 - 86400)))  # zip holds 1980 to 2107 only


@functools.lru_cache(maxsize=4096)
def _zip_second(second: int) -> tuple[int, int, int, int, int, int]:
    """One tuple per second, shared: the zip keeps every member's time until its end, and files made together share
    their second."""
    return time.localtime(second)[:6]


def _check_member(name: str) -> str:
    parts = name.split("/")
    if not name or name.startswith("/") or "\0" in name or ".." in parts:
        raise IntegrityError(f"archive member {name!r} would be written outside the destination; refusing to extract")
    if os.sep == "\\" and ("\\" in name or ":" in name):
        raise InvalidInput(f"archive member {name!r} has a name Windows cannot hold ('\\' or ':'); download it on "
                           "Linux or macOS, or rename it there and upload the folder again")
    return name.rstrip("/")


def safe_extract(archive: BinaryIO, dest: Path, max_bytes: int) -> int:
    """Extract the open zip `archive` into the empty folder `dest`, refusing escaping paths, links, clashing
    names and more than `max_bytes`; a malformed archive raises IntegrityError.

    The archive must already be verified against its recorded SHA-256 (through this same handle): stored
    members are then copied straight from their offsets, without zipfile's per-member CRC.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise IntegrityError(f"the stored archive is not a readable zip ({exc}); refusing to extract") from None
    written = 0
    root = str(dest)
    made: set[str] = {root}
    umask_bits = umask()
    with zf:
        members = _plan(zf.infolist(), max_bytes)  # all checked before any write
        for info, rel in members:
            target = f"{root}/{rel}"
            mode = info.external_attr >> 16
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
                made.add(target)
                continue
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            perm = (stat.S_IMODE(mode) & 0o777 or 0o666) & ~umask_bits  # as tar does: the uploader's modes, masked
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), perm)
            try:
                if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1 and (
                        info.compress_size == info.file_size):
                    written += _copy_stored(archive, info, fd, max_bytes - written, zf.start_dir)
                else:
                    written += _copy_member(zf, info, fd, max_bytes - written)
            finally:
                os.close(fd)
    return written


def _plan(infos: list[zipfile.ZipInfo], max_bytes: int) -> list[tuple[zipfile.ZipInfo, str]]:
    """Check every member before anything is written: paths, links, clashes, declared size."""
    members = [(info, _check_member(info.filename)) for info in infos]
    if sum(info.file_size for info in infos) > max_bytes:
        raise IntegrityError(f"archive declares more bytes than the {max_bytes} recorded at upload; refusing")
    files: set[str] = set()
    folders: set[str] = set()
    for info, rel in members:
        if stat.S_ISLNK(info.external_attr >> 16):  # write_zip never stores links: not written by fedml-storage
            raise IntegrityError(f"archive member {info.filename!r} is a symbolic link; refusing to extract")
        parts = rel.split("/")
        if "." in parts or "" in parts:
            raise IntegrityError(f"archive member {info.filename!r} has an empty or '.' path part; refusing")
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if info.is_dir():
            folders.add(rel)
        elif rel in files:
            raise IntegrityError(f"archive holds {rel!r} twice; refusing to extract")
        else:
            files.add(rel)
    if files & folders:
        raise IntegrityError(f"archive holds {sorted(files & folders)[0]!r} as a file and a folder; refusing")
    return members


def _copy_stored(raw: BinaryIO, info: zipfile.ZipInfo, fd: int, allowed: int, data_end: int) -> int:
    """Copy a stored member's bytes from their offset in the archive (whose member data ends at `data_end`)."""
    if not 0 <= info.header_offset < data_end:
        raise IntegrityError(f"archive member {info.filename!r} lies outside the archive; refusing to extract")
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise IntegrityError(f"archive member {info.filename!r} has a bad local header; refusing to extract")
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    left = info.file_size
    if left > allowed:
        raise IntegrityError("archive expands past the bytes recorded at upload; refusing")
    if start + left > data_end:
        raise IntegrityError(f"archive member {info.filename!r} runs past the archive's data; refusing to extract")
    raw.seek(start)
    while left:
        chunk = raw.read(min(CHUNK, left))
        if not chunk:
            raise IntegrityError(f"archive member {info.filename!r} is truncated; refusing to extract")
        _write_all(fd, chunk)
        left -= len(chunk)
    return info.file_size


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, fd: int, allowed: int) -> int:
    """Decompress a member through zipfile (which checks its CRC), stopping past `allowed` bytes."""
    written = 0
    try:
        with zf.open(info) as src:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > allowed:
                    raise IntegrityError("archive expands past the bytes recorded at upload; refusing")
                _write_all(fd, chunk)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, ValueError) as exc:
        raise IntegrityError(f"archive member {info.filename!r} cannot be read ({exc}); refusing to extract") from None
    return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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


_UMASK_LOCK = threading.Lock()
