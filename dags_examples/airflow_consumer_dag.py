"""Airflow consumer scheduled on the Asset the hand-off DAG's upload emits.

Runs after every upload of fedml://default/handoff-dataset: downloads the current version (verified
against its SHA-256 on the way), reports what arrived, then deletes the stored dataset to clean up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from airflow.sdk import Asset, dag, task

from airflow_provider.operators import FedMLStorageDeleteOperator, FedMLStorageDownloadOperator
from fedml_storage import asset_uri

DATASET = "handoff-dataset"
WORKDIR = Path(os.environ.get("FEDML_EXAMPLE_WORKDIR") or Path(tempfile.gettempdir()) / "fedml-handoff")


@dag(
    dag_id="fedml_storage_consumer",
    schedule=[Asset(asset_uri("default", DATASET))],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["fedml-storage", "example"],
)
def consumer():
    download = FedMLStorageDownloadOperator(task_id="download", name=DATASET, dest_path=str(WORKDIR / "consumed"))

    @task
    def report(path: str) -> dict:
        """Count what arrived; the download already verified every byte."""
        files = [p for p in Path(path).rglob("*") if p.is_file()]
        summary = {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}
        if os.environ.get("FEDML_EXAMPLE_KEEP") != "1":
            shutil.rmtree(path, ignore_errors=True)
        return summary

    delete = FedMLStorageDeleteOperator(task_id="delete", name=DATASET)
    report(download.output) >> delete


consumer()
