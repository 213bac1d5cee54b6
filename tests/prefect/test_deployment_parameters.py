"""A deployed flow taking a FedMLStorage parameter, run with a saved block picked as the UI does it."""

from __future__ import annotations

from prefect import flow
from prefect.deployments import run_deployment
from prefect.flow_engine import run_flow

from prefect_tasks import FedMLStorage
from tests.conftest import TEST_API_KEY


@flow(name="fedml-block-parameter")
def takes_storage(storage: FedMLStorage | None = None) -> dict:
    assert isinstance(storage, FedMLStorage)
    return {"bucket": storage.bucket, "endpoint_url": storage.endpoint_url,
            "saved_key": storage.settings()["api_key"] == TEST_API_KEY, "listed": storage.list()}


def test_a_saved_block_picked_as_a_deployment_parameter_creates_the_run_and_reaches_the_flow(s3_settings: dict) -> None:
    """The UI sends {"$ref": {"block_document_id": ...}}: it matched the block's own schema too (no field is
    required), and the server refused the run with 409 "valid under each of"."""
    block_id = FedMLStorage(service="S3", bucket=s3_settings["bucket"], endpoint_url=s3_settings["endpoint_url"],
                            region="us-east-1", api_key=s3_settings["api_key"]).save("fedml-deployed", overwrite=True)
    takes_storage.to_deployment(name="picked").apply()
    flow_run = run_deployment("fedml-block-parameter/picked", timeout=0,
                              parameters={"storage": {"$ref": {"block_document_id": str(block_id)}}})
    assert flow_run.parameters == {"storage": {"$ref": {"block_document_id": str(block_id)}}}
    seen = run_flow(takes_storage, flow_run=flow_run, parameters=flow_run.parameters)  # as a worker would
    assert seen == {"bucket": s3_settings["bucket"], "endpoint_url": s3_settings["endpoint_url"], "saved_key": True,
                    "listed": []}
