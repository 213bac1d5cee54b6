"""Removing what no catalog entry references: data of failed or interrupted uploads, a store check's probes, and
each store's own leftovers (LOCAL temp files and empty folders, S3 multipart uploads)."""

from __future__ import annotations

import logging
import time

from .abandon import parallel_map
from .catalog import PROBE_NAME, VERSION_ID, Catalog
from .errors import IntegrityError, InvalidInput, StorageFailure

log = logging.getLogger("fedml_storage")


def cleanup(catalog: Catalog, older_than_seconds: float) -> dict[str, int]:
    """Remove, once older than the grace period: data no manifest references, probe objects of store checks, and
    the store's own leftovers (remove_leftovers); counts of what was removed, what could not be, and the store's
    leftovers kept as younger than the grace period (uploads that may still be running)."""
    if isinstance(older_than_seconds, bool) or not isinstance(older_than_seconds, (int, float)) \
            or not older_than_seconds >= 0:
        raise InvalidInput("older_than_seconds must be a number of seconds >= 0 (use 0 only while no upload runs)")
    cutoff = time.time() - older_than_seconds
    # Data is listed before manifests are read, so data whose manifest commits meanwhile is seen referenced.
    candidates = [o.key for o in catalog.store.list(catalog.data_prefix)
                  if o.modified < cutoff and _ours(catalog, o.key)]
    manifests, unreadable = catalog.scan() if candidates else ([], {})  # nothing old: no catalog entry to read
    referenced = {v.key for m in manifests for v in m.versions}
    # an unreadable (or newer-format) manifest may still point into its name's data: leave all of it
    protected = tuple(map(catalog.data_folder, unreadable))
    for name, why in unreadable.items():
        log.warning("cleanup leaves the data of %r: %s", name, why)
    orphans = _confirm_orphans(catalog, [k for k in candidates if k not in referenced and not k.startswith(protected)])
    orphans += _stale_probes(catalog, cutoff)
    failed = catalog.store.delete_many(orphans)
    removed = len(orphans) - len(failed)
    store_leftovers = catalog.store.remove_leftovers(catalog.data_prefix, cutoff)
    failed += store_leftovers.failed
    if failed:
        log.warning("cleanup could not remove %d object(s), e.g. %s; check you (or the key) may delete them",
                    len(failed), failed[0])
    return {"orphaned_objects_removed": removed, "incomplete_uploads_removed": store_leftovers.removed,
            "objects_not_removed": len(failed), "incomplete_uploads_kept": store_leftovers.kept}


def _stale_probes(catalog: Catalog, cutoff: float) -> list[str]:
    """Probe objects (named by new_probe_key) a killed store check left; none for a key that may not list them."""
    prefix = catalog.probe_prefix
    try:
        return [o.key for o in catalog.store.list(prefix)
                if o.modified < cutoff and PROBE_NAME.fullmatch(o.key[len(prefix):])]
    except (StorageFailure, OSError) as exc:
        log.debug("cleanup did not look for stale store-check probes: %s", exc)
        return []


def _ours(catalog: Catalog, key: str) -> bool:
    """Whether a key under the data prefix has the shape of data_key(): anything else there is not ours."""
    parts = key[len(catalog.data_prefix):].split("/")
    return len(parts) == 3 and bool(VERSION_ID.fullmatch(parts[1])) and "" not in parts


def _confirm_orphans(catalog: Catalog, keys: list[str], workers: int = 8) -> list[str]:
    """Of data keys the manifest listing left unreferenced, those their name's manifest, read on its own, does not
    reference either: a listing that came back short must never cost published data."""
    by_name: dict[str, list[str]] = {}
    for key in keys:
        by_name.setdefault(key[len(catalog.data_prefix):].split("/", 1)[0], []).append(key)

    def unreferenced(item: tuple[str, list[str]]) -> list[str]:
        name, name_keys = item
        try:
            found = catalog.read(name)
        except (IntegrityError, PermissionError):
            return []  # unreadable: its data stays, as above
        kept = {v.key for v in found[0].versions} if found else set()
        if kept & set(name_keys):
            log.warning("cleanup leaves the data of %r: the listing of catalog entries missed it", name)
        return [k for k in name_keys if k not in kept]

    return [key for keys in parallel_map(unreferenced, list(by_name.items()), workers, "fedml-storage-cleanup")
            for key in keys]
