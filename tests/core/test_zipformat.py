"""The streamed zip format: what it writes is what zipfile writes for a stream, and what it reads agrees with
zipfile, including the zip64 fields that large members, offsets and member counts need."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from fedml_storage import zipformat
from fedml_storage.archive import _zip_time, write_zip
from fedml_storage.errors import IntegrityError
from fedml_storage.trees import scan_tree
from fedml_storage.zipformat import COUNT_LIMIT


def _zipfile_write(entries, out, method: int = zipfile.ZIP_STORED) -> None:
    """How fedml-storage packed a tree through zipfile before its own writer: the layout to keep (deflated at
    level 1, which it meant and zipfile did not apply: a ZipInfo passed to open() keeps level None, i.e. 6)."""
    with zipfile.ZipFile(out, "w") as zf:
        for e in entries:
            info = zipfile.ZipInfo(e.rel + ("/" if e.is_dir else ""), _zip_time(e.st_mtime))
            info.external_attr = (stat.S_IMODE(e.st_mode) | (stat.S_IFDIR if e.is_dir else stat.S_IFREG)) << 16
            if e.is_dir:
                info.external_attr |= 0x10
                zf.writestr(info, b"")
                continue
            info.file_size = e.st_size
            info.compress_type = method
            info._compresslevel = 1 if method == zipfile.ZIP_DEFLATED else None
            with open(e.path, "rb") as src, zf.open(info, "w", force_zip64=e.st_size > 0x7FFFFFFF) as dst:
                dst.write(src.read())


class _Stream(io.RawIOBase):
    """A non-seekable sink, as the upload pipe is."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += b
        return len(b)


def _tree(root: Path, files: int = 12) -> Path:
    (root / "empty dir").mkdir(parents=True)
    (root / "ünïcode" / "deep").mkdir(parents=True)
    (root / "ünïcode" / "deep" / "naïve.txt").write_text("unicode name")
    (root / "empty.bin").write_bytes(b"")
    for i in range(files):
        (root / f"f{i:03d}.txt").write_bytes(os.urandom(i * 97))
    os.chmod(root / "f001.txt", 0o755)
    return root


def _both(src: Path, method: str = "stored") -> tuple[bytes, bytes]:
    entries = scan_tree(src).entries
    ours, theirs = _Stream(), _Stream()
    write_zip(entries, ours, method)
    _zipfile_write(entries, theirs, {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}[method])
    return bytes(ours.data), bytes(theirs.data)


@pytest.mark.parametrize("method", ["stored", "deflated"])
def test_archive_bytes_are_those_zipfile_writes(tmp_path: Path, method: str) -> None:
    src = _tree(tmp_path / "t")
    (src / "rows.csv").write_text("a,b\n" * 50_000)
    ours, theirs = _both(src, method)
    assert ours == theirs


def test_zip64_fields_are_those_zipfile_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lowered limits (in both writers) put every zip64 path in play without writing gigabytes: large members,
    # offsets past the limit, more members than the end record can count.
    for module in (zipformat, zipfile):
        monkeypatch.setattr(module, "ZIP64_LIMIT", 500)
    monkeypatch.setattr(zipformat, "COUNT_LIMIT", 9)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 9)
    ours, theirs = _both(_tree(tmp_path / "t"))
    assert ours == theirs
    assert b"PK\x06\x06" in ours  # the zip64 end record was written
    index = zipformat.ZipIndex(io.BytesIO(ours))
    members = list(index.members())
    infos = zipfile.ZipFile(io.BytesIO(ours)).infolist()
    assert [(m.name, m.size, m.compressed, m.offset, m.crc) for m in members] == [
        (i.filename, i.file_size, i.compress_size, i.header_offset, i.CRC) for i in infos]
    assert any(m.offset > 500 for m in members) and any(m.size > 500 for m in members)


def test_deflated_archive_reads_back_in_zipfile(tmp_path: Path) -> None:
    src = _tree(tmp_path / "t")
    (src / "rows.csv").write_text("a,b\n" * 50_000)
    out = _Stream()
    write_zip(scan_tree(src).entries, out, method="deflated")
    zf = zipfile.ZipFile(io.BytesIO(bytes(out.data)))
    assert zf.testzip() is None  # every member's CRC checks out
    assert zf.read("rows.csv") == (src / "rows.csv").read_bytes()
    assert zf.getinfo("rows.csv").compress_size < 50_000
    assert zf.read("ünïcode/deep/naïve.txt") == b"unicode name"


def test_reader_agrees_with_zipfile_on_foreign_archives() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:  # seekable: no data descriptors
        zf.writestr("a.txt", "a" * 1000)
        zf.writestr(zipfile.ZipInfo("dir/"), b"")
        zf.writestr("dir/ß.txt", b"x", compress_type=zipfile.ZIP_STORED)
        zf.comment = b"an archive comment"
    index = zipformat.ZipIndex(buf)
    got = [(m.name, m.method, m.size, m.compressed, m.offset, m.crc, m.is_dir()) for m in index.members()]
    assert got == [(i.filename, i.compress_type, i.file_size, i.compress_size, i.header_offset, i.CRC, i.is_dir())
                   for i in zipfile.ZipFile(buf).infolist()]


@pytest.mark.parametrize(("archive", "words"), [
    (b"", "no end of central directory"),
    (b"PK\x05\x06" + b"\0" * 4 + (5).to_bytes(2, "little") * 2 + b"\0" * 10, "lists 0 members where its end record"),
    (b"PK\x01\x02" + b"\0" * 10 + b"PK\x05\x06" + b"\0" * 4 + b"\1\0\1\0" + (10).to_bytes(4, "little") + b"\0" * 6,
     "cut short"),
])
def test_malformed_central_directories_are_refused(archive: bytes, words: str) -> None:
    with pytest.raises(IntegrityError, match=words):
        list(zipformat.ZipIndex(io.BytesIO(archive)).members())


def test_zip64_archive_with_the_longest_comment_is_read() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # more members than the end record counts: zip64 end records
        for i in range(COUNT_LIMIT + 1):
            zf.writestr(f"{i}", b"")
        zf.comment = b"c" * 0xFFFF  # as long as a comment can be: the zip64 locator sits 64 KiB before the end
    index = zipformat.ZipIndex(buf)
    assert index.count == COUNT_LIMIT + 1 == sum(1 for _ in index.members())


@pytest.mark.parametrize("method", ["stored", "deflated"])
@pytest.mark.parametrize("zip64", [False, True])
def test_an_archive_never_exceeds_its_size_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str,
                                                 zip64: bool) -> None:
    """The bound sizes a streamed upload's parts (S3 takes at most 10,000): an archive past it would fail there."""
    if zip64:
        monkeypatch.setattr(zipformat, "ZIP64_LIMIT", 500)
        monkeypatch.setattr(zipformat, "COUNT_LIMIT", 9)
    src = _tree(tmp_path / "t", files=30)
    deep = src / ("𝔘" * 40) / ("𝔙" * 40)  # four UTF-8 bytes a character, in every header twice
    deep.mkdir(parents=True)
    for i in range(40):
        (deep / f"{'𝔚' * 30}{i}").write_bytes(os.urandom(i % 3))  # tiny members: headers outweigh the data
    (src / "noise.bin").write_bytes(os.urandom(3_000_000))  # incompressible: deflate's worst case
    entries = scan_tree(src).entries
    out = _Stream()
    write_zip(entries, out, method)
    bound = zipformat.size_bound(entries.size, entries.members, entries.name_chars)
    assert len(out.data) <= bound, (len(out.data), bound)
    assert bound < 2 * len(out.data)  # and not so loose that parts grow for nothing
