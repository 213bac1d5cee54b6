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
from example_data import make_dataset, verify_copy
from fedml_storage.api.fedml_response import ResponseCode

SERVICE = "LOCAL"
DATA_NAME = "quickstart-dataset"


def main(keep: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        source = make_dataset(Path(tmp) / "source" / DATA_NAME, "quickstart sample")
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
        print(f"verified byte for byte: {verify_copy(source, down.data)} files")
        meta = fedml_storage.api.get_storage_user_defined_metadata(DATA_NAME, service=SERVICE)
        print("user metadata:", meta.data)
        if not keep:
            print(fedml_storage.api.delete(DATA_NAME, SERVICE).message)
        return 0 if again.data.skipped else 1


if __name__ == "__main__":
    sys.exit(main(keep="--keep" in sys.argv))
