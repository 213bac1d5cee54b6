"""Source folders: a scan that follows links once, entries sorted by path that spill to disk past a count, and
the tree's fingerprint and digest, computed as the entries stream by."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import heapq
import itertools
import logging
import marshal
import operator
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from . import stops
from .errors import InvalidInput, SourceChanged
from .ignores import IgnoreRules
from .spill import cannot_spill

log = logging.getLogger("fedml_storage")

HELD = 50_000  # entries a tree holds in memory (about 16 MB); past it, sorted runs of them go to temporary files
_RECORD = 256  # entries per record of a run: what reading a run holds of it at once (about 70 KB)
_RUNS = 64  # runs merged into one past this: open files and read buffers stay bounded
MAX_DEPTH = 512  # folder levels an upload packs: removing a tree (shutil.rmtree) recurses once per level
T = TypeVar("T")


class Entry(NamedTuple):
    """One file or folder of a tree, by its POSIX path relative to the root, with the stat fields an upload needs
    to pack it and to tell whether it changed. Flat, one object per entry: every extra object makes Python's
    garbage collector walk the heap more often while a tree is read."""

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


_REL, _SIZE, _MTIME, _CTIME = (operator.attrgetter(f) for f in ("rel", "st_size", "st_mtime_ns", "st_ctime_ns"))


class Entries:
    """A tree's entries in order of relative path, readable any number of times. Up to HELD of them stay in
    memory; past that they go to temporary files in sorted runs, merged as they are read, so a tree of millions
    of files needs about the memory of one of HELD. `close` removes the files."""

    def __init__(self, root: str) -> None:
        self.root = root
        # totals, made by finish(): files, their bytes, the latest mtime or ctime (ns), files and folders, and
        # their paths' length (what a zip adds to size)
        self.files = self.size = self.newest = self.members = self.name_chars = 0
        self._held: list[Entry] = []
        self._runs: list[str] = []
        self._folder: str | None = None
        self._written = 0
        self._spillable = True
        self._finished = False
        self._remove: weakref.finalize | None = None

    def append(self, e: Entry) -> None:
        self._held.append(e)  # counted in the totals as it leaves memory, or at the end: per entry, that is cheaper
        if len(self._held) >= HELD and self._spillable:
            self._spill()

    def finish(self) -> None:
        """Once every entry is in: sorts them and makes the totals."""
        if not self._finished:
            self._finished = True
            self._count(self._held)
        self._held.sort()  # by rel: it is the first field and unique

    def _count(self, entries: list[Entry]) -> None:
        files = [e for e in entries if not e.is_dir]
        self.members += len(entries)
        self.name_chars += sum(map(len, map(_REL, entries))) + len(entries)
        self.files += len(files)
        self.size += sum(map(_SIZE, files))
        self.newest = max(self.newest, max(map(_MTIME, entries), default=0), max(map(_CTIME, entries), default=0))

    def __iter__(self) -> Iterator[Entry]:
        if not self._runs:
            return iter(self._held)
        return heapq.merge(*(self._read(path) for path in self._runs), self._held)

    def close(self) -> None:
        if self._remove is not None:
            self._remove()

    def _spill(self) -> None:
        try:
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="fedml-storage-tree-")
                self._remove = weakref.finalize(self, shutil.rmtree, self._folder, True)
            self._held.sort()
            self._runs.append(self._write_run(self._held))
            self._count(self._held)
            self._held = []
            if len(self._runs) >= _RUNS:
                merged = self._write_run(heapq.merge(*(self._read(path) for path in self._runs)))
                merged_away, self._runs = self._runs, [merged]
                for path in merged_away:
                    with contextlib.suppress(OSError):  # the folder goes at close in any case
                        os.remove(path)
        except OSError as exc:  # the runs written so far stay good; the rest is held
            cannot_spill("the list of files", exc)
            self._spillable = False

    def _write_run(self, entries: Iterable[Entry]) -> str:
        assert self._folder is not None
        path = os.path.join(self._folder, f"run-{self._written}")
        self._written += 1
        try:
            with open(path, "wb") as fh:
                for part in batches(entries, _RECORD):
                    marshal.dump([e[:1] + e[2:] for e in part], fh)  # without the shared root
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(path)
            raise
        return path

    def _read(self, path: str) -> Iterator[Entry]:
        root = self.root
        with open(path, "rb") as fh:
            while True:
                try:
                    part = marshal.load(fh)
                except EOFError:
                    return
                for rel, *fields in part:
                    yield Entry(rel, root, *fields)


@dataclass
class Tree:
    """A folder's files and subfolders, and what was left out."""

    entries: Entries
    left_out: list[str] = field(default_factory=list)  # FIFOs, sockets, devices, links to folders held already
    ignored: int = 0  # items left out by the upload's ignore patterns (a folder counts once, not its contents)
    links: int = 0  # links met, to files or folders (followed or left out)
    fedml_own: dict[tuple[int, int], str] = field(default_factory=dict)  # fedml-storage's files and folders


