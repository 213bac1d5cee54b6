"""The spool behind a large folder's zip directory: in memory, then on disk, then in memory again when the
temporary folder fills up, never losing a byte."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from fedml_storage import spill
from fedml_storage.spill import Spool


@pytest.mark.parametrize("room", [None, 0, 700, 1500])  # bytes the temporary folder takes before it is full
def test_spool_gives_back_every_byte_whatever_the_disk_takes(room: int | None, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(spill, "_FLUSH", 256)
    written = [0]
    real_write = os.write

    def filling(fd: int, data) -> int:
        if room is None:
            return real_write(fd, data)
        left = room - written[0]
        if left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        done = real_write(fd, bytes(data)[:min(left, 100)])  # short writes, as a filling disk gives
        written[0] += done
        return done

    monkeypatch.setattr(spill.os, "write", filling)
    spool = Spool(300, "a test's records")
    records = [f"record {i:04d} ".encode() * 3 for i in range(120)]
    with caplog.at_level(logging.WARNING, logger="fedml_storage"):
        for record in records:
            spool.write(record)
        got = b"".join(spool.blocks(1000))
    spool.close()
    assert got == b"".join(records)
    said = [r.getMessage() for r in caplog.records if "holding it in memory" in r.getMessage()]
    assert len(said) == (0 if room is None else 1)
