"""The core's advice on what to do, in Python's terms, and its rewording for settings kept in an Airflow
connection or a Prefect block (the command line keeps its own table, in cli_words)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .api_keys import looks_like_key

NO_CREDENTIALS = "run fedml_login('ACCESS_KEY_ID:SECRET_ACCESS_KEY'), pass api_key=... or set FEDML_STORAGE_API_KEY"
NO_BUCKET = ("set FEDML_STORAGE_BUCKET, run fedml_storage.api.configure(bucket=...) or pass bucket= to StorageClient "
             "(or service='LOCAL' for the embedded store)")
PICK_SERVICE = "pass service='R2' or 'S3', or make one the default (configure(service=...))"
LISTING = "list_storage_objects() shows what is stored"
# only the API's upload and download name a service by default (the documented R2)
R2_BY_DEFAULT = (" Upload and download default to service='R2', as documented: for your configured default service "
                 "pass service=None, or name it, e.g. service='S3'")


def kept_in(listing: str, settings_place: str | None = None, key_place: str | None = None, *,
            delete: str | None = None, cleanup: str | None = None) -> dict[str, str]:
    """The advice for a framework whose `listing` (a task, an operator) shows what is stored and, when its settings
    are kept in `settings_place` (its API key in `key_place`), for setting them there. `delete` and `cleanup` call
    what removes a dataset ("delete_data(", followed by the name) and leftovers ("....cleanup(", with no space before
    "cleanup": a message reworded twice then stays as it is) there."""
    advice = {LISTING: f"{listing} shows what is stored", R2_BY_DEFAULT: ""}
    if delete is not None:  # the core's advice names a dataset as delete('name') (or delete("it's"))
        advice |= {"delete('": f"{delete}'", 'delete("': f'{delete}"'}
    if cleanup is not None:  # (after a space: the framework's words do not hold the core's phrase again)
        advice[" cleanup("] = f" {cleanup}("
    if settings_place is not None and key_place is not None:
        advice |= {NO_CREDENTIALS: f"set {key_place} to ACCESS_KEY_ID:SECRET_ACCESS_KEY",
                   NO_BUCKET: f"set bucket in {settings_place} (or service LOCAL for the embedded store)",
                   PICK_SERVICE: f"set service to R2 or S3 in {settings_place}"}
    return advice


def worker_local(missing: str, remedy: str) -> str | None:
    """Why a pipeline step given no store of its own (`missing`: no connection, no block) warns, unless this machine
    configures fedml-storage itself: its datasets go to the LOCAL store on the worker's disk. None when configured."""
    from .config import config_path, configured_here  # (config imports the advice of its own messages)

    if configured_here():
        return None
    return (f"{missing} and no fedml-storage configuration on this worker (FEDML_STORAGE_* variables or "
            f"{config_path()}): datasets go to the embedded LOCAL store on this worker's disk, which tasks on other "
            f"workers do not see. {remedy} for a shared store, or set FEDML_STORAGE_SERVICE=LOCAL on the worker to "
            "keep them there")


def needs_dest_path(who: str, worker: str, holds: str) -> str:
    """Why `who`, a pipeline's download step, refuses to run without a dest_path: on an unattended `worker` the
    working directory (the API's default) `holds` things a dataset of the same name would replace as a whole."""
    return (f"{who} needs dest_path=: a folder on the {worker} to download into. Its working directory, the API's "
            f"default, {holds}: a dataset named like something there would replace it as a whole")


def unattended_dest(dest_path: Any, who: str, worker: str, holds: str, if_none: str = "") -> str | None:
    """Why `who` refuses `dest_path` on an unattended `worker` (none, blank, not a path, or relative: in the working
    directory, which `holds` things), or None for an absolute path ('~user/...' counts: the core expands it).
    `if_none` is added to the reason when there is none (why that may be)."""
    if dest_path is None or (isinstance(dest_path, (str, os.PathLike)) and not str(dest_path).strip()):
        return needs_dest_path(who, worker, holds) + if_none
    if looks_like_key(dest_path):
        return ("dest_path is shaped like an access key pair (KEY_ID:SECRET), so it is refused and not shown: pass "
                "the folder to download into; a key goes in the connection or block")
    if not isinstance(dest_path, (str, os.PathLike)):
        return f"dest_path must be a folder path, not {type(dest_path).__name__}"
    if _relative(str(dest_path)):
        return (f"dest_path {str(dest_path)!r} is relative: on a {worker} it names a folder in the working directory, "
                f"which {holds}: a dataset named like something there would replace it; give an absolute path")
    return None


def relative_paths(settings: Mapping[str, Any], where: str, worker: str) -> str | None:
    """Why path settings kept in `where` (a connection's extra, a block's fields) are refused on an unattended
    `worker`: a relative one names a folder in each run's working directory. None when every one is absolute."""
    relative = [key for key in ("local_root", "partial_dir", "ca_bundle")  # as the settings take them: stripped
                if isinstance(value := settings.get(key), (str, os.PathLike)) and _relative(str(value).strip())]
    if not relative:
        return None
    return (f"{' and '.join(relative)} in {where} {'is' if len(relative) == 1 else 'are'} relative: on a {worker} "
            "that names a folder in each run's working directory, which differs between runs and machines; give an "
            "absolute path")


def _relative(path: str) -> bool:
    """Whether a path names a place in the working directory ('~user/...' does not: the core expands it)."""
    return bool(path) and not path.startswith("~") and not os.path.isabs(path)


def reword(message: str, advice: Mapping[str, str]) -> str:
    """`message` with the advice it holds in the words of `advice` (the core's phrase to another)."""
    for python, theirs in advice.items():
        message = message.replace(python, theirs)
    return message