def batches(items: Iterable[T], n: int) -> Iterator[list[T]]:
    it = iter(items)
    while part := list(itertools.islice(it, n)):
        yield part


def scan_tree(root: Path, ignore: IgnoreRules | None = None, own: Iterable[Path] = ()) -> Tree:
    """Files and folders under `root`, links followed, without those `ignore` matches. Every folder is read
    once: a link to a folder the upload already holds (`latest -> run-7`, a link back up, two links to one place)
    is left out, like FIFOs, sockets and devices. So links can neither loop nor multiply the tree. The files and
    folders `own` (fedml-storage's: its config file with a saved key, its caches, a LOCAL store) are left out
    too."""
    top = str(root)
    tree = Tree(Entries(top))
    try:
        seen = {_folder_id(os.stat(root))}
        for folder in own:  # by device and inode: also when reached through a link
            with contextlib.suppress(OSError):
                tree.fedml_own[_folder_id(os.stat(folder))] = str(folder)
        links: list[tuple[str, str, os.stat_result]] = []
        leaves_out = ignore.in_folder(top) if ignore is not None else None
        _walk(top, "", tree, seen, links, leaves_out)
        while links:  # judged once every real folder of the tree is known, so a real folder always wins over a link
            rel, path, st = links.pop(0)
            if not _held(rel, path, st, tree, seen, "it links to a folder the upload already holds"):
                _walk(path, rel + "/", tree, seen, links, leaves_out)
    except BaseException:
        tree.entries.close()
        raise
    tree.entries.finish()
    tree.left_out.sort()
    return tree


def _folder_id(st: os.stat_result) -> tuple[int, int]:  # a file's too
    return st.st_dev, st.st_ino


def _is_own(rel: str, path: str, st: os.stat_result, tree: Tree) -> bool:
    """Whether this is one of fedml-storage's own files or folders (it is then left out, with a warning)."""
    if (own := tree.fedml_own.get(_folder_id(st))) is None:
        return False
    log.warning("leaving out %s: it is fedml-storage's own%s (settings that may hold a key, caches or a LOCAL "
                "store)", path, "" if own == path else f", {own}")
    tree.left_out.append(rel)
    return True


def _held(rel: str, path: str, st: os.stat_result, tree: Tree, seen: set[tuple[int, int]], why: str) -> bool:
    """Whether the tree holds this folder already (it is left out, saying `why`), or it is fedml-storage's own;
    if neither, it is added."""
    if _is_own(rel, path, st, tree):
        return True
    if _folder_id(st) in seen:
        log.info("leaving out %s: %s", path, why)
        tree.left_out.append(rel)
        return True
    seen.add(_folder_id(st))
    tree.entries.append(Entry.of(rel, tree.entries.root, st, True))
    return False


def _walk(folder: str, prefix: str, tree: Tree, seen: set[tuple[int, int]],
          links: list[tuple[str, str, os.stat_result]], leaves_out: Callable[[str, str, bool], bool] | None) -> None:
    """Read `folder` and the real folders below it, depth first in name order, as a recursion would (without
    one: Python's stack would limit the depth); links to folders are put in `links` for later."""
    root = tree.entries.root
    own = tree.fedml_own
    stack = [(_listing(folder, prefix), _joinable(folder), prefix)]
    while stack:
        stops.check()  # once a folder
        items, base, prefix = stack[-1]
        for name, is_link in items:
            rel = prefix + name
            path = base + name  # what os.path.join gives, at a fraction of its cost per file
            if leaves_out is not None and leaves_out(rel, path, is_link):
                tree.ignored += 1
                continue
            st = _stat(path, rel)
            tree.links += is_link
            if stat.S_ISDIR(st.st_mode):
                if is_link:
                    links.append((rel, path, st))
                # held already: inside a linked folder, through another link (or a bind mount)
                elif not _held(rel, path, st, tree, seen, "the upload already holds this folder"):
                    stack.append((_listing(path, rel + "/"), _joinable(path), rel + "/"))
                    break  # into it; this folder's other items come after
            elif stat.S_ISREG(st.st_mode):
                if own and (st.st_dev, st.st_ino) in own and _is_own(rel, path, st, tree):
                    continue
                tree.entries.append(Entry(rel, root, False, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                          st.st_mode))
            else:
                log.info("leaving out %s: neither a file nor a folder", path)
                tree.left_out.append(rel)
        else:
            stack.pop()


