"""Prefect 3 tasks and block for fedml-storage."""

from .block import FedMLStorage
from .tasks import (
    adelete_data,
    adownload_data,
    aget_data_metadata,
    alist_data,
    aupload_data,
    delete_data,
    download_data,
    get_data_metadata,
    list_data,
    retry_transient,
    upload_data,
)

__all__ = ["FedMLStorage", "adelete_data", "adownload_data", "aget_data_metadata", "alist_data", "aupload_data",
           "delete_data", "download_data", "get_data_metadata", "list_data", "retry_transient", "upload_data"]
