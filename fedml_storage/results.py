"""What the API returns: upload and download results (strings with details) and stored metadata."""

from __future__ import annotations

import inspect
import unicodedata
from dataclasses import asdict, dataclass, field
from collections.abc import Callable
from typing import Any, NamedTuple, Self
from urllib.parse import quote


def human_size(num: int) -> str:
    """Sizes as the reference shows them: '12.40 MB'."""
    value = float(num)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.2f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.2f} PB"


_PATH_SAFE = "-._~!$()*+,;=:@"  # what a URI path segment may hold as it is, less what Prefect refuses ('&', "'")


def asset_uri(namespace: str, name: str, *, iri: bool = False) -> str:
    """The lineage URI of a dataset: fedml://<namespace>/<name>, percent-encoded where needed (Airflow wants ASCII).

    `iri=True` leaves non-ASCII characters as they are, except spaces and invisible ones: Prefect refuses '%' in
    asset keys. The two forms are equal for ASCII names.
    """
    if iri:
        return f"fedml://{namespace}/" + "".join(
            ch if ord(ch) > 127 and unicodedata.category(ch)[0] not in "ZC" else quote(ch, safe=_PATH_SAFE)
            for ch in name
        )
    return f"fedml://{namespace}/{quote(name, safe=_PATH_SAFE)}"


def listed_line(names: list[str], prefix: str | None = None) -> str:
    """One log line for a listing: how many datasets (with names starting `prefix`), and the first 20 names."""
    line = f"listed {len(names)} dataset(s)" + (f" starting {prefix!r}" if prefix else "")
    return line + (f": {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}" if names else "")


class Readiness(NamedTuple):
    """Whether a dataset is ready for a downstream step, and a line saying why (not)."""

    ready: bool
    detail: str
    version: str | None = None  # the version a download would get now (the one asked for, when given)
    sha256: str | None = None


class _Detailed(str):
    """A str (the documented return value) that also carries details as attributes."""

    _fields: tuple[str, ...] = ()  # the annotated attributes of a subclass, in order

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._fields = tuple(inspect.get_annotations(cls))

    def __new__(cls, value: str, **details: Any) -> Self:
        obj = super().__new__(cls, value)
        for key in cls._fields:
            setattr(obj, key, details.get(key))
        return obj

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable details."""
        return {key: getattr(self, key) for key in self._fields}

    def __reduce__(self) -> tuple[Callable[..., _Detailed], tuple[type, str, dict[str, Any]]]:
        return (_rebuild, (type(self), str(self), self.to_dict()))


def _rebuild(cls: type[_Detailed], value: str, details: dict[str, Any]) -> _Detailed:
    return cls(value, **details)


class UploadResult(_Detailed):
    """The stored object's URI, with name, version, digests, sizes, whether its data was skipped as unchanged, and
    which catalog fields such an upload updated (`updated`: description, tags, metadata)."""

    name: str
    uri: str
    version: str
    sha256: str
    content_digest: str
    size: int  # bytes stored
    source_size: int  # the source's bytes (a folder's files)
    file_count: int
    kind: str  # "file" or "directory"
    skipped: bool  # data unchanged: none sent
    seconds: float
    service: str
    namespace: str
    left_out: list[str]
    ignored: int  # items left out by ignore_patterns
    updated: list[str]  # catalog fields a skipped upload wrote over

    def summary(self) -> str:
        """One log line."""
        if self.skipped:
            line = (f"skipped upload of {self.name!r}: data unchanged, none sent (version {self.version}, "
                    f"{human_size(self.size)} at {self.uri})")
            if self.updated:  # only the catalog entry was written
                line += f"; updated its {' and '.join(self.updated)}"
        else:
            rate = human_size(int(self.size / self.seconds)) + "/s" if self.seconds else "at once"
            what = human_size(self.size)  # what was stored
            if self.kind == "directory" and self.source_size is not None:  # the files' bytes: what its bar counts
                what = f"{self.file_count} file(s), {human_size(self.source_size)}, as a {what} zip"
            line = (f"uploaded {self.name!r} ({what} in {self.seconds:.2f} s, {rate}, version {self.version}) to "
                    f"{self.uri}")
        if self.left_out:
            shown = ", ".join(self.left_out[:5]) + (", ..." if len(self.left_out) > 5 else "")
            line += (f"; left out {len(self.left_out)} that are not data (FIFOs, sockets, devices, fedml-storage's own "
                     f"folder) or link to a folder it already holds: {shown}")
        if self.ignored:
            line += f"; left out {self.ignored} item(s) by ignore_patterns"
        return line


class DownloadResult(_Detailed):
    """The absolute local path, with name, the stored data's URI, version, digest, size, time, and whether the path
    held that version already (`skipped`: nothing was fetched)."""

    name: str
    path: str
    uri: str  # the stored data's
    version: str
    sha256: str
    size: int
    seconds: float
    kind: str
    replaced: bool  # the path held something else, now replaced
    skipped: bool  # the path held that version already: nothing fetched

    def summary(self) -> str:
        """One log line."""
        if self.skipped:
            return (f"kept {self.path} as it is: it holds {self.name!r} version {self.version} already (its "
                    f"digests match), nothing fetched from {self.uri}")
        return (f"downloaded {self.name!r} (version {self.version}, {human_size(self.size)} in "
                f"{self.seconds:.2f} s, sha256 verified) from {self.uri} to {self.path}"
                + (", replacing what was there" if self.replaced else ""))


@dataclass
class StorageMetadata:
    """Stored metadata of one dataset, with the documented camelCase attributes."""

    dataName: str
    description: str
    createdAt: str
    updatedAt: str
    size: str
    tag_list: list[str]
    download_url: str
    size_bytes: int
    sha256: str
    content_digest: str
    kind: str
    file_count: int
    source_size: int
    version: str
    versions: list[str]
    service: str
    namespace: str
    uri: str
    user_metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return asdict(self)