def _joinable(folder: str) -> str:
    """`folder` ending in one separator, so that adding a name joins them."""
    return folder if folder.endswith(os.sep) or (os.altsep and folder.endswith(os.altsep)) else folder + os.sep


def _listing(folder: str, prefix: str) -> Iterator[tuple[str, bool]]:
    """The folder's names (with whether each is a link), sorted: which of two links is followed must not vary."""
    if prefix.count("/") > MAX_DEPTH:
        raise InvalidInput(f"{folder} lies more than {MAX_DEPTH} folders deep, past what fedml-storage packs; "
                           "upload a folder further down, or flatten the tree")
    try:
        with os.scandir(folder) as it:
            return iter(sorted((item.name, item.is_symlink()) for item in it))
    except (FileNotFoundError, NotADirectoryError):
        raise _removed(folder) from None
    except OSError as exc:
        hint = f" (leave it out with ignore_patterns: '{prefix}')" if prefix else ""
        raise InvalidInput(f"cannot read {folder}: {exc.strerror}; nothing was published{hint}") from None


def _removed(path: str) -> SourceChanged:
    """What a scan says of an item that was there when its folder was listed and is gone (or replaced) now."""
    return SourceChanged(f"{path} was removed or replaced while the folder was being read; nothing was published, "
                         "upload it again once nothing moves files in it")


def _stat(path: str, rel: str) -> os.stat_result:
    """The stat of a tree's item, links followed (real inode numbers, where a DirEntry on Windows reports 0)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{path!r} has a name that is not valid UTF-8, which a zip cannot hold; rename it "
                           "and upload again") from None
    try:
        return os.stat(path)
    except FileNotFoundError:
        if not os.path.islink(path):  # the listing had it: removed since
            raise _removed(path) from None
        raise InvalidInput(f"{path} is a broken link; remove it, fix its target or leave it out with "
                           "ignore_patterns") from None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise InvalidInput(f"{path} is a link that leads back to itself; remove it, fix its target or leave it out "
                           "with ignore_patterns") from None


def same_file_state(a: os.stat_result | Entry, b: os.stat_result | Entry) -> bool:
    """Whether nothing wrote to the file between the two stats (ctime catches a write whose mtime was put back)."""
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


class Fingerprints(NamedTuple):
    state: str  # changes whenever any path, size, mtime, ctime or inode does: the key of the tree digest cache
    # (made of the files' lines and the folders' apart: a download writes files in path order, folders after)
    modes: str  # the files' permission bits, which the archive keeps and downloads give back
    folder_modes: str  # the same of the folders (apart, so that records made before they were still match)


def state_line(rel: str, st: os.stat_result | Entry, is_dir: bool) -> str:
    """What the state fingerprint takes of a tree's item; sorted as the items' paths are."""
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{is_dir:d}\n"


def tree_fingerprints(entries: Iterable[Entry]) -> Fingerprints:
    """The tree's state and modes fingerprints, in one pass. (The state takes ctime too: tools that restore an
    mtime after writing, such as tar, unzip or cp -p, cannot restore it.)"""
    files, folders, modes, folder_modes = hashlib.sha256(), hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for part in batches(entries, 4096):
        stops.check()
        lines = "".join(state_line(e.rel, e, False) for e in part if not e.is_dir)
        files.update(lines.encode("utf-8", "surrogateescape"))
        lines = "".join(state_line(e.rel, e, True) for e in part if e.is_dir)
        folders.update(lines.encode("utf-8", "surrogateescape"))
        lines = "".join(f"{e.rel}\0{e.st_mode & 0o777:o}\n" for e in part if not e.is_dir)
        modes.update(lines.encode("utf-8", "surrogateescape"))
        lines = "".join(f"{e.rel}\0{e.st_mode & 0o777:o}\n" for e in part if e.is_dir)
        folder_modes.update(lines.encode("utf-8", "surrogateescape"))
    return Fingerprints(state_of(files.hexdigest(), folders.hexdigest()), modes.hexdigest(), folder_modes.hexdigest())


def state_of(files: str, folders: str) -> str:
    """The state fingerprint, of its files' lines' and folders' lines' digests."""
    return hashlib.sha256(f"{files}:{folders}".encode()).hexdigest()


class TreeDigest:
    """SHA-256 over every path, size and file digest, fed in path order: equal exactly when the trees' contents are."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, digested: Iterable[tuple[Entry, str | None]]) -> None:
        """Add entries with their files' SHA-256 (None for folders)."""
        lines = "".join(f"D\0{e.rel}\n" if e.is_dir else f"F\0{e.rel}\0{e.st_size}\0{sha}\n" for e, sha in digested)
        self._h.update(lines.encode("utf-8", "surrogateescape"))

    def hexdigest(self) -> str:
        return self._h.hexdigest()
