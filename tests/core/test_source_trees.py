"""Folders as users have them: links, pipes, sockets, odd but valid names, far-future times."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .conftest import Store, tree_bytes


def test_links_are_followed_and_what_is_no_data_is_left_out_and_said(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "mnt"
    (outside / "shards").mkdir(parents=True)
    (outside / "shards" / "s0.bin").write_bytes(b"\x00shard")
    (outside / "labels.csv").write_text("a,1\n")
    src = tmp_path / "proj"
    src.mkdir()
    (src / "README").write_text("read me")
    os.symlink(outside / "shards", src / "data")  # the usual layout: data lives elsewhere, linked in
    os.symlink(outside / "labels.csv", src / "labels.csv")
    os.mkfifo(src / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(src / "sock"))
    try:
        up = store.client().upload(src)
    finally:
        server.close()
    assert up.ok, up.message
    assert up.data.left_out == ["pipe", "sock"] and up.data.file_count == 3
    assert "left out 2 that are neither files nor folders: pipe, sock" in up.message
    down = Path(store.client().download("proj", tmp_path / "out").data)
    assert tree_bytes(down) == {"README": b"read me", "data": None, "data/s0.bin": b"\x00shard",
                                "labels.csv": b"a,1\n"}
    assert not (down / "data").is_symlink()


def test_a_link_loop_is_refused_before_anything_is_stored(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "looped"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("x")
    os.symlink(src, src / "sub" / "back")  # back to the folder being uploaded
    response = store.client().upload(src)
    assert response.reason == "invalid_input" and "loop" in response.message and "sub/back" in response.message
    os.unlink(src / "sub" / "back")
    os.symlink("self", src / "self")  # a link to itself
    response = store.client().upload(src)
    assert response.reason == "invalid_input" and "leads back to itself" in response.message
    assert [k for k in store.keys() if "/data/" in k] == []


def test_names_valid_here_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "runs"
    (src / "12:30").mkdir(parents=True)  # a run folder named by its time
    (src / "12:30" / "metrics.json").write_text("{}")
    (src / "a\\b.txt").write_text("backslash")
    (src / "..\\up.txt").write_text("not a way out here")
    future = src / "future.txt"
    future.write_text("2200")
    os.utime(future, (7258118400, 7258118400))  # after 2107, past what zip can record
    assert store.client().upload(src).ok
    down = Path(store.client().download("runs", tmp_path / "out").data)
    assert tree_bytes(down) == tree_bytes(src)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs"]
