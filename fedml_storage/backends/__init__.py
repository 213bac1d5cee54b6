"""Storage backends behind one small object interface."""

from __future__ import annotations

from ..config import StorageSettings
from .base import ObjectInfo, ObjectMissing, ObjectStore


def open_store(settings: StorageSettings) -> ObjectStore:
    """The backend for the settings' service."""
    if settings.service == "LOCAL":
        from .local import LocalStore

        return LocalStore(settings.store_root)
    from .s3 import S3Store

    return S3Store(settings)


__all__ = ["ObjectInfo", "ObjectMissing", "ObjectStore", "open_store"]
