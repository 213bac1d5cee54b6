"""Peak memory of a folder upload and download as the number of files grows, on the embedded LOCAL store.

    .venv/bin/python benchmarks/tree_memory.py                 # 10,000 / 50,000 / 200,000 one-byte files
    .venv/bin/python benchmarks/tree_memory.py --files 20000

Each upload and each download runs in a fresh process; its peak RSS is printed next to the baseline of a process
that only imported fedml_storage, with what each file past the previous size measured added (past the import for
the first): the first row holds the fixed costs (buffers, the upload pipe), later rows show whether memory grows
with the number of files. The goal is a peak under 300 MiB at any size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


CHILD = """
import json, resource, sys
from fedml_storage import StorageClient
mode, path, store = sys.argv[1:]
if mode != "-":
    with StorageClient(service="LOCAL", local_root=store) as client:
        response = client.upload(path, name="tree") if mode == "up" else client.download("tree", dest_path=path)
        assert response.ok, response.message
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def peak_mib(mode: str, path: str, store: Path, home: Path) -> float:
    env = {**os.environ, "FEDML_STORAGE_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, path, str(store)], env=env, capture_output=True,
                         text=True, check=True)
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
        base = peak_mib("-", "-", Path(tmp) / "store", Path(tmp) / "home")
        print(f"baseline (import only): {base:.0f} MiB")
        print(f"{'step':>8} {'files':>9} {'peak RSS MiB':>13} {'x baseline':>11} {'bytes/extra file':>17}")
        last: dict[str, tuple[int, float]] = {}
        for n in sorted(args.files):
            run = Path(tmp) / f"run-{n}"
            make_tree(run / "tree", n)
            for step, mode, path in (("upload", "up", run / "tree"), ("download", "down", run / "out")):
                peak = peak_mib(mode, str(path), run / "store", run / "home")
                before, at = last.get(step, (0, base))  # growth since the last size measured (or since import)
                marginal = (peak - at) * 1024 * 1024 / (n - before)
                last[step] = (n, peak)
                print(f"{step:>8} {n:>9,} {peak:>13.0f} {peak / base:>11.2f} {marginal:>17.0f}")
            subprocess.run(["rm", "-rf", str(run)], check=True)


if __name__ == "__main__":
    main()
