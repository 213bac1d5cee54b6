"""Sample data for the examples, and the byte-for-byte check of a round trip (shared by every example)."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path


def make_dataset(root: Path, note: str) -> Path:
    """A small dataset directory: nested shards, a CSV, an empty file and a unicode name (11 files)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "shards").mkdir(parents=True)
    for i in range(8):
        (root / "shards" / f"shard-{i:02d}.bin").write_bytes(os.urandom(4096 + i))
    (root / "labels.csv").write_text("id,label\n" + "".join(f"{i},{i % 2}\n" for i in range(8)))
    (root / "empty.txt").touch()
    (root / "résumé.txt").write_text(f"{note}\n", encoding="utf-8")
    return root


def verify_copy(produced: str | Path, downloaded: str | Path) -> int:
    """The number of files, or ValueError naming what differs between the two folders."""
    diffs = tree_differences(produced, downloaded)
    if diffs:
        raise ValueError(f"downloaded data differs from what was produced: {diffs[:10]}")
    return sum(1 for p in Path(downloaded).rglob("*") if p.is_file())


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
