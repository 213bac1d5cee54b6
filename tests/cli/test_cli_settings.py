"""The CLI's settings commands as a newcomer meets them (helper-94): a key given the usual ways, a ca_bundle that
names no file, refused when it is saved rather than by every later command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_API_KEY

from .test_cli import run


def test_login_takes_the_key_given_as_api_key(isolated_home: Path) -> None:
    given = run("--api-key", TEST_API_KEY, "login")
    assert given.returncode == 0 and "API key saved" in given.stdout, given.stderr
    assert json.loads((isolated_home / "config.json").read_text())["api_key"] == TEST_API_KEY
    assert TEST_API_KEY.split(":")[1] not in given.stdout + given.stderr
    other = "AKIAOTHERKEYID000000:other-secret-for-the-login-test"  # one set in the environment is not saved unasked
    typed = run("login", env={"FEDML_STORAGE_API_KEY": other}, stdin=TEST_API_KEY + "\n")
    assert typed.returncode == 0 and json.loads((isolated_home / "config.json").read_text())["api_key"] == TEST_API_KEY


def test_a_ca_bundle_that_names_no_file_is_refused_when_configured(isolated_home: Path) -> None:
    refused = run("configure", "--ca-bundle", str(isolated_home / "missing.pem"))
    assert refused.returncode == 1 and "is not a file" in refused.stderr, refused
    assert not (isolated_home / "config.json").exists()  # nothing saved: later commands still work
    assert run("list").returncode == 0


def test_importing_the_api_leaves_botocore_for_the_first_remote_call() -> None:
    """botocore takes a tenth of a second or more to import: the CLI's start and LOCAL-only users need none."""
    probe = subprocess.run([sys.executable, "-c", "import sys, fedml_storage.api, fedml_storage.cli; "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3')))"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_configure_sets_any_setting_and_clears_a_number(isolated_home: Path) -> None:
    """Transfer tuning had no option (only the environment); `--keep-versions ''` was refused as not a number."""
    config = isolated_home / "config.json"
    saved = run("configure", "--set", "concurrency=16", "--set", "part-size=33554432", "--keep-versions", "3")
    assert saved.returncode == 0, saved.stderr
    assert "saved concurrency, keep_versions, part_size in" in saved.stdout
    assert json.loads(config.read_text()) == {"concurrency": 16, "keep_versions": 3, "part_size": 33554432}
    shown = json.loads(run("configure", "--json").stdout)
    assert (shown["concurrency"], shown["keep_versions"], shown["part_size"]) == (16, 3, 33554432)

    cleared = run("configure", "--keep-versions", "", "--set", "concurrency= ")  # blank: unset, as everywhere
    assert cleared.returncode == 0 and "cleared concurrency, keep_versions in" in cleared.stdout, cleared.stderr
    assert json.loads(config.read_text()) == {"part_size": 33554432}


def test_configure_refuses_bad_settings_and_saves_none_of_them(isolated_home: Path) -> None:
    config = isolated_home / "config.json"
    run("configure", "--set", "concurrency=4")
    for args, code, said in [
        (["--set", "concurrency=x"], 1, "concurrency: Input should be a valid integer"),
        (["--set", "nope=1", "--set", "concurency=2", "--bucket", "b"], 2,
         "unknown setting(s) 'concurency' (did you mean 'concurrency'?), 'nope'; the settings are service, "),
        (["--set", "concurrency"], 2, "is not key=value, e.g. --set concurrency=16"),
        (["--keep-versions", "0"], 2, "0 is not in the range x>=1"),
        (["--keep-versions", "2", "--set", "keep_versions=3"], 2, "keep_versions given both as an option and with"),
        (["--set", f"api-key={TEST_API_KEY}"], 2, "the API key is saved by `fedml-storage login`"),
        (["--set", f"local_root={config}"], 1, f"local_root '{config}' is not a folder: name a folder"),
    ]:
        refused = run("configure", *args)
        assert refused.returncode == code and said in refused.stderr, (args, refused.stderr)
        assert json.loads(config.read_text()) == {"concurrency": 4}, args
