"""Hostile and malformed archives planted in the store (with a manifest vouching for them): refused as such,
nothing written outside the destination, nothing left behind."""

from __future__ import annotations

import copy
import errno
import io
import os
import struct
import zipfile
from pathlib import Path

import pytest

from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.archive import safe_extract
from fedml_storage.removal import remove_tree
from fedml_storage.errors import IntegrityError

from .conftest import Store, plant_archive, zip_of


@pytest.mark.parametrize("member", ["../escaped.txt", "/abs/escaped.txt", "sub/../../escaped.txt"])
def test_zip_slip_archive_is_refused(store: Store, tmp_path: Path, member: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(member, "pwned")
    plant_archive(store, "evil", buf.getvalue(), 9)
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    response = store.client().download("evil", dest)
    assert not response.ok and "outside" in response.message
    assert list(dest.iterdir()) == []
    assert not list(tmp_path.rglob("escaped.txt"))


def _link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777) << 16
    zf.writestr(info, target)


@pytest.mark.parametrize("links", [[("link", "../../etc/passwd")],
                                   [("y", "."), ("x", "y/.."), ("x/escaped.txt", None)]])  # a chain that looks inside
def test_links_in_an_archive_are_refused(store: Store, tmp_path: Path, links: list) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, target in links:
            if target is None:
                zf.writestr(name, "pwned")
            else:
                _link(zf, name, target)
    plant_archive(store, "linky", buf.getvalue(), 100)
    dest = tmp_path / "a" / "dest"
    response = store.client().download("linky", dest)
    assert not response.ok and "symbolic link" in response.message
    assert not (tmp_path / "a").exists()  # the folders this download made are gone with it
    assert not list(tmp_path.rglob("escaped.txt"))


