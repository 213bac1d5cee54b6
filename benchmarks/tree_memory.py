"""Peak memory of a folder upload as the number of files grows, on the embedded LOCAL store.

    .venv/bin/python benchmarks/tree_memory.py                 # 10,000 / 50,000 / 200,000 one-byte files
    .venv/bin/python benchmarks/tree_memory.py --files 20000

Each upload runs in a fresh process; its peak RSS is printed next to the baseline of a process that only imported
fedml_storage, with the cost per file and the largest folder that stays under the 300 MiB goal at that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_MIB = 300

CHILD = """
import json, resource, sys
from fedml_storage import StorageClient
if sys.argv[1] != "-":
    with StorageClient(service="LOCAL", local_root=sys.argv[2]) as client:
        response = client.upload(sys.argv[1], name="tree")
        assert response.ok, response.message
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def peak_mib(tree: str, store: Path, home: Path) -> float:
    env = {**os.environ, "FEDML_STORAGE_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", CHILD, tree, str(store)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"file-{i:07d}.txt").write_bytes(b"x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedml-tree-memory-") as tmp:
        base = peak_mib("-", Path(tmp) / "store", Path(tmp) / "home")
        print(f"baseline (import only): {base:.0f} MiB")
        print(f"{'files':>9} {'peak RSS MiB':>13} {'x baseline':>11} {'bytes/file':>11} {'files within goal':>18}")
        for n in args.files:
            run = Path(tmp) / f"run-{n}"
            make_tree(run / "tree", n)
            peak = peak_mib(str(run / "tree"), run / "store", run / "home")
            per_file = (peak - base) * 1024 * 1024 / n
            within = int((GOAL_MIB - base) * 1024 * 1024 / per_file) if per_file > 0 else 0
            print(f"{n:>9,} {peak:>13.0f} {peak / base:>11.2f} {per_file:>11.0f} {within:>18,}")
            subprocess.run(["rm", "-rf", str(run)], check=True)


if __name__ == "__main__":
    main()
