"""Directories as zip archives: streamed packing of a tree and guarded extraction."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from . import stops
from .errors import IntegrityError, InvalidInput, SourceChanged, size_not_content
from .modes import open_plain, umask
from .streams import Writable
from .made import MadeTree
from .trees import MAX_DEPTH, Entry, same_file_state
from .zipformat import DEFLATED, LOCAL_HEADER_SIZE, STORED, Member, ZipIndex, ZipWriter, local_header_size

CHUNK = 1024 * 1024
METHODS = {"stored": STORED, "deflated": DEFLATED}
_NOT_ON_WINDOWS = set('\\:*?"<>|')
_DEPTH_READ = 2 * MAX_DEPTH  # what releases before the upload limit could store (their scan recursed up to ~990)


class HashingWriter:
    """A non-seekable writer that hashes and counts what passes through to `out`, telling `hashed` the count as
    it grows."""

    def __init__(self, out: BinaryIO, hashed: Callable[[int], None] | None = None) -> None:
        self._out = out
        self._hashed = hashed
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash(data)
        self._out.write(data)
        return len(data)

    def _hash(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)
        if self._hashed is not None:
            self._hashed(self.size)

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
        if self._hashed is not None:
            self._hashed(self.size)

    def rehash(self) -> None:
        """Hash and count the whole file beneath, after out-of-order writes."""
        self._out.flush()
        self.sha256, self.size = hashlib.sha256(), 0
        with open(self._out.fileno(), "rb", closefd=False) as fh:
            fh.seek(0)
            while chunk := fh.read(CHUNK * 4):
                self.sha256.update(chunk)
                self.size += len(chunk)
        if self._hashed is not None:
            self._hashed(self.size)


def write_zip(entries: Iterable[Entry], out: Writable, method: str = "stored",
              progress: Callable[[int], None] | None = None,
              packed: Callable[[Entry, str | None], None] | None = None) -> None:
    """Write a zip of `entries` to the non-seekable `out`, telling `packed` each entry once it is in, with the
    SHA-256 of the bytes read (None for a folder)."""
    with contextlib.closing(ZipWriter(out, METHODS[method])) as writer:
        for e in entries:
            attr = (stat.S_IMODE(e.st_mode) | (stat.S_IFDIR if e.is_dir else stat.S_IFREG)) << 16
            when = _zip_time(e.st_mtime)
            if e.is_dir:
                writer.add(e.rel + "/", when, attr | 0x10, 0)  # 0x10: the MS-DOS folder flag
                sha = None
            else:
                sha = _pack_file(writer, e, when, attr, progress)
            if packed is not None:
                packed(e, sha)
        writer.finish()


def _pack_file(writer: ZipWriter, e: Entry, when: tuple[int, ...], attr: int,
               progress: Callable[[int], None] | None) -> str:
    h = hashlib.sha256()
    read = 0
    try:
        src = open_plain(e.path)
    except FileNotFoundError:
        raise SourceChanged(f"{e.path} was removed while the folder was being uploaded; nothing was published, "
                            "upload it again") from None
    except PermissionError as exc:
        raise InvalidInput(f"cannot read {e.path} ({exc.strerror}); nothing was published: check its permissions, "
                           "or leave it out with ignore_patterns") from None

    def chunks() -> Iterator[bytes]:
        nonlocal read
        while read <= e.st_size and (chunk := src.read(min(CHUNK, e.st_size + 1 - read))):  # a byte past: growth
            read += len(chunk)
            h.update(chunk)
            if progress:
                progress(len(chunk))
            yield chunk

    with src:
        writer.add(e.rel, when, attr, e.st_size, chunks())
        after = os.fstat(src.fileno())
    if not same_file_state(after, e):
        raise SourceChanged(f"{e.path} changed while it was being uploaded; nothing was published, "
                            "upload it again once it is no longer being written")
    if read != e.st_size:
        raise size_not_content(e.path, read, e.st_size)
    return h.hexdigest()


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    return _zip_second(int(min(max(mtime, 315532800 + 86400), 4354819200 - 86400)))  # zip holds 1980 to 2107 only


@functools.lru_cache(maxsize=4096)
def _zip_second(second: int) -> tuple[int, int, int, int, int, int]:
    return time.localtime(second)[:6]


def safe_extract(archive: BinaryIO, dest: Path, max_bytes: int, made: MadeTree | None = None) -> int:
    """Extract the open zip `archive` into the empty folder `dest`, refusing escaping paths, links, names held
    twice or as a file and a folder, and more than `max_bytes`; a malformed archive raises IntegrityError, after
    which the caller removes `dest`. `made` gets the stat of every file and folder as extraction leaves it.

    The archive must already be verified against its recorded SHA-256 (through this same handle): stored
    members are then copied straight from their offsets, without a CRC. The central directory is read twice as a
    stream, so memory does not grow with the number of members: every name and the declared size are checked
    before anything is written; clashing names are found by the file system as members are written.
    """
    index = ZipIndex(archive)
    folders = _checked(index, max_bytes)
    written = 0
    root = str(dest)
    last_parent = ""
    umask_bits = umask()
    # Every folder has a member of its own in what fedml-storage writes; folders made only as the parents of
    # names (thousands per name) would fill a disk with inodes from a small archive. One chain is let through.
    make = _FolderBudget(folders + _DEPTH_READ)
    usual = 0o777 & ~umask_bits
    folder_modes: list[tuple[str, int]] = []  # set once the files are in: a folder may be read-only
    folders_made: list[str] = []
    for m in index.members():
        stops.check()
        rel = m.name.rstrip("/")
        if m.is_dir():
            make(root, rel)
            if made is not None:
                folders_made.append(rel)
            if _has_mode(m) and (perm := stat.S_IMODE(m.mode) & 0o777 & ~umask_bits) != usual:
                folder_modes.append((f"{root}/{rel}", perm))
            continue
        parent = rel.rpartition("/")[0]
        if parent != last_parent:  # members come folder by folder: folders are made once per folder, not per file
            make(root, parent)
            last_parent = parent
        target = f"{root}/{rel}"
        perm = (stat.S_IMODE(m.mode) & 0o777 if _has_mode(m) else 0o666) & ~umask_bits  # as tar: the uploader's, masked
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), perm)
        except (FileExistsError, IsADirectoryError):
            raise _clash(root, rel, "as a file and a folder" if os.path.isdir(target) else "twice") from None
        except OSError as exc:
            raise _too_long(exc, target) from None
        try:
            copy = _copy_stored if m.method == STORED else _copy_deflated
            written += copy(archive, m, fd, max_bytes - written, index.data_end)
            if made is not None:  # cheaper than a scan of the tree after (a stat on an open file)
                made.add(rel, os.fstat(fd), False)
        finally:
            os.close(fd)
    for path, perm in reversed(folder_modes):  # inner folders first
        os.chmod(path, perm)
    if made is not None:
        for rel in folders_made:
            made.add(rel, os.stat(f"{root}/{rel}"), True)
    return written


def _checked(index: ZipIndex, max_bytes: int) -> int:
    """Check every member's name and the sizes declared (IntegrityError on the first fault); how many folders."""
    declared = packed = folders = 0
    for m in index.members():
        _check_member(m, index.data_end)
        declared += m.size
        packed += m.compressed
        folders += m.is_dir()
        if declared > max_bytes:
            raise IntegrityError(f"archive declares more bytes than the {max_bytes} recorded at upload; refusing")
    if packed > index.data_end:  # members sharing their data: one stored chunk written out many times
        raise IntegrityError("archive members overlap each other's data; refusing to extract")
    return folders


