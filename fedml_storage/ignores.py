"""Ignore patterns for folder uploads: the syntax of a .gitignore file, matched against paths relative to the
uploaded folder (`*.pyc`, `__pycache__/`, `.git`, `/checkpoints`, `logs/**/*.tmp`, `!keep.log`)."""

from __future__ import annotations

import os

from .errors import InvalidInput

HINT = "write them as lines of a .gitignore file, e.g. ['*.pyc', '__pycache__/', '.git']"


class IgnoreRules:
    """Which of a folder's items an upload leaves out. A folder that matches is left out whole: as in git, a
    later `!pattern` cannot bring back a file inside it."""

    def __init__(self, lines: list[str]) -> None:
        import pathspec  # only an upload given patterns pays for the import

        self.patterns = lines
        try:
            self._spec = pathspec.GitIgnoreSpec.from_lines(lines)
        except ValueError as exc:  # pathspec's pattern error
            raise InvalidInput(f"ignore_patterns: {exc}; {HINT}") from None

    def leaves_out(self, rel: str, path: str) -> bool:
        """Whether the item at `path` (`rel` to the folder, with '/' between names) is left out. Decided before
        it is read, so an ignored broken link or unreadable folder does not stop the upload."""
        as_file, as_folder = self._spec.match_file(rel), self._spec.match_file(rel + "/")
        if as_file == as_folder:
            return as_file
        return as_folder if os.path.isdir(path) else as_file  # only 'name/' patterns (or '!' ones) tell them apart


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
    lines: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInput(f"ignore_patterns holds {item!r}, which is not a string; {HINT}")
        lines += item.splitlines()
    if all(not line.strip() or line.startswith("#") for line in lines):
        return None
    return IgnoreRules(lines)
