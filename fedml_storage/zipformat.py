"""The zip format, streamed both ways, in memory that does not grow with the number of members.

Writing: members go one after another to a non-seekable stream, each followed by a data descriptor, laid out as
zipfile lays them out for such a stream; the central directory waits in a spool file until the end (zipfile keeps
a ZipInfo per member until it closes: about 0.5 KB a file). Reading: the central directory is parsed block by block
into small records, as often as needed, instead of into a list of every member.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

from .errors import IntegrityError
from .spill import Spool
from .streams import Writable

STORED, DEFLATED = 0, 8
ZIP64_LIMIT = (1 << 31) - 1  # zipfile's: past it, sizes and offsets move into zip64 fields
COUNT_LIMIT = (1 << 16) - 1
_LOCAL = struct.Struct("<4s2B4HL2L2H")
LOCAL_HEADER_SIZE = _LOCAL.size
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_END64 = struct.Struct("<4sQ2H2L4Q")
_LOCATOR64 = struct.Struct("<4sLQL")
_DESCRIPTOR, _DESCRIPTOR64 = struct.Struct("<4s3L"), struct.Struct("<4sL2Q")
_SIG_LOCAL, _SIG_CENTRAL, _SIG_END = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
_SIG_END64, _SIG_LOCATOR64, _SIG_DESCRIPTOR = b"PK\x06\x06", b"PK\x06\x07", b"PK\x07\x08"
_DATA_DESCRIPTOR, _UTF8 = 0x08, 0x800
_VERSION, _VERSION64 = 20, 45
_UNIX = 3
_COALESCE = 256 * 1024  # headers and small files are gathered into writes of about this size
_SPOOL_IN_MEMORY = 4 * 1024 * 1024  # central directory bytes kept in memory before the spool goes to disk
_READ_BLOCK = 1024 * 1024  # must exceed the largest central directory record: 46 + 3 * 65,535 bytes


def local_header_size(header: bytes) -> int:
    """Length of a local file header with its name and extra field, from its first 30 bytes (0 if not one)."""
    if len(header) < _LOCAL.size or header[:4] != _SIG_LOCAL:
        return 0
    name_len, extra_len = _LOCAL.unpack_from(header)[-2:]
    return _LOCAL.size + name_len + extra_len


def size_bound(data: int, members: int, name_chars: int) -> int:
    """The most bytes a zip of `members` holding `data` bytes in all, with paths of `name_chars` characters in all,
    can take as written here: each path twice in UTF-8, headers with zip64 fields, deflate's worst case."""
    return data + data // 500 + members * 256 + 8 * name_chars + (1 << 20)