def _has_mode(m: Member) -> bool:
    """Whether a member carries a Unix mode (write_zip always stores the file type with it; other zips may not)."""
    return stat.S_IFMT(m.mode) != 0


def _check_member(m: Member, data_end: int) -> None:
    name = m.name
    parts = name.split("/")
    if len(name.encode()) > 4096 or any(len(part.encode()) > 255 for part in parts) or len(parts) > _DEPTH_READ + 1:
        raise IntegrityError(f"archive member {name[:100]!r}... has a name longer than file systems hold (255 bytes "
                             f"a part, 4096 in all) or lies more than {_DEPTH_READ} folders deep; refusing to extract")
    if not name or name.startswith("/") or "\0" in name or ".." in parts:
        raise IntegrityError(f"archive member {name!r} would be written outside the destination; refusing to extract")
    if os.sep == "\\" and any(c in _NOT_ON_WINDOWS or c < " " for c in name.rstrip("/")):
        raise InvalidInput(f"archive member {name!r} has a name Windows cannot hold (one of \\ : * ? \" < > |); "
                           "download it on Linux or macOS, or rename it there and upload the folder again")
    if stat.S_ISLNK(m.mode):  # write_zip never stores links: not written by fedml-storage
        raise IntegrityError(f"archive member {name!r} is a symbolic link; refusing to extract")
    parts = name.rstrip("/").split("/")
    if "." in parts or "" in parts:
        raise IntegrityError(f"archive member {name!r} has an empty or '.' path part; refusing")
    if m.flags & 1:
        raise IntegrityError(f"archive member {name!r} is encrypted; refusing to extract")
    if m.method not in (STORED, DEFLATED) or m.method == STORED and m.compressed != m.size:
        raise IntegrityError(f"archive member {name!r} is packed in a way fedml-storage does not write (method "
                             f"{m.method}); refusing to extract")
    if not 0 <= m.offset < data_end:
        raise IntegrityError(f"archive member {name!r} lies outside the archive; refusing to extract")


