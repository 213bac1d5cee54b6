"""Test DAG: the connection alone sets the namespace (team-a). Mapped uploads and a plain one (leaving out
scratch files by ignore_patterns) emit their Assets there; a sensor waits for the uploaded version and tells it;
the download gets that version and pushes what it got; the delete runs twice, as a retry after it went through would."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import Asset, dag, task

from airflow_provider.operators import (
    FedMLStorageDeleteOperator,
    FedMLStorageDownloadOperator,
    FedMLStorageUploadOperator,
)
from airflow_provider.sensors import FedMLStorageDatasetSensor

WORK = os.environ.get("FEDML_TEAM_WORK", "/nonexistent/team")


@dag(dag_id="fedml_storage_team", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def team_dag():
    @task
    def make_data() -> None:
        Path(WORK, "shared").mkdir(parents=True, exist_ok=True)
        Path(WORK, "shared", "rows.csv").write_text("a,b\n1,2\n")
        Path(WORK, "shared", "scratch.tmp").write_text("not data")
        Path(WORK, "shared", ".cache").mkdir(exist_ok=True)
        Path(WORK, "shared", ".cache", "blob").write_text("not data")
        for i in (1, 2, 3):
            Path(WORK, f"ds{i}.csv").write_text(f"id\n{i}\n")

    each = FedMLStorageUploadOperator.partial(task_id="upload_each").expand(
        data_path=[f"{WORK}/ds{i}.csv" for i in (1, 2, 3)])
    upload = FedMLStorageUploadOperator(task_id="upload", data_path=f"{WORK}/shared", name="shared",
                                        ignore_patterns=["*.tmp", ".cache/"])
    # each pinned the TaskFlow way, by the key the task upstream pushes the version under
    wait = FedMLStorageDatasetSensor(task_id="wait", name="shared", poke_interval=1, timeout=60,
                                     version=upload.output["version"])
    download = FedMLStorageDownloadOperator(task_id="download", name="shared", dest_path=f"{WORK}/down",
                                            version=wait.output["version"])
    delete = FedMLStorageDeleteOperator(task_id="delete", name="shared")
    delete_again = FedMLStorageDeleteOperator(task_id="delete_again", name="shared")
    make_data() >> [each, upload]
    upload >> wait >> download >> delete >> delete_again


@dag(dag_id="fedml_storage_team_consumer", schedule=[Asset("fedml://team-a/ds2.csv")],
     start_date=datetime(2026, 1, 1), catchup=False)
def team_consumer_dag():
    @task
    def consume() -> None:
        pass

    consume()


team_dag()
team_consumer_dag()
