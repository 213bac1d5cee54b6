"""Airflow consumer scheduled on the Asset the hand-off DAG's upload emits.

Runs after every upload of fedml://default/handoff-dataset: downloads the current version (verified
against its SHA-256 on the way) and reports what arrived. It leaves the stored dataset alone: the producer's
run may still be reading it, and other consumers may be scheduled on the same Asset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from airflow.sdk import Asset, XComArg, dag, task

from airflow_provider.operators import FedMLStorageDownloadOperator
from fedml_storage import asset_uri

DATASET = "handoff-dataset"
WORKDIR = Path(os.environ.get("FEDML_EXAMPLE_WORKDIR") or Path(tempfile.gettempdir()) / "fedml-handoff")


@dag(
    dag_id="fedml_storage_consumer",
    schedule=[Asset(asset_uri("default", DATASET))],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["fedml-storage", "example"],
)
def consumer():
    download = FedMLStorageDownloadOperator(task_id="download", name=DATASET, dest_path=str(WORKDIR / "consumed"))

    @task
    def report(path: str, version: str) -> dict:
        """Count what arrived (and which version); the download already verified every byte."""
        files = [p for p in Path(path).rglob("*") if p.is_file()]
        summary = {"version": version, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
        if os.environ.get("FEDML_EXAMPLE_KEEP") != "1":
            shutil.rmtree(path, ignore_errors=True)
        return summary

    report(download.output, XComArg(download, key="version"))  # the download's path and the version it got


consumer()
