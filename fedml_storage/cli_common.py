"""What the `fedml-storage` commands share: options, the context object, and how results and failures are shown."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .cli_words import for_cli
from .client import StorageClient
from .config import SERVICES
from .response import FedMLResponse

EXIT_FAILURE, EXIT_RETRYABLE, EXIT_INTERRUPTED = 1, 75, 130  # 75: EX_TEMPFAIL (sysexits.h)


class Ctx:
    """Options every command shares."""

    def __init__(self, service: str | None, namespace: str | None, api_key: str | None, quiet: bool,
                 debug: bool) -> None:
        self.service, self.namespace, self.api_key = service, namespace, api_key
        self.quiet, self.debug = quiet, debug

    def client(self) -> StorageClient:
        # failures are printed as errors (`finish`): not also logged, which --debug would show
        return StorageClient(service=self.service, namespace=self.namespace, api_key=self.api_key, log_failures=False)

    def progress(self, quiet: bool = False) -> bool:
        """Whether to show progress bars: not with --quiet (before the command, or after it: `quiet`)."""
        return not (self.quiet or quiet) and sys.stderr.isatty()


def finish(response: FedMLResponse) -> Any:
    """Data on success; otherwise the message on stderr and exit code 1 (75 when trying again may help)."""
    if response.ok:
        return response.data
    click.echo(f"error: {for_cli(response.message)}", err=True)
    sys.exit(EXIT_RETRYABLE if response.retryable else EXIT_FAILURE)


def emit(data: Any) -> None:
    """`data` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def parse_service(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """LOCAL, S3 or R2 in any case ('' clears the saved one with configure): a usage error otherwise, exit 2."""
    if value is None or value.upper() in ("", *SERVICES):
        return value if value is None else value.upper()
    raise click.BadParameter(f"{value!r} is not one of {', '.join(SERVICES)}", param_hint="'--service'")


def key_values(values: tuple[str, ...], example: str) -> dict[str, str]:
    """KEY=VALUE options as a dict: a usage error for one without '=' or a key given twice."""
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value, e.g. {example}")
        if key.strip() in result:
            raise click.BadParameter(f"{key.strip()!r} is given twice; give each key once")
        result[key.strip()] = value  # as given: the API keeps a metadata value's spaces too
    return result


def parse_metadata(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str] | None:
    """--metadata key=value options as a dict (None when none is given)."""
    return key_values(values, "--metadata owner=vision") or None


QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar (also taken before the command).")
JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
