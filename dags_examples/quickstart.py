"""The main job on the embedded LOCAL store (no cloud account): upload a directory, list it,
download it elsewhere, verify it byte for byte, show its metadata, and clean up.

    python dags_examples/quickstart.py [--keep]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from prettytable import PrettyTable

import fedml_storage
from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.compare import tree_differences

SERVICE = "LOCAL"
DATA_NAME = "quickstart-dataset"


def make_dataset(root: Path) -> Path:
    """A small dataset directory with a nested folder, an empty file and a unicode name."""
    data = root / DATA_NAME
    (data / "images").mkdir(parents=True)
    for i in range(20):
        (data / "images" / f"img_{i:03d}.bin").write_bytes(bytes([i]) * (1024 + i))
    (data / "labels.csv").write_text("id,label\n" + "".join(f"{i},{i % 3}\n" for i in range(20)))
    (data / "empty.txt").touch()
    (data / "notes-é.txt").write_text("unicode names survive the round trip\n")
    return data


def main(keep: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        source = make_dataset(Path(tmp) / "source")
        up = fedml_storage.api.upload(
            data_path=str(source), service=SERVICE, description="quickstart sample",
            metadata={"owner": "quickstart", "split": "train"}, tag_list=["sample"], show_progress=True,
        )
        print(up.message)
        if up.code != ResponseCode.SUCCESS:
            return 1
        again = fedml_storage.api.upload(data_path=str(source), service=SERVICE)
        print(again.message)

        listed = fedml_storage.api.list_storage_objects(service=SERVICE)
        table = PrettyTable(["Data Name", "Description", "Size", "Created At", "Updated At"])
        for obj in listed.data or []:
            table.add_row([obj.dataName, obj.description, obj.size, obj.createdAt, obj.updatedAt])
        print(table)

        down = fedml_storage.api.download(data_name=DATA_NAME, service=SERVICE, dest_path=str(Path(tmp) / "restored"))
        print(down.message)
        if down.code != ResponseCode.SUCCESS:
            return 1
        ok = not tree_differences(source, down.data)
        print("verified byte for byte:", ok)
        meta = fedml_storage.api.get_storage_user_defined_metadata(DATA_NAME, service=SERVICE)
        print("user metadata:", meta.data)
        if not keep:
            print(fedml_storage.api.delete(DATA_NAME, SERVICE).message)
        return 0 if ok and again.data.skipped else 1


if __name__ == "__main__":
    sys.exit(main(keep="--keep" in sys.argv))
