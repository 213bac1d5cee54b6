"""The documented examples, with `fedml` replaced by `fedml_storage`, run unchanged against moto (as R2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_API_KEY

EXAMPLES = '''
import fedml_storage
API_KEY = "{api_key}"

DATA_PATH = "{data_path}"
DATA_NAME = "new_name_for_data_directory"
STORAGE_SERVICE = "R2"
DATA_DESCRIPTION = "description of data uploaded"
metadata = {{'key': 'value'}}

response = fedml_storage.api.upload(
    data_path=DATA_PATH,
    api_key=API_KEY,
    service=STORAGE_SERVICE,
    name=DATA_NAME,
    description=DATA_DESCRIPTION,
    metadata=metadata,
    show_progress=True
)
print("UPLOAD", response.code, response.data)

DESTINATION_DIRECTORY = "{dest}"
response = fedml_storage.api.download(
    data_name=DATA_NAME,
    api_key=API_KEY,
    service=STORAGE_SERVICE,
    dest_path=DESTINATION_DIRECTORY,
    show_progress=True
)
print("DOWNLOAD", response.code, response.data)

response = fedml_storage.api.get_storage_metadata(
    data_name=DATA_NAME,
    api_key=API_KEY
)
from prettytable import PrettyTable
from fedml_storage.api.fedml_response import ResponseCode

if response.code == ResponseCode.SUCCESS:
    metadata = response.data
    if metadata:
        metadata_table = PrettyTable(["Data Name", "Description", "Created At", "Updated At"])
    metadata_table.add_row([metadata.dataName, metadata.description, metadata.createdAt, metadata.updatedAt])

print(metadata_table)

response = fedml_storage.api.get_storage_user_defined_metadata(
    data_name=DATA_NAME,
    api_key=API_KEY
)
if response.code == ResponseCode.SUCCESS:
    metadata = response.data
    if metadata:
        print("User defined metadata ",response.data)

response = fedml_storage.api.list_storage_objects(api_key=API_KEY)
if response.code == ResponseCode.SUCCESS:
    metadata = response.data
    if metadata:
        object_list_table = PrettyTable(["Data Name", "Description", "Created At", "Updated At"])
        for stored_object in response.data:
            object_list_table.add_row(
                [stored_object.dataName, stored_object.description, stored_object.createdAt, stored_object.updatedAt])
        print(object_list_table)

DATA_NAME = "new_name_for_data_directory"
response = fedml_storage.api.delete(
    data_name=DATA_NAME,
    api_key=API_KEY,
    service=STORAGE_SERVICE
)
if response.code == ResponseCode.SUCCESS:
    print(f"Data '{{DATA_NAME}}' deleted successfully.")
else:
    print(f"Failed to delete data {{DATA_NAME}}. Error message: {{response.message}}")
'''


def test_documented_examples_run_unchanged(moto_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    data = tmp_path / "path" / "to" / "data"
    data.mkdir(parents=True)
    (data / "train.csv").write_text("a,b\n1,2\n")
    script = EXAMPLES.format(api_key=TEST_API_KEY, data_path=data, dest=tmp_path / "dataset")
    env = dict(os.environ)
    # R2 is the documented service; here "R2" is moto, and metadata/list use R2 as the configured default.
    env.update(FEDML_STORAGE_SERVICE="R2", FEDML_STORAGE_ENDPOINT_URL=moto_endpoint, FEDML_STORAGE_BUCKET=s3_bucket)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "UPLOAD ResponseCode.SUCCESS s3://" in out
    assert f"DOWNLOAD ResponseCode.SUCCESS {tmp_path / 'dataset' / 'new_name_for_data_directory'}" in out
    assert (tmp_path / "dataset" / "new_name_for_data_directory" / "train.csv").read_text() == "a,b\n1,2\n"
    assert "description of data uploaded" in out
    assert "User defined metadata  {'key': 'value'}" in out
    assert out.count("new_name_for_data_directory |") == 2  # metadata table and list table
    assert "Data 'new_name_for_data_directory' deleted successfully." in out
    assert "Uploading Package to Remote Storage" in proc.stderr  # progress bar on stderr
    assert TEST_API_KEY.split(":")[1] not in out + proc.stderr