class _FolderBudget:
    """Makes folders (`rel` and those above it under `root`), at most `limit` in all."""

    def __init__(self, limit: int) -> None:
        self._left = limit

    def __call__(self, root: str, rel: str) -> None:
        """Level by level where a folder above is missing (os.makedirs recurses once per missing level: a name
        thousands of levels deep would exhaust Python's stack)."""
        if not rel:
            return
        try:
            self._mkdir(root, rel)
            return
        except (FileNotFoundError, NotADirectoryError):  # a folder above is missing, or is a file: level by level
            pass
        parts = rel.split("/")
        for level in range(1, len(parts) + 1):
            try:
                self._mkdir(root, "/".join(parts[:level]))
            except NotADirectoryError:
                raise _clash(root, "/".join(parts[:level - 1]), "as a file and a folder") from None

    def _mkdir(self, root: str, rel: str) -> None:
        """Make the folder `rel` under `root` unless it is one already; a file there is a clash."""
        path = f"{root}/{rel}"
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise _clash(root, rel, "as a file and a folder") from None
            return
        except (FileNotFoundError, NotADirectoryError):
            raise
        except OSError as exc:
            raise _too_long(exc, path) from None
        self._left -= 1
        if self._left < 0:
            raise IntegrityError("archive makes far more folders than it has folder entries (its names lie under "
                                 "folders it does not hold); refusing to extract")


def _clash(root: str, rel: str, how: str) -> Exception:
    """A name that could not be made because it is taken: held `how` by the archive, or only the same name to a
    file system that ignores case or Unicode normalization (macOS, Windows)."""
    parent, _, name = f"{root}/{rel}".rpartition("/")
    try:
        exact = name in os.listdir(parent)
    except OSError:
        exact = True
    if not exact:
        return InvalidInput(f"{rel!r} and another name in its folder are one name to this file system, which "
                            "ignores case or Unicode normalization; download to one that tells them apart (Linux), "
                            "or rename one of them and upload the folder again")
    return IntegrityError(f"archive holds {rel!r} {how}; refusing to extract")


def _too_long(exc: OSError, path: str) -> Exception:
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidInput(f"{path[:200]}... is a longer path than this file system holds; download to a shorter "
                            "dest_path")
    return exc


def _data_start(raw: BinaryIO, m: Member, data_end: int) -> int:
    raw.seek(m.offset)
    size = local_header_size(raw.read(LOCAL_HEADER_SIZE))
    if not size:
        raise IntegrityError(f"archive member {m.name!r} has a bad local header; refusing to extract")
    if m.offset + size + m.compressed > data_end:
        raise IntegrityError(f"archive member {m.name!r} runs past the archive's data; refusing to extract")
    return m.offset + size


def _copy_stored(raw: BinaryIO, m: Member, fd: int, allowed: int, data_end: int) -> int:
    """Copy a stored member's bytes from their offset in the archive (whose member data ends at `data_end`)."""
    if m.size > allowed:
        raise IntegrityError("archive expands past the bytes recorded at upload; refusing")
    raw.seek(_data_start(raw, m, data_end))
    left = m.size
    while left:
        chunk = raw.read(min(CHUNK, left))
        if not chunk:
            raise IntegrityError(f"archive member {m.name!r} is truncated; refusing to extract")
        _write_all(fd, chunk)
        left -= len(chunk)
    return m.size


def _copy_deflated(raw: BinaryIO, m: Member, fd: int, allowed: int, data_end: int) -> int:
    """Inflate a member, stopping past `allowed` bytes, and check its size and CRC."""
    raw.seek(_data_start(raw, m, data_end))
    inflate = zlib.decompressobj(-15)
    left, pending, written, crc = m.compressed, b"", 0, 0
    try:
        while not inflate.eof:
            if not pending:
                pending = raw.read(min(CHUNK, left)) if left else b""
                if not pending:
                    raise IntegrityError(f"archive member {m.name!r} is truncated; refusing to extract")
                left -= len(pending)
            out = inflate.decompress(pending, CHUNK)  # at most CHUNK out, whatever the ratio
            pending = inflate.unconsumed_tail
            written += len(out)
            if written > m.size:  # stopped at once: its size is checked against the recorded total beforehand
                raise IntegrityError(f"archive member {m.name!r} inflates past its recorded size; refusing to extract")
            if written > allowed:
                raise IntegrityError("archive expands past the bytes recorded at upload; refusing")
            crc = zlib.crc32(out, crc)
            _write_all(fd, out)
    except zlib.error as exc:
        raise IntegrityError(f"archive member {m.name!r} cannot be read ({exc}); refusing to extract") from None
    if written != m.size or crc != m.crc:
        raise IntegrityError(f"archive member {m.name!r} does not match its recorded size and CRC; refusing to extract")
    return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
