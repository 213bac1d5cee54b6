"""Airflow hand-off through FedML storage.

produce a small dataset directory -> upload it (emits the Asset fedml://default/handoff-dataset)
-> download it in a separate task, as another worker would, pinned to the version the upload returned
-> verify byte for byte -> read its metadata -> list -> clean up the local scratch copies.

The stored dataset stays for `airflow_consumer_dag.py`, which is scheduled on its Asset.
Runs on the embedded LOCAL store with no configuration; set the connection `fedml_storage_default`
(e.g. AIRFLOW_CONN_FEDML_STORAGE_DEFAULT) to use S3 or R2. FEDML_EXAMPLE_WORKDIR sets the scratch folder;
FEDML_EXAMPLE_KEEP=1 keeps it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task

from airflow_provider.operators import (
    FedMLStorageDownloadOperator,
    FedMLStorageListOperator,
    FedMLStorageMetadataOperator,
    FedMLStorageUploadOperator,
)
from example_data import make_dataset, verify_copy

DATASET = "handoff-dataset"
WORKDIR = Path(os.environ.get("FEDML_EXAMPLE_WORKDIR") or Path(tempfile.gettempdir()) / "fedml-handoff")


@dag(
    dag_id="fedml_storage_handoff",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share one dataset name and scratch folder
    tags=["fedml-storage", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=2)},
)
def handoff():
    @task
    def produce(run_id: str | None = None) -> str:
        """Write a small dataset directory."""
        return str(make_dataset(WORKDIR / "produced" / DATASET, f"produced by run {run_id}"))

    produced = produce()
    upload = FedMLStorageUploadOperator(
        task_id="upload",
        data_path=produced,
        name=DATASET,
        description="hand-off example dataset",
        metadata={"producer": "{{ dag.dag_id }}", "run_id": "{{ run_id }}"},
        tag_list=["example"],
    )
    download = FedMLStorageDownloadOperator(
        task_id="download",
        name=DATASET,
        dest_path=str(WORKDIR / "downloaded"),
        version="{{ ti.xcom_pull(task_ids='upload')['version'] }}",
    )

    @task
    def verify(produced_path: str, downloaded_path: str) -> int:
        """Fail unless the downloaded copy equals what was produced."""
        return verify_copy(produced_path, downloaded_path)

    metadata = FedMLStorageMetadataOperator(task_id="metadata", name=DATASET)
    listing = FedMLStorageListOperator(task_id="list")

    @task
    def cleanup() -> None:
        """Remove this DAG's local scratch copies (the stored dataset stays for consumers)."""
        if os.environ.get("FEDML_EXAMPLE_KEEP") != "1":
            for folder in ("produced", "downloaded"):  # not "consumed": the consumer DAG may be using it
                shutil.rmtree(WORKDIR / folder, ignore_errors=True)

    checked = verify(produced, download.output)
    produced >> upload >> download
    checked >> metadata >> listing >> cleanup()


handoff()
