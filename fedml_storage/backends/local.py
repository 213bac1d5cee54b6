"""The embedded LOCAL store: the same keys as S3, as files under one folder."""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .. import stops
from ..errors import InvalidInput, PreconditionFailed, name_folder
from ..locks import exclusive_lock
from ..modes import open_plain, umask
from ..streams import Readable
from .base import Leftovers, ObjectInfo, ObjectMissing, ObjectStore, Progress, Sink

CHUNK = 8 * 1024 * 1024
TMP_DIR = ".tmp"


class LocalStore(ObjectStore):
    """Objects are files; writes go to a temp file and are renamed into place, so readers never see part of one."""

    service = "LOCAL"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            (self.root / TMP_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot use LOCAL store folder {self.root}: {exc.strerror}; set local_root") from None

    def _path(self, key: str) -> Path:
        path = self.root / key
        if ".." in Path(key).parts or key.startswith("/"):
            raise InvalidInput(f"unsafe key {key!r}")
        return path

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """One writer of manifests at a time, across processes."""
        return exclusive_lock(self.root / ".lock", shared=True)

    def _write_atomic(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        fd, tmp = tempfile.mkstemp(dir=self.root / TMP_DIR, prefix=_temp_prefix(key))
        try:
            with os.fdopen(fd, "wb") as out:
                # mkstemp's 0600 would hide a shared store's data from its other users; some file systems (vfat,
                # CIFS) refuse any chmod, and there private is the only choice
                with contextlib.suppress(OSError):
                    os.chmod(tmp, 0o666 & ~umask())
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            for attempt in range(3):
                target.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed write leaves no folder
                try:
                    os.replace(tmp, target)
                    break
                except FileNotFoundError:  # a delete pruned the (then empty) folder meanwhile
                    if attempt == 2 or not os.path.exists(tmp):
                        raise
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            name_folder(exc, self.root, str(self.root / TMP_DIR))
            raise

    def _copy(self, src: Readable, out: BinaryIO, progress: Progress | None) -> None:
        while chunk := src.read(CHUNK):
            stops.check()
            out.write(chunk)
            if progress:
                progress(len(chunk))

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        with open_plain(path) as src:
            self._write_atomic(key, lambda out: self._copy(src, out, progress))

    def put_stream(self, key: str, stream: Readable, progress: Progress | None = None,
                   size_bound: int | None = None) -> None:
        self._write_atomic(key, lambda out: self._copy(stream, out, progress))

    def get_into(self, key: str, sink: Sink, size: int, progress: Progress | None = None, start: int = 0) -> None:
        try:
            src = open(self._path(key), "rb")
        except OSError as exc:
            if _absent(exc):
                raise ObjectMissing(key) from None
            raise
        with src:
            src.seek(start)
            self._copy(src, sink, progress)  # type: ignore[arg-type]

    def read_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except OSError as exc:
            if _absent(exc):
                raise ObjectMissing(key) from None
            raise
        return data, _etag(data)

    def write_bytes(self, key: str, data: bytes, *, if_match: str | None = None, if_absent: bool = False) -> str:
        if if_match is None and not if_absent:
            self._write_atomic(key, lambda out: out.write(data))
            return _etag(data)
        with self._lock():
            current = _current_etag(self._path(key))
            if (if_absent and current is not None) or (if_match is not None and current != if_match):
                raise PreconditionFailed(key)
            self._write_atomic(key, lambda out: out.write(data))
        return _etag(data)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except OSError as exc:
            if _absent(exc):
                return None
            raise
        return ObjectInfo(key, st.st_size, None, st.st_mtime)  # (an ETag here is read_bytes' MD5: a read)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        root = str(self.root)
        for dirpath, dirnames, filenames in os.walk(base):
            folder = os.path.relpath(dirpath, root).replace(os.sep, "/") + "/"
            folder = "" if folder == "./" else folder
            # only into folders whose keys start with the prefix (`base` is the folder the prefix names, so a folder
            # below it either does or cannot hold such keys); matched as text, no Path made per file
            dirnames[:] = sorted(d for d in dirnames if not (folder == "" and d == TMP_DIR)
                                 and (folder + d + "/").startswith(prefix))
            for filename in sorted(filenames):
                key = folder + filename
                if key.startswith(prefix) and key != ".lock":
                    try:
                        st = os.stat(os.path.join(dirpath, filename))
                    except FileNotFoundError:
                        continue  # deleted while listing
                    yield ObjectInfo(key, st.st_size, None, st.st_mtime)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        path = self._path(key)
        if if_match is None:
            path.unlink(missing_ok=True)
        else:
            with self._lock():
                current = _current_etag(path)
                if current is None:
                    return
                if current != if_match:
                    raise PreconditionFailed(key)
                path.unlink(missing_ok=True)
        self._prune_dirs(path.parent)

    def _prune_dirs(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def remove_leftovers(self, data_prefix: str, older_than: float) -> Leftovers:
        """Temp files of this namespace's interrupted writes (and unmarked ones, of earlier releases), then empty
        folders killed uploads left under `data_prefix`; kept: how many of this namespace's uploads are younger."""
        removed, failed = 0, []
        stale, young = self._temp_files(data_prefix, older_than)
        for path in stale:
            try:
                path.unlink(missing_ok=True)
                removed += 1
            except OSError:  # another user's, in a shared LOCAL store's sticky .tmp folder
                failed.append(str(path))
        self._prune_empty_folders(data_prefix, older_than)
        return Leftovers(removed, tuple(failed), young)

    def _prune_empty_folders(self, prefix: str, older_than: float) -> None:
        """Remove empty folders under `prefix` unchanged since `older_than` (epoch seconds): killed uploads
        leave them. A write racing this makes its folder again (see _write_atomic)."""
        base = self._path(prefix.rstrip("/"))
        folders = []
        for dirpath, _, _ in os.walk(base):
            with contextlib.suppress(OSError):
                folders.append((dirpath, os.stat(dirpath).st_mtime))
        for dirpath, mtime in reversed(folders):  # deepest first, judged by their times before this pass
            if dirpath != str(base) and mtime < older_than:
                with contextlib.suppress(OSError):  # not empty, or gone
                    os.rmdir(dirpath)

    def _temp_files(self, data_prefix: str, older_than: float) -> tuple[builtins.list[Path], int]:
        """This namespace's temp files unchanged since `older_than` (epoch seconds: left by interrupted writes),
        and how many others of its uploads (data writes) there are. Other namespaces' are theirs to clean up."""
        uploads = _temp_prefix(data_prefix)
        namespace = uploads.split(_MARK, 1)[0] + _MARK
        stale, young = [], 0
        for path in (self.root / TMP_DIR).iterdir():
            if not path.name.startswith(namespace) and _MARK in path.name:
                continue
            try:
                if path.stat().st_mtime < older_than:
                    stale.append(path)
                elif path.name.startswith(uploads):
                    young += 1
            except FileNotFoundError:
                pass  # a write just finished with it
        return stale, young


_MARK = "+"  # in no namespace: "<namespace>+data+" begins the temp file of a data write


def _temp_prefix(key: str) -> str:
    """How a temp file for `key` begins: its namespace and kind ('default+data+'), for cleanup to tell them; a long
    namespace by a digest of it (eCryptfs takes names of 143 bytes at most)."""
    parts = key.split("/")[:2]
    if len(parts[0]) > 48:
        parts[0] = hashlib.sha256(parts[0].encode()).hexdigest()[:48]
    return "".join(part + _MARK for part in parts)


def _absent(exc: OSError) -> bool:
    """Whether an error means there is no such object (also a key too long for this file system, as S3 keys may be,
    or one under a file)."""
    return isinstance(exc, (FileNotFoundError, NotADirectoryError)) or exc.errno == errno.ENAMETOOLONG


def _current_etag(path: Path) -> str | None:
    """The ETag of the object at `path` (read whole), None when there is none. Call it under the store's lock."""
    try:
        return _etag(path.read_bytes())
    except OSError as exc:
        if _absent(exc):
            return None
        raise


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
