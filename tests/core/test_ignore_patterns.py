"""Folder uploads with ignore_patterns (.gitignore syntax), on LOCAL and on moto's S3."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedml_storage import api

from .conftest import Store, tree_bytes

PATTERNS = ["*.pyc", "!keep.pyc", "__pycache__/", ".git", "/logs/", "scratch-*"]


def _project(root: Path) -> Path:
    src = root / "proj"
    for folder in ("src/__pycache__", ".git/objects", "logs", "sub/logs"):
        (src / folder).mkdir(parents=True)
    (src / "src" / "model.py").write_text("model")
    (src / "src" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00pyc")
    (src / ".git" / "HEAD").write_text("ref: main")
    (src / ".git" / "objects" / "ab").write_bytes(b"obj")
    (src / "logs" / "run.log").write_text("top-level logs: left out")
    (src / "sub" / "logs" / "kept.log").write_text("'/logs/' is anchored: kept")
    (src / "top.pyc").write_bytes(b"\x00top")
    (src / "keep.pyc").write_bytes(b"\x00keep")
    os.symlink(root / "gone", src / "scratch-link")  # broken: the upload would refuse it, were it not ignored
    return src


KEPT = {"keep.pyc": b"\x00keep", "src": None, "src/model.py": b"model", "sub": None, "sub/logs": None,
        "sub/logs/kept.log": b"'/logs/' is anchored: kept"}


def test_matching_items_are_left_out_and_the_rest_round_trips(store: Store, tmp_path: Path) -> None:
    src = _project(tmp_path)
    up = store.client().upload(src, ignore_patterns=PATTERNS)
    assert up.ok, up.message
    # a folder that matches counts once: .git, logs, src/__pycache__; then top.pyc and scratch-link
    assert up.data.ignored == 5 and up.data.file_count == 3
    assert "left out 5 item(s) matching ignore_patterns" in up.message
    down = Path(store.client().download("proj", tmp_path / "out").data)
    assert tree_bytes(down) == KEPT


def test_ignored_files_changing_make_no_new_version_and_new_patterns_do(store: Store, tmp_path: Path) -> None:
    src = _project(tmp_path)
    client = store.client()
    first = client.upload(src, ignore_patterns=PATTERNS).data
    stored = store.keys()
    (src / "top.pyc").write_bytes(b"\x00recompiled")
    (src / ".git" / "new-object").write_bytes(b"more")
    again = client.upload(src, ignore_patterns=PATTERNS)
    assert again.ok and again.data.skipped and again.data.version == first.version, again.message
    assert store.keys() == stored  # nothing sent

    narrower = client.upload(src, ignore_patterns=[*PATTERNS, "sub/"])
    assert narrower.ok and not narrower.data.skipped and narrower.data.version != first.version
    down = Path(client.download("proj", tmp_path / "out").data)
    assert tree_bytes(down) == {k: v for k, v in KEPT.items() if not k.startswith("sub")}


def test_patterns_as_gitignore_text_with_comments(store: Store, tmp_path: Path) -> None:
    src = _project(tmp_path)
    text = "# build output\n" + "\n".join(PATTERNS) + "\n\n"
    up = store.client().upload(src, ignore_patterns=text)
    assert up.ok and up.data.ignored == 5, up.message
    only_comments = store.client().upload(src, name="everything", ignore_patterns="# nothing to leave out\n",
                                          show_progress=False)
    assert not only_comments.ok and "broken link" in only_comments.message  # nothing ignored: the link counts


@pytest.mark.parametrize("patterns, said", [
    (3, "must be a list of strings, not int"),
    (["*.pyc", None], "holds None, which is not a string"),
    (["!"], "Invalid git pattern"),
    (["*"], "leave out every file of"),
    (["*.txt", "sub/"], "leave out every file of"),
])
def test_bad_patterns_are_refused_and_the_stored_dataset_stays(store: Store, tmp_path: Path, patterns: object,
                                                               said: str) -> None:
    src = tmp_path / "data"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("v1")
    (src / "sub" / "b.txt").write_text("v1")
    client = store.client()
    assert client.upload(src).ok
    stored = store.keys()
    (src / "a.txt").write_text("v2")
    bad = api.upload(str(src), service=store.service, api_key=store.api_key, ignore_patterns=patterns)
    assert bad.code == api.ResponseCode.FAILURE and said in bad.message, bad.message
    assert "ignore_patterns" in bad.message and bad.data is None
    assert store.keys() == stored
    down = Path(client.download("data", tmp_path / "out").data)
    assert tree_bytes(down) == {"a.txt": b"v1", "sub": None, "sub/b.txt": b"v1"}


def test_a_file_is_uploaded_as_given(store: Store, tmp_path: Path) -> None:
    (tmp_path / "weights.pyc").write_bytes(b"w")
    up = store.client().upload(tmp_path / "weights.pyc", ignore_patterns=["*.pyc"])
    assert up.ok and up.data.ignored == 0 and up.data.name == "weights.pyc", up.message
