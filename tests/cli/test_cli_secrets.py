"""A key typed where the command line does not take it (helper-102): click's usage errors quote what they were
given, and printed the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_cli import run

KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEXAMPLEsessionTOKEN/never+logged=="
SPACES = ("DO00QWERTYUIOPASDFGH", "Xk3mPq9vAbCdEfGhIjKlMnOpQrStUvWxYz0123456")  # not AWS's shape: DigitalOcean's


@pytest.mark.parametrize("args", [
    ("login", KEY_ID, SECRET),  # a space for the ':'
    ("login", KEY_ID, ":" + SECRET),
    ("--api-key", KEY_ID, SECRET, "list"),
    (f"--api-key={KEY_ID}", SECRET, "list"),
    (f"{KEY_ID}:{SECRET}",),  # taken for a command
    ("--service", f"{KEY_ID}:{SECRET}", "list"),
    ("configure", "--set", f"{KEY_ID}:{SECRET}"),
    ("upload", "--metadata", f"{KEY_ID}:{SECRET}", "x"),
    ("login", *SPACES),
    ("login", "minioadmin", "Sup3rS3cr3t"),  # a short secret of the user's choosing (helper-105)
    ("--api-key", "minioadmin", "minio-secret-123", "login"),
    ("login", KEY_ID, SECRET, TOKEN),  # a session token after a second space (helper-104)
    ("login", f"{KEY_ID}:{SECRET}", TOKEN),
    ("--api-key", f"{KEY_ID}:{SECRET}", TOKEN, "list"),
    ("--service", ":".join(SPACES), "list"),
])
def test_a_key_in_the_wrong_place_is_not_echoed_by_a_usage_error(isolated_home: Path, args: tuple[str, ...]) -> None:
    refused = run(*args)
    assert refused.returncode == 2 and "Error:" in refused.stderr, refused
    shown = refused.stdout + refused.stderr
    assert SECRET not in shown and SPACES[1] not in shown and TOKEN not in shown
    assert "Sup3rS3cr3t" not in shown and "minio-secret-123" not in shown
    assert not (isolated_home / "config.json").exists()


def test_a_usage_error_still_names_what_was_mistyped(isolated_home: Path) -> None:
    typo = run("--api-key", f"{KEY_ID}:{SECRET}", "downlaod", "x")  # a whole key: the next word is not part of it
    assert typo.returncode == 2 and "No such command 'downlaod'" in typo.stderr and SECRET not in typo.stderr
    extra = run("login", f"{KEY_ID}:{SECRET}", "extra-word")
    assert "unexpected extra argument (extra-word)" in extra.stderr and SECRET not in extra.stderr