def test_archive_expanding_past_recorded_size_is_refused(store: Store, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.bin", b"\0" * 5_000_000)
    plant_archive(store, "bomb", buf.getvalue(), 1000)
    dest = tmp_path / "dest"
    response = store.client().download("bomb", dest)
    assert not response.ok and "recorded at upload" in response.message
    assert not dest.exists()  # made for this download, removed with it


def test_foreign_deflated_archive_extracts_with_its_modes(store: Store, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        script = zipfile.ZipInfo("bin/run.sh")
        script.external_attr = 0o100755 << 16
        zf.writestr(script, "#!/bin/sh\necho hi\n")
        zf.writestr("data/rows.csv", "a,b\n" * 1000)
        zf.writestr(zipfile.ZipInfo("plain.txt"), b"stored", compress_type=zipfile.ZIP_STORED)
    plant_archive(store, "foreign", buf.getvalue(), 10_000)
    down = store.client().download("foreign", tmp_path / "out")
    assert down.ok, down.message
    root = Path(down.data)
    assert (root / "data" / "rows.csv").read_text() == "a,b\n" * 1000
    assert (root / "plain.txt").read_bytes() == b"stored"
    assert (root / "bin" / "run.sh").stat().st_mode & 0o777 == 0o755


def test_stored_member_running_past_its_data_is_refused(store: Store, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "first")
        zf.writestr("b.txt", "second")
    archive = bytearray(buf.getvalue())
    central = archive.rindex(b"PK\x01\x02")  # b.txt's central entry: claim 26 bytes where there are 6
    archive[central + 20:central + 28] = (26).to_bytes(4, "little") * 2
    plant_archive(store, "overrun", bytes(archive), 1000)
    dest = tmp_path / "dest"
    response = store.client().download("overrun", dest)
    assert not response.ok and "runs past" in response.message
    assert not dest.exists()  # made for this download, removed with it


def _negative_offset() -> bytes:
    archive = bytearray(zip_of([("a.txt", b"first")]))
    end = archive.rindex(b"PK\x05\x06")  # claim the central directory starts far later than it does
    archive[end + 16:end + 20] = (len(archive) + 4096).to_bytes(4, "little")
    return bytes(archive)


def _central_patched(archive: bytes, at: int, value: bytes) -> bytes:
    """The archive with bytes `at` its last central directory record replaced."""
    data = bytearray(archive)
    central = data.rindex(b"PK\x01\x02")
    data[central + at:central + at + len(value)] = value
    return bytes(data)


def _deflated(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rows.bin", data)
    return buf.getvalue()


def _shared_data() -> bytes:
    """Ten central directory records pointing at one member's stored data: 100 KB written out ten times."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x0", b"y" * 100_000)
        for i in range(1, 10):
            twin = copy.copy(zf.infolist()[0])
            twin.filename = twin.orig_filename = f"x{i}"
            zf.filelist.append(twin)
    return buf.getvalue()


def _far_zip64_end() -> bytes:
    archive = zip_of([("a.txt", b"1")])
    end = archive.rindex(b"PK\x05\x06")  # a zip64 locator pointing far past the end of the archive
    return archive[:end] + b"PK\x06\x07" + (0).to_bytes(4, "little") + (2**63).to_bytes(8, "little") + \
        (1).to_bytes(4, "little") + archive[end:]


def _folders_only(names: list[str]) -> bytes:
    """An archive of folder entries alone, each name under folders it does not hold (20 names of 200 levels make
    4,000 folders from 40 KB; at 1,000 levels a 10 MB archive would make 5 million)."""
    central = b"".join(
        struct.pack("<4s4B4HL2L5H2L", b"PK\1\2", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(n), 0, 0, 0, 0,
                    0o40755 << 16, 0) + n
        for n in (name.encode() for name in names))
    return b"\0" + central + struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, len(names), len(names), len(central), 1, 0)


@pytest.mark.parametrize(("archive", "words"), [
    (zip_of([("a.txt", b"1"), ("a.txt", b"2")]), "twice"),
    (zip_of([("a/" * 1100 + "f", b"deep")]), "folders deep"),
    (zip_of([("a" * 300, b"long")]), "longer than file systems hold"),
    (_far_zip64_end(), "zip64 end record lies outside the archive"),
    (zip_of([("a", b"file"), ("a/b.txt", b"under a file")]), "as a file and a folder"),
    (zip_of([("a", b"file"), ("a/", b"")]), "as a file and a folder"),
    (zip_of([("a", b"file"), ("a/b/c.txt", b"two levels under a file")]), "as a file and a folder"),
    (zip_of([("a/", b""), ("a", b"file")]), "as a file and a folder"),
    (_central_patched(_deflated(b"x" * 5000), 16, b"\0\0\0\0"), "does not match its recorded size and CRC"),
    (_central_patched(_deflated(b"\0" * 5_000_000), 24, (10).to_bytes(4, "little")), "inflates past"),  # a bomb
    (_folders_only([f"{i}/" + "a/" * 200 for i in range(20)]), "far more folders than it has folder entries"),
    (_central_patched(zip_of([("a.txt", b"1")]), 8, b"\1\0"), "encrypted"),
    (_central_patched(zip_of([("a.txt", b"1")]), 10, b"\x0c\0"), "packed in a way fedml-storage does not write"),
    (zip_of([("./a.txt", b"dot")]), "'.' path part"),
    (b"PK\x03\x04 not really a zip" * 4, "not a readable zip"),
    (_negative_offset(), "lies outside the archive"),
])
def test_malformed_archives_are_refused_as_such(store: Store, tmp_path: Path, archive: bytes, words: str) -> None:
    plant_archive(store, "odd", archive, 10_000)
    dest = tmp_path / "dest"
    dest.mkdir()
    response = store.client().download("odd", dest)
    assert response.code == ResponseCode.FAILURE and words in response.message, response.message
    assert "check who can write to the store, then delete('odd') and upload it again" in response.message
    assert list(dest.iterdir()) == []


def test_folders_deeper_than_uploads_go_still_download(store: Store, tmp_path: Path) -> None:
    plant_archive(store, "deep", zip_of([("d/" * 600 + "f.txt", b"stored by an earlier release")]), 100)
    down = store.client().download("deep", tmp_path / "out")
    assert down.ok, down.message
    assert (Path(down.data) / Path(*["d"] * 600) / "f.txt").read_bytes() == b"stored by an earlier release"


def test_members_sharing_their_data_are_refused(store: Store, tmp_path: Path) -> None:
    plant_archive(store, "twins", _shared_data(), 10_000_000)  # a manifest vouching for all ten copies
    response = store.client().download("twins", tmp_path / "dest")
    assert response.code == ResponseCode.FAILURE and "overlap each other's data" in response.message
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("names", [("A.txt", "a.txt"), ("Runs/", "runs")])
def test_names_one_to_a_case_blind_file_system_are_not_taken_for_tampering(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: tuple[str, str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in names:  # two names on Linux, one on macOS or Windows
        if name.endswith("/"):
            (src / name).mkdir()
            (src / name / "log.txt").write_text("in a folder")
        else:
            (src / name).write_text(name)
    client = store.client()
    assert client.upload(src).ok
    real_open, real_mkdir = os.open, os.mkdir

    def case_blind(path) -> None:  # what creating a name is like where case is ignored
        if isinstance(path, str):
            parent, _, name = path.rpartition("/")
            if os.path.isdir(parent) and any(n.lower() == name.lower() != n for n in os.listdir(parent)):
                raise FileExistsError(errno.EEXIST, "File exists", path)

    def blind_open(path, flags, mode=0o777, **kw):
        case_blind(path)
        return real_open(path, flags, mode, **kw)

    def blind_mkdir(path, mode=0o777, **kw):
        case_blind(path)
        return real_mkdir(path, mode, **kw)

    monkeypatch.setattr(os, "open", blind_open)
    monkeypatch.setattr(os, "mkdir", blind_mkdir)
    response = client.download("src", tmp_path / "out")
    assert response.reason == "invalid_input" and "one name to this file system" in response.message, response.message
    assert "who can write to the store" not in response.message
    assert not (tmp_path / "out").exists()


def test_a_member_inflating_past_its_size_stops_there(tmp_path: Path) -> None:
    archive = _central_patched(_deflated(b"\0" * 50_000_000), 24, (1).to_bytes(4, "little"))  # says 1 byte
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(IntegrityError, match="inflates past its recorded size"):
        safe_extract(io.BytesIO(archive), dest, 1 << 30)  # far more allowed in all: the member's own size binds
    assert (dest / "rows.bin").stat().st_size <= 1  # not the 50 MB it inflates to


def test_a_tree_too_deep_for_rmtree_is_removed_when_refused(store: Store, tmp_path: Path) -> None:
    deep = "a/" * 1000  # deeper than uploads go (512) but readable (1,024): shutil.rmtree recurses once per level
    plant_archive(store, "deep", zip_of([(deep, b""), ("x", b"1"), ("x", b"2")]), 100)
    dest = tmp_path / "dest"
    dest.mkdir()
    response = store.client().download("deep", dest)
    assert response.code == ResponseCode.FAILURE and "twice" in response.message, response.message
    assert list(dest.iterdir()) == []  # the unpacked tree, the part file: all gone


def test_a_tree_too_deep_for_rmtree_is_replaced_by_the_next_download(store: Store, tmp_path: Path) -> None:
    plant_archive(store, "deep", zip_of([("a/" * 1000, b""), ("f.txt", b"top")]), 100)
    client = store.client()
    first = client.download("deep", tmp_path / "dest")
    assert first.ok, first.message
    again = client.download("deep", tmp_path / "dest")  # the copy it replaces is removed, level by level
    assert again.ok, again.message
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["deep"]
    assert (Path(again.data) / "f.txt").read_bytes() == b"top"
    remove_tree(tmp_path / "dest")  # pytest's own removal of old temp folders recurses per level too
