"""Prefect hand-off through FedML storage: produce a small dataset directory, upload it, download it in
another task pinned to the uploaded version, verify it byte for byte, read its metadata, list, clean up.

    python dags_examples/prefect_dataset_flow.py

Runs on the embedded LOCAL store with no configuration; pass a saved `FedMLStorage` block to use S3 or R2.
"""

# No `from __future__ import annotations`: a deployment builds the flow's parameter model from its annotations, and
# postponed ones leave the block's type undefined there ("Dataset_HandoffModel is not fully defined").
import os
import shutil
import tempfile
from pathlib import Path

# Run without a Prefect server, Prefect starts a temporary one whose telemetry needs the internet (and, failing,
# prints a traceback); the example needs none. The variable, when set, wins (a Prefect profile's value does not).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from example_data import make_dataset, verify_copy  # noqa: E402
from prefect import flow, task  # noqa: E402

from prefect_tasks import (  # noqa: E402
    FedMLStorage,
    delete_data,
    download_data,
    get_data_metadata,
    list_data,
    upload_data,
)

DATASET = "prefect-handoff-dataset"


@task
def produce(workdir: str) -> str:
    """Write a small dataset directory."""
    return str(make_dataset(Path(workdir) / "produced" / DATASET, "produced by prefect"))


@task
def verify(produced: str, downloaded: str) -> int:
    """Fail unless the downloaded copy equals what was produced; the number of files."""
    return verify_copy(produced, downloaded)


@flow(name="fedml-dataset-handoff")
def dataset_handoff(workdir: str | None = None, storage: FedMLStorage | None = None, keep: bool = False) -> dict:
    """The hand-off; returns what each step reported."""
    work = workdir or tempfile.mkdtemp(prefix="fedml-prefect-")
    produced = produce(work)
    uploaded = upload_data(produced, name=DATASET, description="prefect hand-off example",
                           metadata={"producer": "prefect"}, tag_list=["example"], storage=storage)
    downloaded = download_data(DATASET, dest_path=str(Path(work) / "downloaded"), version=uploaded["version"],
                               storage=storage)
    files = verify(produced, downloaded)
    metadata = get_data_metadata(DATASET, storage=storage)
    listed = list_data(storage=storage)
    deleted = delete_data(DATASET, storage=storage)
    if not keep:  # what the flow made: never the rest of a workdir the caller gave
        for made in ([work] if workdir is None else [Path(work) / "produced", Path(work) / "downloaded"]):
            shutil.rmtree(made, ignore_errors=True)
    return {"uploaded": uploaded, "downloaded": downloaded, "files": files, "metadata": metadata,
            "listed": [item["dataName"] for item in listed], "deleted": deleted, "workdir": work}


if __name__ == "__main__":
    report = dataset_handoff()
    print(f"verified {report['files']} files of {DATASET} (version {report['uploaded']['version']})")
