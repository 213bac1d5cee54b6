"""`fedml-storage`: the Storage API at a terminal. Exit codes: 0 success, 1 failure, 75 a failure that may pass on
retry (EX_TEMPFAIL), 2 usage errors, 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click
from prettytable import PrettyTable

from . import __version__, api
from .cli_words import for_cli as _for_cli
from .cli_words import hint as _hint
from .client import StorageClient
from .config import SERVICES, config_path
from .config_file import overridden_note
from .response import FedMLResponse
from .errors import redact


class Ctx:
    """Options every command shares."""

    def __init__(self, service: str | None, namespace: str | None, api_key: str | None, quiet: bool,
                 debug: bool) -> None:
        self.service, self.namespace, self.api_key = service, namespace, api_key
        self.quiet, self.debug = quiet, debug

    def client(self) -> StorageClient:
        # failures are printed as errors (`_finish`): not also logged, which --debug would show
        return StorageClient(service=self.service, namespace=self.namespace, api_key=self.api_key, log_failures=False)

    def progress(self, quiet: bool = False) -> bool:
        """Whether to show progress bars: not with --quiet (before the command, or after it: `quiet`)."""
        return not (self.quiet or quiet) and sys.stderr.isatty()


EXIT_FAILURE, EXIT_RETRYABLE, EXIT_INTERRUPTED = 1, 75, 130  # 75: EX_TEMPFAIL (sysexits.h)


def _finish(response: FedMLResponse) -> Any:
    """Data on success; otherwise the message on stderr and exit code 1 (75 when trying again may help)."""
    if response.ok:
        return response.data
    click.echo(f"error: {_for_cli(response.message)}", err=True)
    sys.exit(EXIT_RETRYABLE if response.retryable else EXIT_FAILURE)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _service(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """LOCAL, S3 or R2 in any case ('' clears the saved one with configure): a usage error otherwise, exit 2."""
    if value is None or value.upper() in ("", *SERVICES):
        return value if value is None else value.upper()
    raise click.BadParameter(f"{value!r} is not one of {', '.join(SERVICES)}", param_hint="'--service'")


def _parse_metadata(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str] | None:
    if not values:
        return None
    result: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value, e.g. --metadata owner=vision")
        if key.strip() in result:
            raise click.BadParameter(f"{key.strip()!r} is given twice; give each key once")
        result[key.strip()] = value  # as given: the API keeps a value's spaces too
    return result


_QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bar (also taken before the command).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--service", callback=_service, metavar="[LOCAL|S3|R2]",
              help="Storage service (default: the configured one, LOCAL out of the box; '' with configure clears it).")
@click.option("--namespace", help="Key prefix inside the bucket (default: configured, or 'default').")
@click.option("--api-key", envvar="FEDML_STORAGE_API_KEY", show_envvar=True,
              help="ACCESS_KEY_ID:SECRET_ACCESS_KEY (prefer `login` or the environment variable).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks of unexpected errors, and the debug log.")
@click.version_option(__version__, prog_name="fedml-storage")
@click.pass_context
def cli(ctx: click.Context, service: str | None, namespace: str | None, api_key: str | None, quiet: bool,
        debug: bool) -> None:
    """Keep named datasets (files or directories) in S3, R2 or the embedded LOCAL store."""
    ctx.obj = Ctx(service, namespace, api_key, quiet, debug)


@cli.command()
@click.argument("api_key", required=False)
@click.pass_obj
def login(obj: Ctx, api_key: str | None) -> None:
    """Save the storage API key (or --api-key's; asks for it, hidden, when none is given; reads a line when piped
    in). With --service, that service becomes the default too."""
    given = click.get_current_context().find_root().get_parameter_source("api_key")
    api_key = api_key or (obj.api_key if given == click.core.ParameterSource.COMMANDLINE else None)
    if api_key is None and not sys.stdin.isatty():  # piped: getpass would warn that it may echo
        click.echo("API key (ACCESS_KEY_ID:SECRET_ACCESS_KEY): ", err=True, nl=False)
        api_key = sys.stdin.readline().strip()
        if not api_key:
            raise click.UsageError("no API key on standard input")
    if api_key is None:
        api_key = click.prompt("API key (ACCESS_KEY_ID:SECRET_ACCESS_KEY)", hide_input=True)
    response = api.fedml_login(api_key, service=obj.service)
    _finish(response)
    click.echo(response.message)


@cli.command()
@click.option("--bucket", help="Bucket for S3 and R2.")
@click.option("--endpoint-url", help="S3 API address of an S3-compatible store (MinIO, Ceph) or of R2.")
@click.option("--region", help="S3 region.")
@click.option("--r2-account-id", help="Cloudflare account id: R2's endpoint is made from it.")
@click.option("--local-root", type=click.Path(file_okay=False), help="Folder of the LOCAL store.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="PEM file of a private CA that signs the endpoint.")
@click.option("--keep-versions", type=click.IntRange(min=1),
              help="Versions of each dataset kept downloadable (default 1: the current one).")
@click.option("--json", "as_json", is_flag=True, help="Print settings as JSON.")
@click.pass_obj
def configure(obj: Ctx, as_json: bool, **fields: Any) -> None:
    """Save default settings (with --service/--namespace too; '' clears one); with no option, show the current
    ones."""
    updates = {k: v for k, v in {**fields, "service": obj.service, "namespace": obj.namespace}.items() if v is not None}
    if updates:
        _finish(api.configure(**updates))
        if not as_json:
            cleared = sorted(k for k, v in updates.items() if v == "")
            saved = sorted(set(updates) - set(cleared))
            done = " and ".join(f"{verb} {', '.join(keys)}" for verb, keys in (("saved", saved), ("cleared", cleared))
                                if keys)
            click.echo(f"{done} in {config_path()}{overridden_note(updates)}")
        if note := api.unused_bucket_note():
            click.echo(f"warning: {_for_cli(note).removeprefix('; ')}", err=True)
    settings = _finish(_settings(obj))
    if as_json:
        _emit(settings)
        return
    table = PrettyTable(["Setting", "Value"], align="l")
    for key, value in settings.items():
        table.add_row([key, "" if value is None else value])
    click.echo(table)


def _settings(obj: Ctx) -> FedMLResponse:
    client = obj.client()
    try:
        return FedMLResponse(api.ResponseCode.SUCCESS, "settings", client.settings.masked_dict())
    except api.FedMLStorageError as exc:
        return exc.response


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--name", help="Stored name (default: the file or directory name); a file keeps its extension "
              "(--name weights for model.pt stores weights.pt).")
@click.option("--description", help="What the dataset holds (kept on re-upload unless given).")
@click.option("--tag", "tags", multiple=True, help="A tag; repeat for more.")
@click.option("--metadata", "metadata", multiple=True, callback=_parse_metadata, help="key=value; repeat for more.")
@click.option("--ignore", "ignore", multiple=True,
              help="Leave out what a .gitignore line would match (quote it: --ignore '*.pyc'); repeat for more.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_QUIET
@click.pass_obj
def upload(obj: Ctx, path: str, name: str | None, description: str | None, tags: tuple[str, ...],
           metadata: dict[str, str] | None, ignore: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Upload a file or directory (unchanged content is not sent again)."""
    result = _finish(obj.client().upload(path, name, description, metadata, list(tags) or None,
                                         show_progress=obj.progress(quiet), ignore_patterns=list(ignore) or None))
    _emit(result.to_dict()) if as_json else click.echo(_for_cli(result.summary()))


