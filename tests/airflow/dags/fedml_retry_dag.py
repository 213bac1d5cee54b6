"""Test DAG: one upload with Airflow retries; the test starts the S3 server only after the first try failed."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag

from airflow_provider.operators import FedMLStorageUploadOperator


@dag(dag_id="fedml_storage_retry", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def retry_dag():
    FedMLStorageUploadOperator(task_id="upload", data_path=os.environ.get("FEDML_RETRY_DATA", "/nonexistent"),
                               name="retried", retries=2, retry_delay=timedelta(seconds=3))


retry_dag()
