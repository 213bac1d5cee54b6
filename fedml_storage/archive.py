"""Directories as zip archives: scan, tree digest, streamed packing and guarded extraction."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import IntegrityError, InvalidInput

log = logging.getLogger("fedml_storage")

CHUNK = 1024 * 1024
METHODS = {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}


@dataclass(frozen=True)
class Entry:
    """One file or folder of a tree, by its POSIX path relative to the root."""

    rel: str
    path: Path
    st: os.stat_result
    is_dir: bool


def scan_tree(root: Path) -> list[Entry]:
    """Files (links to files followed) and folders under `root`, sorted; links to folders are skipped."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        base = Path(dirpath)
        rel_base = base.relative_to(root).as_posix()
        kept = []
        for d in sorted(dirnames):
            full = base / d
            if full.is_symlink():
                log.warning("skipping linked folder %s (links to folders are not followed)", full)
                continue
            kept.append(d)
            rel = d if rel_base == "." else f"{rel_base}/{d}"
            entries.append(Entry(rel, full, full.stat(), True))
        dirnames[:] = kept
        for f in sorted(filenames):
            full = base / f
            try:
                st = full.stat()
            except FileNotFoundError:
                raise InvalidInput(f"{full} is a broken link; remove it or fix its target") from None
            if not stat.S_ISREG(st.st_mode):
                log.warning("skipping %s: not a regular file", full)
                continue
            rel = f if rel_base == "." else f"{rel_base}/{f}"
            entries.append(Entry(rel, full, st, False))
    entries.sort(key=lambda e: e.rel)
    return entries


def _raise(exc: OSError) -> None:
    raise InvalidInput(f"cannot read {exc.filename}: {exc.strerror}") from None


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
        self.sha256.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def unordered(self) -> BinaryIO:
        """The seekable file beneath, for out-of-order (ranged) writes; call `rehash()` after them."""
        return self._out

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
            with open(e.path, "rb") as src, zf.open(info, "w", force_zip64=e.st.st_size > 0x7FFFFFFF) as dst:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    dst.write(chunk)
                    if progress:
                        progress(len(chunk))
            digests[e.rel] = h.hexdigest()
    return digests


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(max(mtime, 315532800 + 86400))  # zip cannot hold dates before 1980
    return t[:6]


def _check_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith(("/", "\\"))
        or "\\" in name
        or "\0" in name
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    ):
        raise IntegrityError(f"archive member {name!r} would be written outside the destination; refusing to extract")
    return path


def safe_extract(archive: Path, dest: Path, max_bytes: int) -> int:
    """Extract into the empty folder `dest`, refusing escaping paths, outside links and more than `max_bytes`."""
    written = 0
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        members = [(info, _check_member(info.filename)) for info in infos]
        if sum(info.file_size for info in infos) > max_bytes:
            raise IntegrityError(f"archive declares more bytes than the {max_bytes} recorded at upload; refusing")
        for info, rel in members:
            target = dest.joinpath(*rel.parts)
            mode = info.external_attr >> 16
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                with zf.open(info) as src:
                    link = src.read(4097).decode("utf-8", "replace")
                if len(link) > 4096:
                    raise IntegrityError(f"archive link {info.filename!r} has an oversized target; refusing")
                resolved = PurePosixPath(os.path.normpath(PurePosixPath(rel.parent, link)))
                if link.startswith("/") or resolved.parts[:1] == ("..",):
                    raise IntegrityError(f"archive link {info.filename!r} -> {link!r} points outside; refusing")
                os.symlink(link, target)
                continue
            with zf.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise IntegrityError(f"archive expands past the {max_bytes} bytes recorded at upload; refusing")
                    out.write(chunk)
            if stat.S_IMODE(mode):
                os.chmod(target, stat.S_IMODE(mode) & 0o777)
    return written
