"""Sample data for the examples, and the byte-for-byte check of a round trip (shared by every example)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fedml_storage.compare import tree_differences


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
