"""A check that a store does what fedml-storage relies on: writes, reads, listings and deletes, and conditional
requests honoured, not only accepted (a store that ignores them answers as if all were well). Tried on a probe
object under the catalog's probe prefix, removed after; one a killed check left is removed by cleanup()."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .catalog import Catalog
from .errors import AccessDenied, PreconditionFailed, StorageFailure, Unsupported

_NO_SUCH_ETAG = '"00000000000000000000000000000000"'


@dataclass(frozen=True)
class Finding:
    """One feature tried: whether the store did what fedml-storage needs, and what that means."""

    feature: str
    ok: bool
    detail: str


@dataclass
class StoreCheck:
    """What a store was found to do."""

    service: str
    location: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def summary(self) -> str:
        failed = [f"{f.feature}: {f.detail}" for f in self.findings if not f.ok]
        if not failed:
            return f"{self.location} does all fedml-storage needs ({len(self.findings)} checks passed)"
        return f"{self.location} lacks what fedml-storage needs: " + "; ".join(failed)

    def to_dict(self) -> dict[str, object]:
        return {"service": self.service, "location": self.location, "ok": self.ok,
                "findings": [asdict(f) for f in self.findings]}


def check_store(catalog: Catalog) -> StoreCheck:
    """Try each feature on a fresh probe object; a store that refuses the first write (denied, no such bucket)
    raises, as any call would."""
    store = catalog.store
    key = catalog.new_probe_key()
    check = StoreCheck(store.service, store.uri(catalog.namespace))
    add = check.findings.append
    try:
        store.write_bytes(key, b"created", if_absent=True)
        create_refused = None
    except Unsupported as exc:  # If-None-Match refused outright (501): the plain write is still worth trying
        create_refused = Finding("If-None-Match", False, str(exc))
        store.write_bytes(key, b"created")
    add(Finding("write", True, "wrote a new object"))
    try:
        data, _ = store.read_bytes(key)
        add(Finding("read", True, "read it back") if data == b"created" else
              Finding("read", False, f"read back {len(data)} bytes that are not those just written"))
        listed = any(o.key == key for o in store.list(key))
        add(Finding("list", listed, "listed it" if listed else
                      "a listing did not show the object just written: list_storage_objects() and cleanup() would "
                      "miss what is stored (a listing that lags writes, or a key that may write but not list?)"))
        add(create_refused or _refused(
            "If-None-Match", lambda: store.write_bytes(key, b"overwritten", if_absent=True),
            "overwrote an existing object despite If-None-Match: *: of two first uploads of one name at once both "
            "report success and one is lost; use a store that honours it, or let one writer at a time upload a name"))
        add(_refused(
            "If-Match on writes", lambda: store.write_bytes(key, b"overwritten", if_match=_NO_SUCH_ETAG),
            "overwrote an object despite an If-Match that did not hold: of two re-uploads of one name at once both "
            "report success and one is lost; use a store that honours it, or let one writer at a time upload a name"))
        add(_refused(
            "If-Match on deletes", lambda: store.delete(key, if_match=_NO_SUCH_ETAG),
            "deleted an object despite an If-Match that did not hold (MinIO does): a delete racing an upload of the "
            "same name can remove that upload (its data stays until cleanup())", kept=lambda: store.head(key)))
    except StorageFailure as exc:  # what went wrong is the error to report, saying whether the probe is left
        try:
            store.delete(key)
        except Exception:
            raise _probe_left(exc, key) from None
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # cleanup() removes a probe left
            store.delete(key)
        raise
    if store.head(key) is None:  # a store that ignored the condition deleted it: make it again to try deleting
        store.write_bytes(key, b"created")
    try:
        store.delete(key)
    except StorageFailure as exc:
        raise _probe_left(exc, key) from None
    gone = store.head(key) is None
    add(Finding("delete", gone, "deleted it" if gone else
                  f"{key!r} is still there after a delete: delete() and cleanup() would leave data behind"))
    return check


def _probe_left(exc: StorageFailure, key: str) -> StorageFailure:
    return type(exc)(f"{exc}. The check's probe object {key!r} is left in the store: cleanup() with a key that may "
                     "delete removes it", exc.reason)


def _refused(feature: str, attempt: Callable[[], object], ignored: str,
             kept: Callable[[], object] | None = None) -> Finding:
    """Whether `attempt`, a request whose condition does not hold, was refused as it must be."""
    try:
        attempt()
    except PreconditionFailed:
        return Finding(feature, True, "honoured")
    except AccessDenied:  # the key's rights, not the store's features: the check fails saying so
        raise
    except StorageFailure as exc:  # refused the header itself (501 NotImplemented): every such call fails
        return Finding(feature, False, str(exc))
    if kept is not None and kept():
        return Finding(feature, False, "answered success to a delete whose condition did not hold, and kept the "
                       "object: fedml-storage would take a delete as done while the dataset is still listed")
    return Finding(feature, False, ignored)
