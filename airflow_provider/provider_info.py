"""Provider metadata read by Airflow's providers manager (entry point `apache_airflow_provider`)."""

from __future__ import annotations

from typing import Any

from fedml_storage import __version__

_TEXT = {"type": ["string", "null"]}


def get_provider_info() -> dict[str, Any]:
    """The provider's description, connection type and form, hooks, operators and sensors."""
    return {
        "package-name": "fedml-storage",
        "name": "FedML Storage",
        "description": "Move datasets between tasks and DAGs through FedML storage (LOCAL, S3, R2).",
        "versions": [__version__],
        "integrations": [
            {"integration-name": "FedML Storage", "external-doc-url": "https://pypi.org/project/fedml-storage/",
             "tags": ["software"]}
        ],
        "hooks": [{"integration-name": "FedML Storage", "python-modules": ["airflow_provider.hook"]}],
        "operators": [{"integration-name": "FedML Storage", "python-modules": ["airflow_provider.operators"]}],
        "sensors": [{"integration-name": "FedML Storage", "python-modules": ["airflow_provider.sensors"]}],
        "triggers": [{"integration-name": "FedML Storage", "python-modules": ["airflow_provider.triggers"]}],
        "connection-types": [
            {
                "hook-class-name": "airflow_provider.hook.FedMLStorageHook",
                "hook-name": "FedML Storage",
                "connection-type": "fedml_storage",
                "conn-fields": {
                    "service": {"label": "Service (LOCAL, S3 or R2)",
                                "schema": {"type": ["string", "null"], "enum": ["LOCAL", "S3", "R2", None]}},
                    "bucket": {"label": "Bucket", "schema": _TEXT},
                    "endpoint_url": {"label": "Endpoint URL (S3-compatible)", "schema": _TEXT},
                    "region": {"label": "Region", "schema": _TEXT},
                    "r2_account_id": {"label": "Cloudflare R2 account id", "schema": _TEXT},
                    "ca_bundle": {"label": "CA bundle file on the workers (a private CA's endpoint)", "schema": _TEXT},
                    "namespace": {"label": "Namespace (key prefix)", "schema": _TEXT},
                    "local_root": {"label": "LOCAL store folder", "schema": _TEXT},
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port"],
                    "relabeling": {"password": "API key (ACCESS_KEY_ID:SECRET_ACCESS_KEY, or the secret alone)",
                                   "login": "Access key id (when the API key is the secret alone)",
                                   "extra": "Other settings by name (JSON), e.g. {\"keep_versions\": 3}"},
                    "placeholders": {"password": "ACCESS_KEY_ID:SECRET_ACCESS_KEY", "service": "S3",
                                     "namespace": "default", "ca_bundle": "/etc/ssl/certs/company-ca.pem"},
                },
            }
        ],
    }
