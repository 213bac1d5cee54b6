"""The core's messages in the command line's words: its advice names Python calls and arguments."""

from __future__ import annotations

from .advice import R2_BY_DEFAULT, reword
from .client import SERVICE_HINT
from .response import FedMLResponse

# The core's advice names Python calls; on the command line, the commands that do the same.
CLI_ADVICE = {
    R2_BY_DEFAULT: "",  # the command line has no default service of its own
    "list_storage_objects() shows what is stored": "`fedml-storage list` shows what is stored",
    "fedml_storage.api.configure(bucket=...)": "`fedml-storage configure --bucket ...`",
    "run fedml_login('ACCESS_KEY_ID:SECRET_ACCESS_KEY')": "run `fedml-storage login`",
    "pass api_key=...": "pass --api-key",
    "pass bucket= to StorageClient (or service='LOCAL' for the embedded store)": "pass --service LOCAL for the "
    "embedded store",
    "calls without service=": "commands without --service",
    "pass service='R2' or 'S3', or make one the default (configure(service=...))":
        "pass --service R2 or S3, or make one the default (`fedml-storage --service S3 configure`)",
    "raise keep_versions to keep more":
        "raise keep_versions to keep more (`fedml-storage configure --keep-versions N`)",
    "pass the `version` an upload returned or get_storage_metadata shows":
        "pass the --version an upload printed or `fedml-storage metadata NAME` shows",
    "cleanup(older_than_seconds=0) removes them": "`fedml-storage cleanup --older-than 0` removes them",
    # whole phrases of advice only: a dataset's name or a path may hold the bare words
    "with ignore_patterns": "with --ignore",
    "by ignore_patterns": "by --ignore",
    "failed: ignore_patterns le": "failed: --ignore patterns le",
    "the file given as data_path:": "the file given as PATH:",
    "failed: data_path '": "failed: PATH '",
    "failed: dest_path '": "failed: --dest '",
    "download into another dest_path": "download into another --dest",
    "choose another dest_path": "choose another --dest",
}


def for_cli(message: str) -> str:
    """The message with its advice in the command line's words."""
    return reword(message, CLI_ADVICE)


def hint(response: FedMLResponse) -> str:
    """'; ...' why a success found nothing (a bucket configured beside the default LOCAL service), in CLI words.
    Found by its opening words: a name in the message may hold ';'."""
    at = response.message.find(SERVICE_HINT)
    return for_cli(response.message[at:]) if at >= 0 else ""
