"""`fedml-storage`: the Storage API at a terminal. Exit codes: 0 success, 1 failure, 75 a failure that may pass on
retry (EX_TEMPFAIL), 2 usage errors, 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import traceback
from typing import Any

import click
from prettytable import PrettyTable

from . import __version__, api
from .cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, JSON, Ctx, emit, finish, key_values, parse_service
from .cli_data import COMMANDS
from .cli_words import for_cli
from .config import config_path, is_unset, unknown_settings
from .config_file import overridden_note
from .errors import redact
from .response import FedMLResponse


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--service", callback=parse_service, metavar="[LOCAL|S3|R2]",
              help="Storage service (default: the configured one, LOCAL out of the box; '' with configure clears it).")
@click.option("--namespace", help="Key prefix inside the bucket (default: configured, or 'default').")
@click.option("--api-key", envvar="FEDML_STORAGE_API_KEY", show_envvar=True,
              help="ACCESS_KEY_ID:SECRET_ACCESS_KEY (prefer `login` or the environment variable).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--debug", is_flag=True,
              help="Show tracebacks of unexpected errors, and fedml-storage's own debug messages (not each request).")
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
    finish(response)
    click.echo(response.message)


def _count_or_clear(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """A whole number >= 1, or '' (clears the saved one)."""
    return value if value in (None, "") else click.IntRange(min=1)(value, param, ctx)


def _other_settings(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """--set KEY=VALUE options (part-size and part_size alike); the API key is only taken by `login`."""
    given = {key.replace("-", "_"): value for key, value in key_values(values, "--set concurrency=16").items()}
    if "api_key" in given:  # a command line is kept in shell history and shown to other users by ps
        raise click.BadParameter("the API key is saved by `fedml-storage login`, which asks for it hidden")
    if problem := unknown_settings(given):
        raise click.BadParameter(problem)
    return given


@cli.command()
@click.option("--bucket", help="Bucket for S3 and R2.")
@click.option("--endpoint-url", help="S3 API address of an S3-compatible store (MinIO, Ceph) or of R2.")
@click.option("--region", help="S3 region.")
@click.option("--r2-account-id", help="Cloudflare account id: R2's endpoint is made from it.")
@click.option("--local-root", type=click.Path(file_okay=False), help="Folder of the LOCAL store.")
@click.option("--ca-bundle", type=click.Path(dir_okay=False), help="PEM file of a private CA that signs the endpoint.")
@click.option("--keep-versions", callback=_count_or_clear, metavar="N",
              help="Versions of each dataset kept downloadable (default 1: the current one).")
@click.option("--set", "others", multiple=True, callback=_other_settings, metavar="KEY=VALUE",
              help="Any other setting by its name, e.g. --set concurrency=16 (the keys: `configure --json`); repeat "
              "for more.")
@click.option("--json", "as_json", is_flag=True, help="Print settings as JSON.")
@click.pass_obj
def configure(obj: Ctx, as_json: bool, others: dict[str, str], **fields: Any) -> None:
    """Save default settings (with --service/--namespace too; '' clears one); with no option, show the current
    ones."""
    named = {k: v for k, v in {**fields, "service": obj.service, "namespace": obj.namespace}.items() if v is not None}
    if twice := sorted(set(named) & set(others)):
        raise click.UsageError(f"{', '.join(twice)} given both as an option and with --set; give each once")
    updates = {**named, **others}
    if updates:
        finish(api.configure(**updates))
        if not as_json:
            cleared = sorted(k for k, v in updates.items() if is_unset(v))
            saved = sorted(set(updates) - set(cleared))
            done = " and ".join(f"{verb} {', '.join(keys)}" for verb, keys in (("saved", saved), ("cleared", cleared))
                                if keys)
            click.echo(f"{done} in {config_path()}{overridden_note(updates)}")
        if note := api.unused_bucket_note():
            click.echo(f"warning: {for_cli(note).removeprefix('; ')}", err=True)
    settings = finish(_settings(obj))
    if as_json:
        emit(settings)
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
@JSON
@click.pass_obj
def check(obj: Ctx, as_json: bool) -> None:
    """Check that the store does what fedml-storage needs (conditional requests honoured), on a probe object."""
    response = obj.client().check()
    found = response.data
    if found is None:  # could not even write the probe: the error says why
        finish(response)
        return
    if as_json:
        emit(found.to_dict())
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


for _command in COMMANDS:
    cli.add_command(_command)


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
    except click.exceptions.ClickException as exc:  # usage errors, which quote what was given: a key, mistyped
        shown = io.StringIO()
        exc.show(file=shown)
        click.echo(redact(shown.getvalue(), _key_arguments(sys.argv)), err=True, nl=False)
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
    """What may be (part of) an API key on the command line, to mask in error output: --api-key's value, login's
    argument, and the words after it that a key typed with spaces for its ':'s spills into: its secret, whatever
    its form (a MinIO one may be short), and a session token, which is long."""
    keys = []
    for i, arg in enumerate(argv):
        if arg.startswith("--api-key="):
            value, after = [arg.partition("=")[2]], argv[i + 1:]
        elif arg in ("--api-key", "login"):
            value, after = argv[i + 1:i + 2], argv[i + 2:]
        else:
            continue
        keys += value
        part = value[0].count(":") + 1 if value else 3  # the part of ID:SECRET:TOKEN the next word would be
        for word in after[:max(0, 3 - part)]:
            if word.startswith("-") or word in cli.commands or not (part == 1 or _TOKEN.fullmatch(word)):
                break
            keys.append(word)
            part += 1
    return [key for key in keys if key not in cli.commands]


_TOKEN = re.compile(r":?[A-Za-z0-9/+=]{16,}")  # a session token (a command or a name seldom looks like one)


class _Lowercase(logging.Formatter):
    """`warning: ...`, like the `error: ...` lines, with advice in the command line's words."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {for_cli(record.getMessage())}"
