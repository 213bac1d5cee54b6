"""Compare two folders byte for byte: how an example or a pipeline verifies a round trip."""

from __future__ import annotations

import filecmp
from pathlib import Path


def tree_differences(a: str | Path, b: str | Path) -> list[str]:
    """Relative paths that differ between two folders (missing on a side, or different bytes); [] if equal."""
    a, b = Path(a), Path(b)
    names_a = {p.relative_to(a).as_posix(): p for p in a.rglob("*")}
    names_b = {p.relative_to(b).as_posix(): p for p in b.rglob("*")}
    diffs = sorted(set(names_a) ^ set(names_b))
    for rel in sorted(set(names_a) & set(names_b)):
        pa, pb = names_a[rel], names_b[rel]
        if pa.is_dir() != pb.is_dir() or (pa.is_file() and not filecmp.cmp(pa, pb, shallow=False)):
            diffs.append(rel)
    return diffs
