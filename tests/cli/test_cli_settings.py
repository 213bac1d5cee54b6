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
