"""Ignore patterns for folder uploads, as git reads a .gitignore file at the uploaded folder's top.

Each item is judged by its own path relative to the folder: the last pattern matching it decides, and a folder
left out is not read, so nothing under it comes back (as in git). Patterns follow git's wildmatch: `*`, `?` and
`[...]` (ranges, `[!...]`, `[[:alpha:]]` and the other classes) stay within one name, `**` spans folders as a
whole name (`**/x`, `x/**`, `a/**/b`), a trailing `/` matches folders only, a `/` elsewhere anchors the pattern
at the top, `!` brings an item back, `\\` escapes; matched case-sensitively on the bytes of UTF-8, as git on
Linux. (pathspec, the usual library, also matches what is inside a matching folder, so `!src/` there brings back
`src/.git`: not what git does.)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator

from .errors import InvalidInput

log = logging.getLogger("fedml_storage")

HINT = "write them as lines of a .gitignore file, e.g. ['*.pyc', '__pycache__/', '.git']"
_CLASSES = {  # git's (ASCII) character classes
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9",
    "graph": "\\x21-\\x7e", "lower": "a-z", "print": "\\x20-\\x7e", "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}


class _Unmatchable(Exception):
    """A pattern git would never match (an unclosed `[`, an unknown class, a trailing `\\`)."""


class IgnoreRules:
    """Which of a folder's items an upload leaves out."""

    def __init__(self, patterns: list[tuple[str, bool, bool, bool]]) -> None:
        """`patterns`: (regex, anchored, negated, folders only) in the order given; an anchored regex is matched
        against the relative path, the others against the item's name."""
        self.count = len(patterns)
        # Whether any pattern matches, per kind of item (folder or not): one regex over paths and one over names,
        # without groups (with a group per pattern, Python's re slows down with their number squared).
        self._any = {folder: (_alternation([p[0] for p in patterns if p[1] and (folder or not p[3])]),
                              _alternation([p[0] for p in patterns if not p[1] and (folder or not p[3])]))
                     for folder in (False, True)}
        self._folders_only = any(p[3] for p in patterns)
        # With '!' among them, the last pattern that matches decides: each is tried, last first.
        self._each = [(re.compile(regex, re.DOTALL), anchored, negated, folders_only)
                      for regex, anchored, negated, folders_only in reversed(patterns)] \
            if any(p[2] for p in patterns) else None

    def ignores(self, rel: str, folder: bool) -> bool:
        """Whether the item at `rel` (names joined by '/') is left out."""
        rel = _bytewise(rel)
        return self._matches_any(rel, folder) and self._last_says_ignore(rel, folder)

    def _matches_any(self, rel: str, folder: bool) -> bool:
        by_path, by_name = self._any[folder]
        return bool((by_path and by_path.fullmatch(rel)) or (by_name and by_name.fullmatch(rel.rpartition("/")[2])))

    def _last_says_ignore(self, rel: str, folder: bool) -> bool:
        if self._each is None:
            return True
        name = rel.rpartition("/")[2]
        for regex, anchored, negated, folders_only in self._each:
            if (folder or not folders_only) and regex.fullmatch(rel if anchored else name):
                return not negated
        return False

    def in_folder(self, top: str) -> Callable[[str, str, bool], bool]:
        """`leaves_out(rel, path, is_link)` for the items of folder `top`: whether the item is left out, decided
        before it is read where the patterns allow (an ignored broken link or unreadable folder does not stop the
        upload). A link counts as what it points to (a folder or a file); one pointing to an item of `top` that is
        left out is left out too, so ignored data does not come in under another name."""
        tops = (top, os.path.realpath(top))

        def leaves_out(rel: str, path: str, is_link: bool) -> bool:
            if self._item(rel, path):
                return True
            # where a link leads, hop by hop as written (through other links of the folder, whose own targets
            # may lie outside it) and in the end for real: any of these that is an item left out counts
            return is_link and any(self._inside_and_left_out(step, base) for step in _link_steps(path) for base in tops)

        return leaves_out

    def _inside_and_left_out(self, path: str, top: str) -> bool:
        try:
            parts = os.path.relpath(path, top).split(os.sep)
        except ValueError:  # on another drive (Windows)
            return False
        if parts[0] in (".", ".."):
            return False
        return any(self.ignores("/".join(parts[:k]), True) for k in range(1, len(parts))) or \
            self._item("/".join(parts), path)

    def _item(self, rel: str, path: str) -> bool:
        rel = _bytewise(rel)
        if not self._matches_any(rel, True):
            return False  # most items: no pattern matches them, as a folder or (a subset of those) as a file
        as_folder = self._last_says_ignore(rel, True)
        if not self._folders_only:  # the same for a folder and a file
            return as_folder
        as_file = self._matches_any(rel, False) and self._last_says_ignore(rel, False)
        return as_file if as_file == as_folder else (as_folder if os.path.isdir(path) else as_file)


