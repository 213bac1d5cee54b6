"""`ResponseCode` and `FedMLResponse`, where the documented examples import them from."""

from ..response import FedMLResponse, FedMLStorageError, Reason, ResponseCode

__all__ = ["FedMLResponse", "FedMLStorageError", "Reason", "ResponseCode"]
