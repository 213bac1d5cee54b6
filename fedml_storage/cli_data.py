"""The `fedml-storage` commands that move, show and remove stored datasets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from prettytable import PrettyTable

from .cli_common import EXIT_FAILURE, JSON, QUIET, Ctx, emit, finish, parse_metadata
from .cli_words import for_cli, hint


@click.command()
@click.argument("path", type=click.Path())
@click.option("--name", help="Stored name (default: the file or directory name); a file keeps its extension "
              "(--name weights for model.pt stores weights.pt).")
@click.option("--description", help="What the dataset holds (kept on re-upload unless given).")
@click.option("--tag", "tags", multiple=True, help="A tag; repeat for more.")
@click.option("--metadata", "metadata", multiple=True, callback=parse_metadata, help="key=value; repeat for more.")
@click.option("--ignore", "ignore", multiple=True,
              help="Leave out what a .gitignore line would match (quote it: --ignore '*.pyc'); repeat for more.")
@JSON
@QUIET
@click.pass_obj
def upload(obj: Ctx, path: str, name: str | None, description: str | None, tags: tuple[str, ...],
           metadata: dict[str, str] | None, ignore: tuple[str, ...], as_json: bool, quiet: bool) -> None:
    """Upload a file or directory (unchanged content is not sent again)."""
    result = finish(obj.client().upload(path, name, description, metadata, list(tags) or None,
                                         show_progress=obj.progress(quiet), ignore_patterns=list(ignore) or None))
    emit(result.to_dict()) if as_json else click.echo(for_cli(result.summary()))


@click.command()
@click.argument("name")
@click.option("--dest", type=click.Path(file_okay=False), help="Folder to download into (default: here).")
@click.option("-y", "--yes", is_flag=True, help="Replace an existing DEST/NAME without asking.")
@click.option("--version", "version", help="An exact version (default: the current one).")
@JSON
@QUIET
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
    result = finish(response)
    emit(result.to_dict()) if as_json else click.echo(result.summary())


@click.command(name="list")
@click.option("--prefix", help="Only datasets whose name starts with this.")
@JSON
@click.pass_obj
def list_(obj: Ctx, prefix: str | None, as_json: bool) -> None:
    """List stored datasets."""
    response = obj.client().list(prefix=prefix)
    items = finish(response)
    if as_json:
        emit([m.to_dict() for m in items])
        return
    if not items:
        click.echo("no datasets stored" + (f" named {prefix}*" if prefix else "") + hint(response))
        return
    table = PrettyTable(["Name", "Size", "Files", "Description", "Tags", "Created", "Updated"], align="l")
    table.align["Size"] = table.align["Files"] = "r"
    table.max_width["Description"] = table.max_width["Tags"] = 40  # wrapped: a long one kept the table unreadable
    for m in items:
        table.add_row([m.dataName, m.size, m.file_count, m.description, ", ".join(m.tag_list), m.createdAt,
                       m.updatedAt])
    click.echo(table)


@click.command()
@click.argument("name")
@JSON
@click.pass_obj
def metadata(obj: Ctx, name: str, as_json: bool) -> None:
    """Show a dataset's stored metadata."""
    meta = finish(obj.client().get_metadata(name)).to_dict()
    if as_json:
        emit(meta)
        return
    table = PrettyTable(["Field", "Value"], align="l")
    for key in ("dataName", "description", "kind", "size", "size_bytes", "file_count", "tag_list", "version",
                "versions", "createdAt", "updatedAt", "sha256", "service", "namespace", "download_url",
                "user_metadata"):
        value = meta[key]
        table.add_row([key, ", ".join(value) if isinstance(value, list) else
                       json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value])
    click.echo(table)


@click.command(name="user-metadata")
@click.argument("name")
@JSON
@click.pass_obj
def user_metadata(obj: Ctx, name: str, as_json: bool) -> None:
    """Show the metadata given at upload."""
    meta = finish(obj.client().get_user_metadata(name))
    if as_json:
        emit(meta)
        return
    table = PrettyTable(["Key", "Value"], align="l")
    for key, value in meta.items():
        table.add_row([key, value])
    click.echo(table if meta else "no user-defined metadata")


@click.command()
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
    deleted = finish(response)
    if as_json:
        emit({"name": name, "deleted": deleted})
    else:
        click.echo(f"deleted {name!r}" if deleted else f"nothing to delete: {name!r} is not stored{hint(response)}")


@click.command()
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=3600, show_default=True,
              help="Grace period in seconds: longer than any upload running meanwhile (0 only when none runs).")
@JSON
@click.pass_obj
def cleanup(obj: Ctx, older_than: float, as_json: bool) -> None:
    """Remove what interrupted uploads left (never published data)."""
    response = obj.client().cleanup(older_than_seconds=older_than)
    counts = finish(response)
    if as_json:
        emit(counts)
    else:
        click.echo(for_cli(response.message))
    if counts["objects_not_removed"]:  # the core's warning said which
        sys.exit(EXIT_FAILURE)


COMMANDS = (upload, download, list_, metadata, user_metadata, delete, cleanup)