@cli.command()
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), help="Folder to download into (default: here).")
@click.option("-y", "--yes", is_flag=True, help="Replace an existing DEST/NAME without asking.")
@click.option("--version", "version", help="An exact version (default: the current one).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_QUIET
@click.pass_obj
def download(obj: Ctx, name: str, dest: str | None, version: str | None, yes: bool, as_json: bool,
             quiet: bool) -> None:
    """Download a dataset, verified, into DEST/NAME. An existing DEST/NAME that is not already that version is
    replaced as a whole (what it holds that the dataset does not is removed), after asking at a terminal unless
    --yes."""
    asking = not yes and sys.stdin.isatty() and sys.stderr.isatty()  # someone there to answer, who sees it
    declined: list[bool] = []
    stopped: list[click.exceptions.Abort] = []  # Ctrl-C or EOF at the prompt, for main() to report once

    def confirm(target: Path) -> bool:  # asked only once the dataset is found and the copy there differs
        try:
            declined.append(not click.confirm(
                f"{target} exists: replace it as a whole with the stored {name!r} (what it holds that the dataset "
                "does not is removed)?", default=False, err=True))
        except click.exceptions.Abort as exc:
            stopped.append(exc)
            return False
        return not declined[-1]

    response = obj.client().download(name, dest, version=version,
                                     show_progress=obj.progress(quiet), confirm_replace=confirm if asking else None)
    if stopped:
        raise stopped[0]
    if any(declined):
        click.echo("aborted: nothing downloaded", err=True)
        sys.exit(EXIT_FAILURE)
    result = _finish(response)
    _emit(result.to_dict()) if as_json else click.echo(result.summary())


@cli.command(name="list")
@click.option("--prefix", help="Only datasets whose name starts with this.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def list_(obj: Ctx, prefix: str | None, as_json: bool) -> None:
    """List stored datasets."""
    response = obj.client().list(prefix=prefix)
    items = _finish(response)
    if as_json:
        _emit([m.to_dict() for m in items])
        return
    if not items:
        click.echo("no datasets stored" + (f" named {prefix}*" if prefix else "") + _hint(response))
        return
    table = PrettyTable(["Name", "Size", "Files", "Description", "Tags", "Created", "Updated"], align="l")
    table.align["Size"] = table.align["Files"] = "r"
    table.max_width["Description"] = table.max_width["Tags"] = 40  # wrapped: a long one kept the table unreadable
    for m in items:
        table.add_row([m.dataName, m.size, m.file_count, m.description, ", ".join(m.tag_list), m.createdAt,
                       m.updatedAt])
    click.echo(table)


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def metadata(obj: Ctx, name: str, as_json: bool) -> None:
    """Show a dataset's stored metadata."""
    meta = _finish(obj.client().get_metadata(name)).to_dict()
    if as_json:
        _emit(meta)
        return
    table = PrettyTable(["Field", "Value"], align="l")
    for key in ("dataName", "description", "kind", "size", "size_bytes", "file_count", "tag_list", "version",
                "versions", "createdAt", "updatedAt", "sha256", "service", "namespace", "download_url",
                "user_metadata"):
        value = meta[key]
        table.add_row([key, ", ".join(value) if isinstance(value, list) else
                       json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value])
    click.echo(table)


@cli.command(name="user-metadata")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def user_metadata(obj: Ctx, name: str, as_json: bool) -> None:
    """Show the metadata given at upload."""
    meta = _finish(obj.client().get_user_metadata(name))
    if as_json:
        _emit(meta)
        return
    table = PrettyTable(["Key", "Value"], align="l")
    for key, value in meta.items():
        table.add_row([key, value])
    click.echo(table if meta else "no user-defined metadata")


@cli.command()
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--missing-ok", is_flag=True, help="Succeed when the name is not stored (nothing to delete).")
@click.option("--json", "as_json", is_flag=True, help='Print {"name": ..., "deleted": true|false}.')
@click.pass_obj
def delete(obj: Ctx, name: str, yes: bool, missing_ok: bool, as_json: bool) -> None:
    """Delete a dataset (asks first unless --yes)."""
    try:
        if not yes and not click.confirm(f"Delete {name!r} and all its kept versions?", default=False, err=True):
            click.echo("aborted: nothing deleted", err=True)
            sys.exit(1)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):
            raise
        click.echo("aborted: nothing deleted (no answer came; pass --yes to delete without asking)", err=True)
        sys.exit(1)
    response = obj.client().delete(name, missing_ok=missing_ok)
    if response.reason == "not_found":  # a second run of a clean-up job
        response.message += " (--missing-ok: succeed when it is not stored)"
    deleted = _finish(response)
    if as_json:
        _emit({"name": name, "deleted": deleted})
    else:
        click.echo(f"deleted {name!r}" if deleted else f"nothing to delete: {name!r} is not stored{_hint(response)}")


@cli.command()
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Grace period in seconds: longer than any upload running meanwhile (0 only when none runs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def cleanup(obj: Ctx, older_than: float, as_json: bool) -> None:
    """Remove what interrupted uploads left (never published data)."""
    response = obj.client().cleanup(older_than_seconds=older_than)
    counts = _finish(response)
    if as_json:
        _emit(counts)
    else:
        click.echo(response.message)
    if counts["objects_not_removed"]:  # the core's warning said which
        sys.exit(EXIT_FAILURE)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def check(obj: Ctx, as_json: bool) -> None:
    """Check that the store does what fedml-storage needs (conditional requests honoured), on a probe object."""
    response = obj.client().check()
    found = response.data
    if found is None:  # could not even write the probe: the error says why
        _finish(response)
        return
    if as_json:
        _emit(found.to_dict())
    else:
        table = PrettyTable(["Check", "Result", "Detail"], align="l")
        table.max_width["Detail"] = 80
        for f in found.findings:
            table.add_row([f.feature, "ok" if f.ok else "FAILED", f.detail])
        click.echo(f"{found.service} store at {found.location}")
        click.echo(table)
    if not found.ok:
        click.echo("error: this store lacks what fedml-storage needs (see FAILED above)", err=True)
        sys.exit(EXIT_FAILURE)


def main() -> None:
    """Console entry point."""
    debug = "--debug" in sys.argv
    handler = logging.StreamHandler(sys.stderr)  # the core's warnings (a mistyped variable, an open config file)
    handler.setFormatter(_Lowercase())
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("fedml_storage").addHandler(handler)
    if debug:  # the core logs an unexpected error's traceback (secrets masked) at DEBUG
        logging.getLogger("fedml_storage").setLevel(logging.DEBUG)
    try:
        code = cli.main(prog_name="fedml-storage", standalone_mode=False)
    except click.exceptions.Abort as exc:  # Ctrl-C (click turns it into Abort), or EOF at a prompt
        interrupted = isinstance(exc.__context__, KeyboardInterrupt)  # click may raise Abort() from None
        click.echo("interrupted" if interrupted else "aborted", err=True)
        sys.exit(EXIT_INTERRUPTED if interrupted else EXIT_FAILURE)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.ClickException as exc:  # usage errors
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # unexpected: the core reports failures, so this is a bug
        secrets = [os.environ.get("FEDML_STORAGE_API_KEY"), *_key_arguments(sys.argv)]
        if debug:
            click.echo(redact("".join(traceback.format_exception(exc)), secrets), err=True)
        click.echo(redact(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for details)", secrets),
                   err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _key_arguments(argv: list[str]) -> list[str]:
    """The API keys given on the command line (--api-key's value, login's argument): to mask in error output."""
    keys = []
    for i, arg in enumerate(argv):
        if arg.startswith("--api-key="):
            keys.append(arg.partition("=")[2])
        elif arg in ("--api-key", "login") and i + 1 < len(argv):
            keys.append(argv[i + 1])
    return keys


class _Lowercase(logging.Formatter):
    """`warning: ...`, like the `error: ...` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"
