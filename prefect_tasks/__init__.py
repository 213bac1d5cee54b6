"""Prefect 3 tasks and block for fedml-storage."""

from .block import FedMLStorage
from .tasks import delete_data, download_data, get_data_metadata, list_data, retry_transient, upload_data

__all__ = ["FedMLStorage", "delete_data", "download_data", "get_data_metadata", "list_data", "retry_transient",
           "upload_data"]