def _bytewise(rel: str) -> str:
    """A path from the walk as the patterns see it (see _as_bytes)."""
    return rel if rel.isascii() else _as_bytes(rel)


def _link_steps(path: str, hops: int = 40) -> Iterator[str]:
    """Each place link `path` leads to as written (joined to the link's folder), then its real path."""
    current = path
    for _ in range(hops):
        try:
            target = os.readlink(current)
        except OSError:  # not a link (any more)
            break
        current = os.path.normpath(os.path.join(os.path.dirname(current), target))
        yield current
    yield os.path.realpath(path)


def _alternation(regexes: list[str]) -> re.Pattern[str] | None:
    """One regex matching what any of `regexes` does."""
    return re.compile("|".join(f"(?:{r})" for r in regexes), re.DOTALL) if regexes else None


def check_ignore_patterns(value: object) -> IgnoreRules | None:
    """The rules of `ignore_patterns` (a list of patterns, or one string of lines); None when there are none."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[object] = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise InvalidInput(f"ignore_patterns must be a list of strings, not {type(value).__name__}; {HINT}")
    patterns = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"ignore_patterns holds {item!r}, which is not a string; {HINT}")
        for line in item.removeprefix("\ufeff").split("\n"):  # git skips a byte order mark, as a file may start
            line = line.removesuffix("\r")
            try:
                parsed = _parse(_as_bytes(line))
            except _Unmatchable as exc:
                log.warning("ignore_patterns: %r can never match (%s), as in git; it leaves nothing out", line, exc)
                continue
            if parsed is not None:
                patterns.append(parsed)
    return IgnoreRules(patterns) if patterns else None


def _as_bytes(text: str) -> str:
    """`text` with one character per byte of its UTF-8 (as git matches: `?` is one byte, so `?.txt` does not match
    `é.txt`); names that are not UTF-8 come back as the bytes they are."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("latin-1")
    except UnicodeEncodeError:
        raise InvalidInput(f"ignore_patterns holds {text!r}, which is not valid text; {HINT}") from None


def _parse(line: str) -> tuple[str, bool, bool, bool] | None:
    """A .gitignore line as (regex, anchored, negated, folders only); None for blanks and comments; _Unmatchable
    for a line git never matches."""
    line = _trim_trailing_spaces(line)  # (one character per byte: see _as_bytes)
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    folders_only = line.endswith("/")
    if folders_only:
        line = line[:-1]
    if not line:
        return None
    if line.startswith("**/") and "/" not in line[3:]:
        line = line[3:]  # '**/name' is 'name' at any depth: matched as a name, far faster
    anchored = "/" in line  # a slash at the start or in the middle: relative to the top, not any name
    glob = _translate(line.removeprefix("/")) if anchored else _wildmatch(line)
    return glob, anchored, negated, folders_only


def _trim_trailing_spaces(line: str) -> str:
    """Trailing spaces go unless escaped with a backslash (tabs stay), as git's trim_trailing_spaces."""
    last_space, i = None, 0
    while i < len(line):
        if line[i] == " ":
            last_space = i if last_space is None else last_space
        else:
            last_space = None
            if line[i] == "\\":
                i += 1
        i += 1
    return line if last_space is None else line[:last_space]


def _translate(glob: str) -> str:
    """A regex for git's wildmatch with WM_PATHNAME (wildcards do not cross '/', except `**` as a whole name), for
    a pattern with a slash as git's match_pathname runs it: the literal text up to the first wildcard is compared
    first and the rest matched on its own, so a `**` right after it counts as the start of a name (`foo**/bar`
    spans folders, as `foo` then `**/bar`)."""
    start = next((i for i, c in enumerate(glob) if c in "*?[\\"), len(glob))
    return re.escape(glob[:start]) + _wildmatch(glob[start:])


