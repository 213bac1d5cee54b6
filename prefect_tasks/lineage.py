"""Asset lineage: the tasks' own runs materialise, or read, the Prefect asset fedml://<namespace>/<name>.

Prefect fixes a task's assets when the task is made (`@materialize(key)`, `with_options(assets=[key])`), but a
dataset's key depends on the call's arguments, which under `.map` or with futures as arguments are known only
once the run starts. So a run declares its key on its own asset context, as `with_options(assets=[key])` (or
`asset_deps=[key]`) would have: Prefect then emits the materialisation event when the run ends and hands the key
to the tasks that take the run's result, with no extra task run. (Under task runners that run tasks in other
processes, such as Dask or Ray, the run's own materialisation is still recorded, but tasks taking its result may
not see the dataset upstream: the flow's copy of what runs declared is updated in the process of the run.)
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.context import FlowRunContext

from fedml_storage import FedMLStorageError, StorageClient

try:  # Prefect versions without assets record no lineage
    from prefect.assets import Asset, add_asset_metadata
    from prefect.context import AssetContext
except ImportError:  # pragma: no cover - depends on the installed Prefect
    AssetContext = None  # type: ignore[misc, assignment]

MATERIALIZED_BY = "fedml-storage"
T = TypeVar("T")


def _asset(client: StorageClient, name: str) -> tuple[Any, Any] | None:
    """This run's asset context and the dataset's asset, or None where no lineage can be recorded."""
    context = AssetContext.get() if AssetContext is not None else None
    if context is None:
        return None
    try:
        key = client.asset_uri(name, iri=True)
    except FedMLStorageError:  # a bad name or bad settings: the storage call itself reports it
        return None
    try:
        return context, Asset(key=key)
    except ValueError:
        get_run_logger().warning("not recording lineage: %s is not a valid Prefect asset key", key)
        return None


def declare_output(client: StorageClient, name: str) -> str | None:
    """Make the running task materialise dataset `name`; its asset key (None when lineage is not recorded)."""
    found = _asset(client, name)
    if found is None:
        return None
    context, asset = found
    context.downstream_assets.add(asset)
    context.materialized_by = context.materialized_by or MATERIALIZED_BY  # a @materialize(by=...) of the caller wins
    context.update_tracked_assets()
    return asset.key


def declare_input(client: StorageClient, name: str) -> str | None:
    """Make dataset `name` an upstream asset of the running task and of the tasks taking its result."""
    found = _asset(client, name)
    if found is None:
        return None
    context, asset = found
    context.direct_asset_dependencies.add(asset)
    context.update_tracked_assets()
    return asset.key


_HELD: dict[int, list[Any]] = {}
_HELD_LOCK = threading.Lock()


def hold_for_flow_run(result: T) -> T:
    """`result`, kept alive until the flow run ends (for the results that carry lineage: small, one per call).

    Prefect ties a result and its parts to the task run by id(), without holding them (dicts and strings cannot
    be weakly referenced). Once freed, those ids come back as new objects made in the flow (a dict of metadata,
    a path string), which then look downstream of this run: false lineage, seen in about one run in three of a
    flow that drops an upload's result.
    """
    context = FlowRunContext.get()
    if context is None:
        return result
    key = id(context)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is None:
            try:
                weakref.finalize(context, _HELD.pop, key, None)
            except TypeError:  # a Prefect whose contexts take no weak references: hold nothing rather than leak
                return result
            held = _HELD[key] = []
        held.append(result)
    return result


def add_metadata(key: str | None, details: dict[str, Any]) -> None:
    """Attach details to the materialisation of `key` declared by this run (nothing when `key` is None)."""
    if key is not None:
        add_asset_metadata(key, details)
