"""Downloads that meet in one folder or over one kept partial download: never a changed result, a failure or a
hang because of another download, live, killed or stalled (helper-96, helper-99)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
from pathlib import Path

from fedml_storage import partials
from fedml_storage.dest_temps import sweep

from .conftest import Store
from .test_resume import MiB, _killed_leftovers


def test_two_sweeps_never_keep_one_killed_part_at_once(isolated_home: Path, tmp_path: Path) -> None:
    """helper-96: a second download's sweep kept the part the first sweep was keeping, took it up and fetched on;
    the first one's late truncate then cut that download's finished file back to what it had kept."""
    out, kept, sha = tmp_path / "out", isolated_home / "partial", "d" * 64
    out.mkdir()
    data = os.urandom(10 * MiB)
    _killed_leftovers(out, b"%s %020d\n" % (sha.encode(), 9 * MiB), data)
    others: list[Path] = []

    def first_keeps(part: Path) -> None:  # the other sweep runs while this one is about to keep the part
        sweep(out, lambda other: others.append(other) or partials.keep_killed(kept, sha, other))
        partials.keep_killed(kept, sha, part)

    sweep(out, first_keeps)
    assert others == []  # it found the part held, and left it to the first
    assert (kept / sha).read_bytes() == data[:9 * MiB] and list(out.iterdir()) == []


def _stored_and_partly_kept(store: Store, home: Path, tmp_path: Path) -> tuple[bytes, Path]:
    """A 12 MiB file stored, and its first 9 MiB kept by a failed download; the data and the kept file."""
    data = os.urandom(12 * MiB)
    (tmp_path / "blob.bin").write_bytes(data)
    assert store.client().upload(str(tmp_path / "blob.bin")).ok
    kept = home / "partial" / hashlib.sha256(data).hexdigest()
    kept.parent.mkdir(parents=True)
    kept.write_bytes(data[:9 * MiB])
    return data, kept


def test_a_kept_download_still_held_by_the_sweep_that_kept_it_is_not_taken_up(store: Store, isolated_home: Path,
                                                                              tmp_path: Path, caplog) -> None:
    """A sweep stalled right after keeping a killed part still holds its lock: a download taking that part up
    failed with BlockingIOError ("please report this") and deleted it; it now starts afresh."""
    data, kept = _stored_and_partly_kept(store, isolated_home, tmp_path)
    holder = os.open(kept, os.O_RDONLY)  # the stalled sweep's lock
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with caplog.at_level(logging.INFO, logger="fedml_storage"):
            got = store.client().download("blob.bin", tmp_path / "out")
    finally:
        os.close(holder)
    assert got.ok, got.message
    assert (tmp_path / "out" / "blob.bin").read_bytes() == data
    assert "not going on with what an earlier download kept" in caplog.text
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["blob.bin"]


def test_a_fallback_that_cannot_make_its_temp_file_says_why(store: Store, isolated_home: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """The fallback closed the adopted file, then failed to make a new one (a full disk) and closed the same fd
    again: "Bad file descriptor" hid the cause, and in a threaded program closed someone else's file (helper-100)."""
    import errno
    import tempfile

    from fedml_storage import dest_temps

    data, kept = _stored_and_partly_kept(store, isolated_home, tmp_path)
    made: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def full_after_one(*args, **kwargs):  # the part file's first temp file is made; the fallback's is not
        if kwargs.get("suffix") == ".new":
            if made:
                raise OSError(errno.ENOSPC, "No space left on device")
            made.append("new")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(dest_temps.tempfile, "mkstemp", full_after_one)
    real_close, closed_twice = os.close, []

    def close(fd: int) -> None:
        try:
            real_close(fd)
        except OSError as exc:
            closed_twice.append(exc.errno == errno.EBADF)
            raise

    monkeypatch.setattr(dest_temps.os, "close", close)
    holder = os.open(kept, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        got = store.client().download("blob.bin", tmp_path / "out")
    finally:
        os.close(holder)
    assert got.retryable and "no space left on the local disk" in got.message, got.message
    assert made == ["new"] and closed_twice == []  # (the fallback was reached)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_fifo_named_as_a_part_file_is_cleared_not_waited_on(store: Store, tmp_path: Path) -> None:
    """Another user's FIFO named like a killed download's part file: the sweep's open waited for a writer, and
    every download into that (shared) folder hung."""
    (tmp_path / "f.txt").write_text("x")
    assert store.client().upload(str(tmp_path / "f.txt")).ok
    out = tmp_path / "shared"
    out.mkdir()
    os.mkfifo(out / ".fedml-download-planted.part")
    done: list = []
    runner = threading.Thread(target=lambda: done.append(store.client().download("f.txt", out)), daemon=True)
    runner.start()
    runner.join(120)  # a hang, not a speed: it never came back
    assert done and done[0].ok, done
    assert [p.name for p in out.iterdir()] == ["f.txt"]
