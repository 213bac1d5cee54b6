"""The example DAGs end to end with `airflow dags test`, on LOCAL and on moto S3, compared byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from tests.conftest import TEST_API_KEY, s3_client
from tests.core.conftest import tree_bytes

from .conftest import query, run_dag, succeeded

DATASET = "handoff-dataset"
SECRET = TEST_API_KEY.split(":", 1)[1]


def _xcom(home: Path, dag_id: str, task_id: str):
    rows = query(home, "SELECT value FROM xcom WHERE dag_id=? AND task_id=? AND key='return_value' "
                       "ORDER BY timestamp DESC LIMIT 1", dag_id, task_id)
    value = rows[0][0]
    return json.loads(value if isinstance(value, str) else value.decode())


def _handoff_then_consumer(home: Path, work: Path, env: dict[str, str]) -> str:
    env = {**env, "FEDML_EXAMPLE_WORKDIR": str(work), "FEDML_EXAMPLE_KEEP": "1"}
    producer = run_dag(home, "fedml_storage_handoff", env)
    assert succeeded(producer), (producer.stdout + producer.stderr)[-4000:]
    produced, downloaded = work / "produced" / DATASET, work / "downloaded" / DATASET
    assert tree_bytes(downloaded) == tree_bytes(produced) and len(tree_bytes(produced)) == 12
    upload = _xcom(home, "fedml_storage_handoff", "upload")
    assert upload["name"] == DATASET and upload["version"] and not upload["skipped"]
    # the download was pinned to the uploaded version, and the Asset event carries it
    events = query(home, "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ? "
                         "ORDER BY e.timestamp DESC LIMIT 1", f"fedml://default/{DATASET}")
    assert json.loads(events[0][0])["version"] == upload["version"]
    queued = query(home, "SELECT target_dag_id FROM asset_dag_run_queue")
    assert ("fedml_storage_consumer",) in queued  # data-aware scheduling picked the consumer
    listed = _xcom(home, "fedml_storage_handoff", "list")
    assert DATASET in [item["dataName"] for item in listed]

    consumer = run_dag(home, "fedml_storage_consumer", env)
    assert succeeded(consumer), (consumer.stdout + consumer.stderr)[-4000:]
    assert tree_bytes(work / "consumed" / DATASET) == tree_bytes(produced)
    assert _xcom(home, "fedml_storage_consumer", "report")["version"] == upload["version"]  # the download's key
    return producer.stdout + producer.stderr + consumer.stdout + consumer.stderr


def test_handoff_and_consumer_on_local(airflow_home: Path, tmp_path: Path, isolated_home: Path) -> None:
    _handoff_then_consumer(airflow_home, tmp_path / "work", {"FEDML_STORAGE_HOME": str(isolated_home)})
    # the consumer leaves the dataset for other readers
    assert [p.name for p in (isolated_home / "store" / "default" / "manifests").glob("*.json")] == [f"{DATASET}.json"]


def test_handoff_and_consumer_on_s3_with_uri_connection(airflow_home: Path, tmp_path: Path, moto_endpoint: str,
                                                        s3_bucket: str) -> None:
    key_id, secret = TEST_API_KEY.split(":", 1)
    uri = (f"fedml-storage://{quote(key_id, safe='')}:{quote(secret, safe='')}@/?service=S3&bucket={s3_bucket}"
           f"&endpoint_url={quote(moto_endpoint, safe='')}&region=us-east-1")
    output = _handoff_then_consumer(airflow_home, tmp_path / "work", {"AIRFLOW_CONN_FEDML_STORAGE_DEFAULT": uri})
    assert SECRET not in output
    keys = [o["Key"] for o in s3_client(moto_endpoint).list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    manifests = [k for k in keys if "/manifests/" in k]
    assert manifests == [f"default/manifests/{DATASET}.json"] and len(keys) == 2  # on S3, not on LOCAL: one dataset
    assert all(SECRET not in str(row) for row in query(airflow_home, "SELECT value FROM xcom"))


def test_names_only_the_run_tells_reach_lineage_through_an_alias(airflow_home: Path, tmp_path: Path,
                                                                 isolated_home: Path) -> None:
    dagfile = Path(__file__).parent / "dags" / "fedml_lineage_dag.py"
    env = {"FEDML_STORAGE_HOME": str(isolated_home), "FEDML_LINEAGE_WORK": str(tmp_path / "work"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(dagfile.parent)}
    run = run_dag(airflow_home, "fedml_storage_lineage", env, dagfile)
    assert succeeded(run), (run.stdout + run.stderr)[-4000:]
    events = dict(query(airflow_home, "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"))
    for task_id, uri in (("upload", "fedml://default/weights.pt"), ("upload_templated", "fedml://default/templated.pt")):
        assert json.loads(events[uri])["version"] == _xcom(airflow_home, "fedml_storage_lineage", task_id)["version"]
    assert "fedml://default/weights" not in events  # the name as given, which the file's extension extends
    queued = query(airflow_home, "SELECT target_dag_id FROM asset_dag_run_queue")
    assert ("fedml_storage_lineage_consumer",) in queued


def _xcoms(home: Path, dag_id: str, task_id: str, key: str = "return_value") -> list:
    rows = query(home, "SELECT value FROM xcom WHERE dag_id=? AND task_id=? AND key=? ORDER BY map_index", dag_id,
                 task_id, key)
    return [json.loads(v if isinstance(v, str) else v.decode()) for (v,) in rows]


def test_namespace_from_the_connection_mapped_uploads_sensor_download_and_retried_delete(
        airflow_home: Path, tmp_path: Path) -> None:
    dagfile = Path(__file__).parent / "dags" / "fedml_team_dag.py"
    conn = {"conn_type": "fedml_storage", "extra": {"service": "LOCAL", "namespace": "team-a",
                                                     "local_root": str(tmp_path / "store")}}
    env = {"AIRFLOW_CONN_FEDML_STORAGE_DEFAULT": json.dumps(conn), "FEDML_TEAM_WORK": str(tmp_path / "work"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(dagfile.parent)}
    run = run_dag(airflow_home, "fedml_storage_team", env, dagfile)
    assert succeeded(run), (run.stdout + run.stderr)[-4000:]
    dag_id = "fedml_storage_team"
    events = dict(query(airflow_home, "SELECT a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                                      "WHERE a.uri LIKE 'fedml://team-a/%'"))
    # every mapped upload's event is recorded, in the namespace the connection sets
    mapped = _xcoms(airflow_home, dag_id, "upload_each")
    assert [m["name"] for m in mapped] == ["ds1.csv", "ds2.csv", "ds3.csv"]
    for item in mapped:
        assert json.loads(events[f"fedml://team-a/{item['name']}"])["version"] == item["version"]
    upload = _xcoms(airflow_home, dag_id, "upload")[0]
    assert json.loads(events["fedml://team-a/shared"])["version"] == upload["version"]
    assert query(airflow_home, "SELECT uri FROM asset WHERE uri IN ('fedml://default/shared', "
                               "'fedml://default/ds1.csv', 'fedml://default/ds2.csv', 'fedml://default/ds3.csv')") == []
    assert ("fedml_storage_team_consumer",) in query(airflow_home, "SELECT target_dag_id FROM asset_dag_run_queue")
    # the sensor tells what it saw; the download pushes what it got, besides its path
    seen = {"name": "shared", "version": upload["version"], "sha256": upload["sha256"]}
    assert _xcoms(airflow_home, dag_id, "wait") == [seen]
    assert _xcoms(airflow_home, dag_id, "download") == [str(tmp_path / "work" / "down" / "shared")]
    assert upload["ignored"] == 2 and upload["file_count"] == 1  # scratch.tmp and .cache/ left out
    assert tree_bytes(tmp_path / "work" / "down" / "shared") == {"rows.csv": b"a,b\n1,2\n"}
    assert _xcoms(airflow_home, dag_id, "download", "version") == [upload["version"]]
    for task_id in ("upload", "wait"):  # under keys of their own too: `task.output["version"]` pins it
        assert [_xcoms(airflow_home, dag_id, task_id, key)[0] for key in ("name", "version", "sha256")] == \
            [seen["name"], seen["version"], seen["sha256"]]
    assert _xcoms(airflow_home, dag_id, "upload_each", "name") == ["ds1.csv", "ds2.csv", "ds3.csv"]
    assert _xcoms(airflow_home, dag_id, "download", "sha256") == [upload["sha256"]]
    # a delete run again after it went through succeeds, and says nothing was deleted
    assert (_xcoms(airflow_home, dag_id, "delete"), _xcoms(airflow_home, dag_id, "delete_again")) == ([True], [False])
