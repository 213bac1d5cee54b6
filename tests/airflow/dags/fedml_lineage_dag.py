"""Test DAGs: uploads whose stored name only the run tells (a file made at run time, a templated name) emit
their Asset through the task's alias; a DAG scheduled on that Asset is queued."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import Asset, dag, task

from airflow_provider.operators import FedMLStorageUploadOperator

WORK = os.environ.get("FEDML_LINEAGE_WORK", "/nonexistent/lineage")


@dag(dag_id="fedml_storage_lineage", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def lineage_dag():
    @task
    def make_model() -> None:
        Path(WORK).mkdir(parents=True, exist_ok=True)
        Path(WORK, "model.pt").write_bytes(b"weights made at run time")

    by_name = FedMLStorageUploadOperator(task_id="upload", data_path=f"{WORK}/model.pt", name="weights")
    templated = FedMLStorageUploadOperator(task_id="upload_templated", data_path=f"{WORK}/model.pt",
                                           name="{{ params.dsname }}", params={"dsname": "templated"})
    make_model() >> [by_name, templated]


@dag(dag_id="fedml_storage_lineage_consumer", schedule=[Asset("fedml://default/weights.pt")],
     start_date=datetime(2026, 1, 1), catchup=False)
def lineage_consumer_dag():
    @task
    def consume() -> None:
        pass

    consume()


lineage_dag()
lineage_consumer_dag()
