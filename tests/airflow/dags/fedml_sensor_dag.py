"""Test DAGs: a deferrable sensor waits (in the trigger, backing off up to 1 s) until the test uploads `late-data`
with status=ready; another times out waiting for a dataset nobody stores."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task

from airflow_provider.sensors import FedMLStorageDatasetSensor


@dag(dag_id="fedml_storage_sensor", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def sensor_dag():
    wait = FedMLStorageDatasetSensor(task_id="wait", name="late-data", metadata_key="status", metadata_value="ready",
                                     deferrable=True, poke_interval=0.5, exponential_backoff=True, max_wait=1,
                                     timeout=120)

    @task
    def after() -> str:
        return "ran after the dataset was ready"

    wait >> after()


sensor_dag()


@dag(dag_id="fedml_storage_sensor_timeout", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def sensor_timeout_dag():
    FedMLStorageDatasetSensor(task_id="wait", name="never-stored", deferrable=True, poke_interval=0.5, timeout=3)


sensor_timeout_dag()


@dag(dag_id="fedml_storage_sensor_poke_timeout", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def sensor_poke_timeout_dag():
    FedMLStorageDatasetSensor(task_id="wait", name="never-stored", poke_interval=0.5, timeout=2)


sensor_poke_timeout_dag()
