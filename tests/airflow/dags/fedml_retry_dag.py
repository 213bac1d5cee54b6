"""Test DAG: one upload with Airflow retries; the test starts the S3 server only after the first try failed."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta

from airflow.sdk import dag

from airflow_provider.operators import FedMLStorageUploadOperator


def _retry_once_the_store_is_up(context) -> None:
    """A retry waits for the file the test makes once its S3 server is up (on a slow machine the server could come
    after the retry_delay: the retry failed too and the third try succeeded)."""
    up = os.environ.get("FEDML_RETRY_STORE_UP")
    if up and context["ti"].try_number > 1:
        deadline = time.monotonic() + 120
        while not os.path.exists(up) and time.monotonic() < deadline:
            time.sleep(0.1)


@dag(dag_id="fedml_storage_retry", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def retry_dag():
    FedMLStorageUploadOperator(task_id="upload", data_path=os.environ.get("FEDML_RETRY_DATA", "/nonexistent"),
                               name="retried", retries=2, retry_delay=timedelta(seconds=3),
                               pre_execute=_retry_once_the_store_is_up)


retry_dag()