def _wildmatch(glob: str) -> str:
    # per name: (True, a run of '*') or (False, one character's regex); and whether each '/' was escaped
    segments: list[list[tuple[bool, str]]] = [[]]
    escaped_slash: list[bool] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            segments[-1].append((True, glob[i:j]))
            i = j
            continue
        if c == "/":
            segments.append([])
            escaped_slash.append(False)
        elif c == "?":
            segments[-1].append((False, "[^/]"))
        elif c == "[":
            part, i = _bracket(glob, i + 1)
            segments[-1].append((False, part))
            continue
        elif c == "\\":
            if i + 1 >= n:
                raise _Unmatchable("it ends in a lone backslash")
            i += 1
            if glob[i] == "/":
                segments.append([])
                escaped_slash.append(True)
            else:
                segments[-1].append((False, re.escape(glob[i])))
        else:
            segments[-1].append((False, re.escape(c)))
        i += 1
    out = []
    for k, segment in enumerate(segments):
        last = k == len(segments) - 1
        if len(segment) == 1 and segment[0][0] and len(segment[0][1]) > 1:  # '**' as a whole name
            if last:
                out.append(".*")  # everything below
            elif escaped_slash[k]:
                out.append(".*/")  # wildmatch spans folders here, but takes no '**\/' for zero of them
            elif not out or out[-1] != "(?:.*/)?":  # '**/**/' is '**/': one, or matching slows with each
                out.append("(?:.*/)?")  # any number of folders, none included
            continue
        out.append(_name(segment) + ("" if last else "/"))
    return "".join(out)


def _name(tokens: list[tuple[bool, str]]) -> str:
    """One name's glob. A '*' between fixed parts takes the shortest stretch and keeps it (an atomic group, as
    fnmatch does): the first place a fixed part fits is always right, and no pattern can backtrack for long."""
    fixed: list[list[str]] = [[]]
    for star, regex in tokens:
        if star:
            fixed.append([])
        else:
            fixed[-1].append(regex)
    parts = ["".join(f) for f in fixed]
    if len(parts) == 1:
        return parts[0]
    head, *middle, tail = parts
    return head + "".join(f"(?>[^/]*?{m})" for m in middle) + f"[^/]*{tail}"


def _bracket(glob: str, i: int) -> tuple[str, int]:
    """The class starting after '[' at `i`, as wildmatch reads it; the regex and where the pattern goes on."""
    n, negated = len(glob), False
    if i < n and glob[i] in "!^":
        negated, i = True, i + 1
    members: list[str] = []
    prev = ""  # the last single member: a "-" after it makes it a range's low end ("" after a range or class)
    first = True
    while True:
        if i >= n:
            raise _Unmatchable("an unclosed '['")
        c = glob[i]
        if c == "]" and not first:
            break
        first = False
        if c == "\\":
            if i + 1 >= n:
                raise _Unmatchable("it ends in a lone backslash")
            c = glob[i + 1]
            i += 1
            members.append(re.escape(c))
        elif c == "-" and prev and i + 1 < n and glob[i + 1] != "]":
            high = glob[i + 1]
            i += 1
            if high == "\\":
                if i + 1 >= n:
                    raise _Unmatchable("it ends in a lone backslash")
                high = glob[i + 1]
                i += 1
            if prev <= high:  # a reversed range adds nothing (its low end, read before, stays a member)
                members.append(f"{re.escape(prev)}-{re.escape(high)}")
            c = ""
        elif c == "[" and glob.startswith(":", i + 1):
            end = glob.find("]", i + 2)
            if end < 0:
                raise _Unmatchable("an unclosed '['")
            if glob[end - 1] != ":" or end - 1 < i + 2:  # no ':]': a plain '['
                members.append(re.escape("["))
            else:
                name = glob[i + 2:end - 1]
                if name not in _CLASSES:
                    raise _Unmatchable(f"no character class [:{name}:]")
                members.append(_CLASSES[name])
                i = end
                c = ""
        else:
            members.append(re.escape(c))
        prev = c
        i += 1
    body = "".join(members)
    if negated:
        return f"[^/{body}]", i + 1
    return (f"(?!/)[{body}]" if body else "(?!)"), i + 1
