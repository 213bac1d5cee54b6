"""fedml-storage: the FedML Storage API on safe, fast object storage (LOCAL, S3, R2)."""

from . import api
from .client import StorageClient
from .config import PLAIN_SETTINGS, StorageSettings, is_unset, unknown_settings
from .response import FedMLResponse, FedMLStorageError, Reason, ResponseCode
from .results import DownloadResult, Readiness, StorageMetadata, UploadResult, asset_uri, human_size
from .stops import Stopped, stop_when
from .naming import planned_name

__version__ = "0.1.0"

__all__ = [
    "PLAIN_SETTINGS", "DownloadResult", "FedMLResponse", "FedMLStorageError", "Readiness", "Reason", "ResponseCode",
    "StorageClient", "StorageMetadata", "StorageSettings", "Stopped", "UploadResult", "__version__", "api", "asset_uri",
    "human_size", "is_unset", "planned_name", "stop_when", "unknown_settings",
]