class ZipWriter:
    """Writes a zip archive to `out` (only `write` is used): `add` members, then `finish`; `close` in any case."""

    def __init__(self, out: Writable, method: int = STORED, level: int = 1) -> None:
        self._out = out
        self._method = method
        self._level = level
        self._buffer = bytearray()
        self._pos = 0
        self._count = 0
        self._central = Spool(_SPOOL_IN_MEMORY, "a zip's central directory")

    def add(self, name: str, date_time: tuple[int, ...], external_attr: int, size: int,
            chunks: Iterable[bytes] = ()) -> None:
        """Add a member whose data is `chunks` (`size` bytes are expected: it decides the zip64 fields); a name
        ending in "/" is a folder, stored empty."""
        method = STORED if name.endswith("/") else self._method
        encoded, flags = _encode(name)
        dosdate = (date_time[0] - 1980) << 9 | date_time[1] << 5 | date_time[2]
        dostime = date_time[3] << 11 | date_time[4] << 5 | date_time[5] // 2
        zip64 = size * 1.05 > ZIP64_LIMIT  # as zipfile decides, leaving room for data that does not compress
        version = _VERSION64 if zip64 else _VERSION
        extra = struct.pack("<2H2Q", 1, 16, 0, 0) if zip64 else b""
        offset = self._pos
        self._write(_LOCAL.pack(_SIG_LOCAL, version, 0, flags, method, dostime, dosdate, 0,
                                0xFFFFFFFF if zip64 else 0, 0xFFFFFFFF if zip64 else 0, len(encoded), len(extra)))
        self._write(encoded + extra)
        crc = written = compressed = 0
        compressor = zlib.compressobj(self._level, zlib.DEFLATED, -15) if method == DEFLATED else None
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            written += len(chunk)
            if compressor is not None:
                chunk = compressor.compress(chunk)
            compressed += len(chunk)
            self._write(chunk)
        if compressor is not None:
            tail = compressor.flush()
            compressed += len(tail)
            self._write(tail)
        if not zip64 and max(written, compressed) > ZIP64_LIMIT:
            raise ValueError(f"{name!r} grew past {ZIP64_LIMIT} bytes while it was added; it was {size} bytes")
        descriptor = _DESCRIPTOR64 if zip64 else _DESCRIPTOR
        self._write(descriptor.pack(_SIG_DESCRIPTOR, crc, compressed, written))
        self._count += 1
        self._central.write(_central_record(encoded, flags, method, dostime, dosdate, crc, compressed, written, offset,
                                            external_attr, version))

    def finish(self) -> None:
        """Write the central directory and the end records."""
        start = self._pos
        for block in self._central.blocks(_READ_BLOCK):
            self._write(block)
        self.close()
        end = self._pos
        count, size = self._count, end - start
        if count > COUNT_LIMIT or start > ZIP64_LIMIT or size > ZIP64_LIMIT:
            self._write(_END64.pack(_SIG_END64, 44, _VERSION64, _VERSION64, 0, 0, count, count, size, start))
            self._write(_LOCATOR64.pack(_SIG_LOCATOR64, 0, end, 1))
            count, size, start = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(start, 0xFFFFFFFF)
        self._write(_END.pack(_SIG_END, 0, 0, count, count, size, start, 0))
        self._flush()

    def close(self) -> None:
        """Let go of the spooled central directory (after `finish`, or instead of it when packing failed)."""
        self._central.close()

    def _write(self, data: bytes) -> None:
        self._pos += len(data)
        if len(data) >= _COALESCE:
            self._flush()
            self._out.write(data)
            return
        self._buffer += data
        if len(self._buffer) >= _COALESCE:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._out.write(bytes(self._buffer))
            self._buffer.clear()


def _encode(name: str) -> tuple[bytes, int]:
    try:
        return name.encode("ascii"), _DATA_DESCRIPTOR
    except UnicodeEncodeError:
        return name.encode("utf-8"), _DATA_DESCRIPTOR | _UTF8


def _central_record(encoded: bytes, flags: int, method: int, dostime: int, dosdate: int, crc: int, compressed: int,
                    size: int, offset: int, external_attr: int, version: int) -> bytes:
    fields = []
    if size > ZIP64_LIMIT or compressed > ZIP64_LIMIT:
        fields += [size, compressed]
        size = compressed = 0xFFFFFFFF
    if offset > ZIP64_LIMIT:
        fields.append(offset)
        offset = 0xFFFFFFFF
    extra = struct.pack(f"<2H{len(fields)}Q", 1, 8 * len(fields), *fields) if fields else b""
    if fields:
        version = _VERSION64
    return _CENTRAL.pack(_SIG_CENTRAL, version, _UNIX, version, 0, flags, method, dostime, dosdate, crc, compressed,
                         size, len(encoded), len(extra), 0, 0, 0, external_attr, offset) + encoded + extra


class Member(NamedTuple):
    """One central directory record: what extraction needs of it."""

    name: str
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int
    mode: int  # the Unix mode in the upper half of the external attributes

    def is_dir(self) -> bool:
        return self.name.endswith("/")


