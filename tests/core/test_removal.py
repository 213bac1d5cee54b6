"""Removing trees too deep for shutil.rmtree: its stack, the open-file limit, links out of the tree."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest

from fedml_storage.removal import remove_tree


def _deep_tree(root: Path, levels: int, outside: Path) -> None:
    """`levels` nested folders under root (made through folder handles: the path outgrows PATH_MAX), each with a
    file, and at the bottom a link to `outside`."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
                fh.write("x")
            os.mkdir("level-00", dir_fd=fd)
            child = os.open("level-00", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.symlink(outside, "out", dir_fd=fd)
    finally:
        os.close(fd)


@pytest.fixture
def few_open_files():
    """An open-file limit a few dozen above what is open now (a worker with many sockets open, say)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 40, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_a_tree_deeper_than_the_open_file_limit_is_removed(tmp_path: Path, few_open_files) -> None:
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "precious.txt").write_text("not part of the tree")
    _deep_tree(tmp_path / "deep", 300, outside)  # shutil.rmtree holds a handle per level: 300 > the limit
    remove_tree(tmp_path / "deep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert (outside / "precious.txt").read_text() == "not part of the tree"  # the link went, not its target


def test_a_tree_deeper_than_pythons_stack_and_longest_path_is_removed(tmp_path: Path) -> None:
    outside = tmp_path / "keep"
    outside.mkdir()
    (outside / "precious.txt").write_text("not part of the tree")
    _deep_tree(tmp_path / "deep", 1200, outside)  # 10,800 characters of path; rmtree would recurse 1,200 times
    remove_tree(tmp_path / "deep")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert (outside / "precious.txt").read_text() == "not part of the tree"
