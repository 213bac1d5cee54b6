"""Folder uploads with ignore_patterns (.gitignore syntax), on LOCAL and on moto's S3."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fedml_storage import api
from fedml_storage.ignores import check_ignore_patterns
from fedml_storage.trees import scan_tree

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
    assert "left out 5 item(s) by ignore_patterns" in up.message
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
    (["*"], "and no file remains: nothing was uploaded"),
    (["*.txt", "sub/"], "and no file remains: nothing was uploaded"),
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


def test_a_single_file_is_judged_by_its_name(store: Store, tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"w")
    (tmp_path / "secret.key").write_bytes(b"k")
    up = store.client().upload(tmp_path / "weights.pt", ignore_patterns=["*.key"])
    assert up.ok and up.data.ignored == 0 and up.data.name == "weights.pt", up.message
    refused = store.client().upload(tmp_path / "secret.key", ignore_patterns=["*.key"])
    assert not refused.ok and refused.reason == "invalid_input"
    assert "ignore_patterns leave out 'secret.key', the file given as data_path: nothing was uploaded" \
        in refused.message
    assert [m.dataName for m in store.client().list().data] == ["weights.pt"]


# Cases where a library's reading of .gitignore (pathspec's) and git's differ, checked against git itself.
GIT_CASES = [
    (["src/.git/config", "src/a.py"], [".git", "/*", "!/src/"]),  # re-including a folder keeps what it left out
    (["keep.tmp/foo.log/data", "x"], ["*.log", "!keep.tmp"]),
    (["foo/keep", "foo/x"], ["foo/**", "!foo/keep"]),  # 'foo/**' is what is inside foo, not foo
    (["src/a.py", "src/a.txt", "c.py", "c.txt"], ["*", "!*/", "!*.py"]),  # keep only .py files
    (["src/b", "c"], ["**/", "!src/**/"]),
    (["a", "b", "c.txt"], ["[[:alpha:]]"]),
    (["we\nird/secret.key", "x.tmp\n", "ok"], ["*.key", "*.tmp"]),  # newlines in names
    (["a.tmp", "a.tmp\t", "b.txt\u2028"], ["*.tmp\t", "b.txt\u2028"]),  # a trailing tab is kept; only \n splits
    (["logs/a.log", "sub/logs/b.log", "x/build/y", "build"], ["/logs/", "build/"]),
    (["#hash", "!bang", "trail ", "trail", "a b"], ["\\#hash", "\\!bang", "trail\\ ", "#comment", "!"]),
    (["a", "z", "-", "]", "0x", "9", "[ab]"], ["[z-a]", "[]-]", "[[:digit:]]*", "[[:bogus:]]", "\\[ab\\]"]),
    (["a/b/c/d.tmp", "a/d.tmp", "d.tmp", "b/a/x.tmp"], ["a/**/*.tmp"]),
    (["x", "y\\", "q"], ["\\", "*\\/", "y\\\\", "[[:"]),  # unmatchable lines match nothing, as in git
    # git compares a pattern's literal start first: a '**' right after it spans folders
    (["foo/bar", "foox/bar", "foox/y/bar", "foo/y/bar", "other"], ["foo**/bar"]),
    (["a/bc/d", "a/bc/e", "a/b", "z"], ["a/b**", "!a/bc/"]),
    (["a/b", "a/x/b", "b", "x/b", "z"], ["a/**\\/b", "/**\\/b"]),  # '**\/' is one folder or more
    (["a/b", "a/x/y/b", "z"], ["a/**/**/b"]),
    (["é.txt", "ab.txt", "x/日", "x/a"], ["?.txt", "x/???"]),  # git matches bytes: '?' is one byte
    (["é.txt", "b.txt", "c.txt"], ["[é].txt", "[!a].txt"]),
]


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git as the reference")


def _kept_by_git_and_by_us(src: Path, files: list[str], patterns: list[str]) -> tuple[set[str], set[str]]:
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / ".gitignore").write_text("".join(f"{p}\n" for p in patterns))
    listed = subprocess.run(["git", "-C", str(src), "ls-files", "--others", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode()
    tree = scan_tree(src, check_ignore_patterns([*patterns, ".git", ".gitignore"]))
    try:
        return set(listed.split("\0")) - {"", ".gitignore"}, {e.rel for e in tree.entries if not e.is_dir}
    finally:
        tree.entries.close()


@needs_git
@pytest.mark.parametrize("files, patterns", GIT_CASES)
def test_what_is_kept_is_what_git_keeps(tmp_path: Path, files: list[str], patterns: list[str]) -> None:
    git_keeps, kept = _kept_by_git_and_by_us(tmp_path / "tree", files, patterns)
    assert kept == git_keeps


RANDOM_NAMES = ["a.pyc", "b.py", "build", "logs", ".hidden", "my file.txt", "ünï.txt", "#hash", "!bang", "trail ",
                "x.tmp", "keep.tmp", "data", "src", "foo", "foo.log", "Foo", "[ab]", "a", "b", "__pycache__", "*star",
                "we\nird", "]", "a-b", "9", "Z.key"]
RANDOM_PATTERNS = ["*", "!*/", "/*", "!/src/", "src/**", "!src/**/", "**/*.pyc", "!**/*.py", "src/*/", "a/**/b/", "*//",
            "\\", "[a-c]", "[[:alpha:]]", "[]]", "*\\/", "!\\!bang", "*.log", "build/", "/build", "logs/**",
            "data/**/*.tmp", "!keep.tmp", "*.tmp", "\\#hash", "!*.py", "[!a].pyc", "foo", "!foo/", ".*", "trail\\ ",
            "**", "a/**/b", "/a/b", "**/foo/**", "*/", "!data/", "data/*", "*.[pP][yY]?", "#comment", "?", "!/foo",
            "**/", "*/*", "[z-a]", "[]-]", "[[:digit:]]*", "[[:bogus:]]", "[[]", "*.key", "*\n", "[^a]", "[-a]"]


@needs_git
def test_random_trees_and_patterns_keep_what_git_keeps(tmp_path: Path) -> None:
    rand = random.Random(20261126)
    for case in range(300):
        files: list[str] = []
        for _ in range(rand.randint(3, 10)):
            path = "/".join(rand.choice(RANDOM_NAMES) for _ in range(rand.randint(1, 4)))
            if not any(path.startswith(f + "/") or f.startswith(path + "/") or f == path for f in files):
                files.append(path)  # no name both a file and a folder
        patterns = [rand.choice(RANDOM_PATTERNS) for _ in range(rand.randint(1, 5))]
        git_keeps, kept = _kept_by_git_and_by_us(tmp_path / str(case), files, patterns)
        assert kept == git_keeps, (files, patterns)


def test_a_link_to_something_left_out_is_left_out(tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "real").mkdir(parents=True)
    (src / "real" / "blob").write_text("cached")
    (src / "secret.key").write_text("KEY")
    (src / "notes.txt").write_text("notes")
    os.symlink("real", src / "cache")
    os.symlink("secret.key", src / "innocent.txt")
    os.symlink("notes.txt", src / "readme.txt")
    tree = scan_tree(src, check_ignore_patterns(["real/", "*.key"]))
    try:
        assert {e.rel for e in tree.entries} == {"notes.txt", "readme.txt"} and tree.ignored == 4
    finally:
        tree.entries.close()


def test_among_many_patterns_the_last_that_matches_decides() -> None:
    rules = check_ignore_patterns([f"dir{i}/" for i in range(2000)] + ["*.tmp", "!keep.tmp"])
    assert rules is not None and rules.count == 2002
    assert rules.ignores("a/b.tmp", False) and not rules.ignores("a/keep.tmp", False)
    assert rules.ignores("x/dir1999", True) and not rules.ignores("x/dir1999", False)


def test_a_pattern_of_many_stars_cannot_stall_an_upload(store: Store, tmp_path: Path) -> None:
    # Plain regex backtracking takes ~20 s per name for 6 stars here, and ever longer past that.
    src = tmp_path / "logs"
    src.mkdir()
    (src / ("a" * 200)).write_text("long name, no match")
    (src / "aXaXaXaXaXaXaXaXaXaXb").write_text("a match")
    up = store.client().upload(src, ignore_patterns=["*a" * 10 + "*b"])
    assert up.ok and up.data.ignored == 1 and up.data.file_count == 1, up.message


def test_a_link_leading_through_other_links_to_something_left_out_is_left_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "conf").mkdir(parents=True)
    (outside / "secret.key").write_text("KEY")
    (outside / "data.bin").write_text("data")
    (outside / "conf" / "creds.json").write_text("{}")
    src = tmp_path / "proj"
    src.mkdir()
    os.symlink(outside, src / "ext")  # walked: ext/secret.key is left out by '*.key', ext/data.bin is kept
    os.symlink(src / "ext" / "secret.key", src / "alias")  # its real path lies outside, its way in through ext
    os.symlink(outside / "conf", src / "conf")
    os.symlink("conf", src / "aconf")  # a link to a link left out
    tree = scan_tree(src, check_ignore_patterns(["*.key", "conf/"]))
    try:
        kept = {e.rel for e in tree.entries}
    finally:
        tree.entries.close()
    assert kept == {"ext", "ext/data.bin"} and tree.ignored == 5  # and ext/secret.key, ext/conf


def test_patterns_that_can_never_match_are_said_and_a_byte_order_mark_is_skipped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = check_ignore_patterns("\ufeff*.tmp\nlogs\\\n*.[ch\n[[:word:]]\n")
    assert rules is not None and rules.count == 1 and rules.ignores("a.tmp", False)
    said = caplog.text
    assert "'logs\\\\' can never match (it ends in a lone backslash)" in said, said
    assert "'*.[ch' can never match (an unclosed '[')" in said and "no character class [:word:]" in said