class ZipIndex:
    """The central directory of the zip archive open in `raw`; a malformed one raises IntegrityError."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        raw.seek(0, 2)
        length = raw.tell()
        tail_start = max(0, length - _LOCATOR64.size - _END.size - 0xFFFF)  # the end record, its comment, a locator
        raw.seek(tail_start)
        tail = raw.read()
        at = tail.rfind(_SIG_END)
        if at < 0 or len(tail) - at < _END.size:
            raise _bad("it has no end of central directory")
        _, disk, cd_disk, _, count, size, start, _ = _END.unpack_from(tail, at)
        end = tail_start + at
        locator = at - _LOCATOR64.size
        if locator >= 0 and tail[locator:locator + 4] == _SIG_LOCATOR64:
            _, _, end64, _ = _LOCATOR64.unpack_from(tail, locator)
            if end64 + _END64.size > tail_start + locator:
                raise _bad("its zip64 end record lies outside the archive")
            raw.seek(end64)
            record = raw.read(_END64.size)
            if len(record) < _END64.size or record[:4] != _SIG_END64:
                raise _bad("its zip64 end record is missing")
            _, _, _, _, disk, cd_disk, _, count, size, start = _END64.unpack(record)
            end = end64
        if disk or cd_disk:
            raise _bad("it spans several disks")
        if start + size > end:
            raise IntegrityError("the stored archive's central directory lies outside the archive; refusing to extract")
        self.count, self.data_end, self._size = count, start, size

    def members(self) -> Iterator[Member]:
        """Every member, in central directory order; read from the archive again on each call."""
        pos, end, seen = self.data_end, self.data_end + self._size, 0
        while pos < end:
            self._raw.seek(pos)
            block = self._raw.read(min(_READ_BLOCK, end - pos))
            parsed, used = _parse(block, pos == end - len(block))
            if not used:
                raise _bad("a central directory record is cut short")
            pos += used
            seen += len(parsed)
            yield from parsed  # parsed before yielding: the caller may move the handle
        if seen != self.count:
            raise _bad(f"its central directory lists {seen} members where its end record says {self.count}")


def _parse(block: bytes, last: bool) -> tuple[list[Member], int]:
    members: list[Member] = []
    at = 0
    while len(block) - at >= _CENTRAL.size:
        fields = _CENTRAL.unpack_from(block, at)
        if fields[0] != _SIG_CENTRAL:
            raise _bad("a central directory record has a bad signature")
        flags, method, crc, compressed, size, name_len, extra_len, comment_len = fields[5:7] + fields[9:15]
        external_attr, offset = fields[17], fields[18]
        stop = at + _CENTRAL.size + name_len + extra_len + comment_len
        if stop > len(block):
            break
        raw_name = block[at + _CENTRAL.size:at + _CENTRAL.size + name_len]
        try:
            name = raw_name.decode("utf-8" if flags & _UTF8 else "cp437")
        except UnicodeDecodeError:
            raise _bad(f"member name {raw_name!r} is not valid UTF-8") from None
        extra = block[at + _CENTRAL.size + name_len:at + _CENTRAL.size + name_len + extra_len]
        if 0xFFFFFFFF in (size, compressed, offset):
            size, compressed, offset = _zip64_fields(extra, size, compressed, offset)
        members.append(Member(name, flags, method, crc, compressed, size, offset, external_attr >> 16))
        at = stop
    if last and at != len(block):
        raise _bad("a central directory record is cut short")
    return members, at


def _zip64_fields(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, at)
        if kind == 1:
            values = list(struct.unpack_from(f"<{min(length, len(extra) - at - 4) // 8}Q", extra, at + 4))
            try:
                size = values.pop(0) if size == 0xFFFFFFFF else size
                compressed = values.pop(0) if compressed == 0xFFFFFFFF else compressed
                offset = values.pop(0) if offset == 0xFFFFFFFF else offset
            except IndexError:
                raise _bad("a zip64 extra field is too short") from None
            return size, compressed, offset
        at += 4 + length
    raise _bad("a member's zip64 extra field is missing")


def _bad(why: str) -> IntegrityError:
    return IntegrityError(f"the stored archive is not a readable zip ({why}); refusing to extract")
