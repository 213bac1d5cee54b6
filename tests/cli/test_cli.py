"""The real console script in a subprocess, against LOCAL and moto S3."""

from __future__ import annotations

import ast
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import certifi
import pytest

from fedml_storage import cli, cli_words
from tests.conftest import TEST_API_KEY
from tests.core.conftest import make_tree, tree_bytes

SECRET = TEST_API_KEY.split(":", 1)[1]
SCRIPT = str(Path(sys.executable).parent / "fedml-storage")


def run(*args: str, env: dict | None = None, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([SCRIPT, *args], env={**os.environ, **(env or {})}, input=stdin, capture_output=True,
                          text=True, timeout=120, cwd=cwd)
    assert SECRET not in proc.stdout + proc.stderr
    return proc


def test_upload_list_metadata_download_delete(backend_env: dict, tmp_path: Path) -> None:
    src = make_tree(tmp_path / "dataset")
    up = run("upload", str(src), "--description", "cli data", "--tag", "a", "--tag", "b",
             "--metadata", "owner=ml", "--metadata", "split=train", env=backend_env)
    assert up.returncode == 0, up.stderr
    assert "uploaded 'dataset'" in up.stdout
    table = run("list", env=backend_env)
    assert table.returncode == 0 and "| dataset" in table.stdout and "cli data" in table.stdout and "a, b" in table.stdout
    listed = json.loads(run("list", "--json", env=backend_env).stdout)
    assert [item["dataName"] for item in listed] == ["dataset"] and listed[0]["tag_list"] == ["a", "b"]
    assert "| dataset" in run("list", "--prefix", "data", env=backend_env).stdout
    assert run("list", "--prefix", "other", env=backend_env).stdout.strip() == "no datasets stored named other*"
    assert json.loads(run("list", "--prefix", "other", "--json", env=backend_env).stdout) == []
    meta = json.loads(run("metadata", "dataset", "--json", env=backend_env).stdout)
    assert meta["file_count"] == 5 and meta["user_metadata"] == {"owner": "ml", "split": "train"}
    assert "| user_metadata" in run("metadata", "dataset", env=backend_env).stdout
    assert json.loads(run("user-metadata", "dataset", "--json", env=backend_env).stdout) == {"owner": "ml",
                                                                                            "split": "train"}
    down = run("download", "dataset", "--dest", str(tmp_path / "out"), "--json", env=backend_env)
    assert down.returncode == 0, down.stderr
    assert tree_bytes(Path(json.loads(down.stdout)["path"])) == tree_bytes(src)

    refused = run("delete", "dataset", env=backend_env, stdin="n\n")
    assert refused.returncode == 1 and "nothing deleted" in refused.stderr
    assert "dataset" in run("list", env=backend_env).stdout
    gone = run("delete", "dataset", "--yes", env=backend_env)
    assert gone.returncode == 0 and "deleted 'dataset'" in gone.stdout
    assert run("list", env=backend_env).stdout.strip() == "no datasets stored"
    again = run("delete", "dataset", "--yes", env=backend_env)  # a cron job's second run
    assert again.returncode == 1 and "no data named 'dataset'" in again.stderr
    assert "(--missing-ok: succeed when it is not stored)" in again.stderr
    unanswered = run("delete", "dataset", env=backend_env, stdin="")  # a script without --yes: it said "aborted"
    assert unanswered.returncode == 1 and "no answer came; pass --yes" in unanswered.stderr
    tolerated = run("delete", "dataset", "--yes", "--missing-ok", "--json", env=backend_env)
    assert tolerated.returncode == 0, tolerated.stderr
    assert json.loads(tolerated.stdout) == {"name": "dataset", "deleted": False}
    assert run("delete", "dataset", "--yes", "--missing-ok", env=backend_env).stdout.strip() == \
        "nothing to delete: 'dataset' is not stored"
    asked = run("delete", "dataset", "--missing-ok", "--json", env=backend_env, stdin="y\n")
    assert asked.returncode == 0 and json.loads(asked.stdout) == {"name": "dataset", "deleted": False}  # prompt: stderr
    assert "Delete 'dataset'" in asked.stderr


def test_bad_input_exit_codes_and_messages(tmp_path: Path) -> None:
    missing = run("upload", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "f.txt").write_text("x")
    malformed = run("upload", str(tmp_path / "f.txt"), "--metadata", "no-equals-sign")
    assert malformed.returncode == 2 and "key=value" in malformed.stderr
    assert run("list", "--json").stdout.strip() == "[]"  # nothing was stored
    unknown = run("download", "never-stored")
    assert unknown.returncode == 1 and "no data named 'never-stored'" in unknown.stderr
    assert "`fedml-storage list` shows what is stored" in unknown.stderr  # command-line advice, not Python's
    no_bucket = run("--service", "S3", "list")
    assert no_bucket.returncode == 1 and "`fedml-storage configure --bucket ...`" in no_bucket.stderr
    no_account = run("list", env={"FEDML_STORAGE_SERVICE": "R2", "FEDML_STORAGE_BUCKET": "b"})
    assert "R2 needs r2_account_id" in no_account.stderr and "service=None" not in no_account.stderr  # API advice
    wrong = run("--service", "GCS", "list")  # a usage error, naming the option (it was exit 1, "the argument")
    assert wrong.returncode == 2 and "--service" in wrong.stderr and "'GCS' is not one of" in wrong.stderr
    assert run("--service", "s3", "configure", "--json", env={"FEDML_STORAGE_HOME": str(tmp_path / "h")}).returncode == 0
    assert run("configure", "--keep-versions", "0").returncode == 2
    assert run("frobnicate").returncode == 2
    twice = run("upload", str(tmp_path / "f.txt"), "--metadata", "a=1", "--metadata", "a=2")
    assert twice.returncode == 2 and "'a' is given twice" in twice.stderr
    assert "PATH '" in missing.stderr and "data_path" not in missing.stderr  # the CLI's words
    odd = run("download", "ignore_patterns_v1", "--dest", str(tmp_path / "my data_path dest_path"))
    assert "no data named 'ignore_patterns_v1'" in odd.stderr  # ... never in a name or a path
    odd = run("upload", str(tmp_path / "my data_path x" / "f.txt"))
    assert "my data_path x" in odd.stderr


def test_login_prompts_without_echo_and_configure_masks(isolated_home: Path) -> None:
    login = run("login", stdin=TEST_API_KEY + "\n")
    assert login.returncode == 0 and "API key saved" in login.stdout
    assert "Warning" not in login.stderr and "echoed" not in login.stderr  # piped: read as a line, not by getpass
    config = isolated_home / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["api_key"] == TEST_API_KEY
    bad = run("login", "not-a-pair")
    assert bad.returncode == 1 and "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in bad.stderr
    (isolated_home / "certs").mkdir()
    shutil.copy(certifi.where(), isolated_home / "certs" / "ca.pem")  # a ca_bundle must hold certificates
    saved = run("--service", "S3", "--namespace", "team-x", "configure", "--bucket", "my-bucket",
                "--region", "eu-west-1", "--ca-bundle", "certs/ca.pem", cwd=isolated_home)
    assert saved.returncode == 0 and "saved" in saved.stdout
    shown = json.loads(run("configure", "--json").stdout)
    assert (shown["service"], shown["bucket"], shown["namespace"], shown["api_key"]) == ("S3", "my-bucket",
                                                                                          "team-x", "****")
    assert shown["ca_bundle"] == str(isolated_home / "certs" / "ca.pem")
    table = run("configure").stdout
    assert "my-bucket" in table and "****" in table


def test_python_dash_m_runs_the_same_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "fedml_storage", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "upload" in proc.stdout and "user-metadata" in proc.stdout


def test_a_failure_that_may_pass_exits_75_and_one_that_cannot_exits_1() -> None:
    unreachable = run("--service", "S3", "list", env={"FEDML_STORAGE_BUCKET": "b", "FEDML_STORAGE_MAX_ATTEMPTS": "1",
                                                     "FEDML_STORAGE_ENDPOINT_URL": "http://127.0.0.1:9",
                                                     "FEDML_STORAGE_API_KEY": TEST_API_KEY})
    assert unreachable.returncode == 75 and "try again" in unreachable.stderr  # EX_TEMPFAIL: a scheduler retries
    assert run("download", "never-stored").returncode == 1


def test_ctrl_c_exits_130(isolated_home: Path) -> None:
    # Own session: no controlling terminal, so the hidden prompt goes to stderr, merged here into one pipe.
    proc = subprocess.Popen([SCRIPT, "login"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    prompt, deadline = b"", time.monotonic() + 60
    while b"API key" not in prompt:  # waiting for the key: the user gives up
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stdout.fileno(), 256) if ready else b""
        if not chunk:
            proc.kill()
            pytest.fail(f"the prompt never came: {prompt!r}")
        prompt += chunk
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in out and b"Traceback" not in out
    assert not (isolated_home / "config.json").exists()  # nothing saved


def test_the_cores_warnings_are_shown(isolated_home: Path) -> None:
    typo = run("list", env={"FEDML_STORAGE_SERVCE": "S3"})
    assert typo.returncode == 0
    assert "warning: ignoring FEDML_STORAGE_SERVCE" in typo.stderr and "FEDML_STORAGE_SERVICE" in typo.stderr


def test_upload_leaves_out_what_ignore_patterns_match(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "dataset")
    (src / "sub" / "run.tmp").write_text("scratch")
    up = run("upload", str(src), "--ignore", "*.tmp", "--ignore", "deeper/", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["ignored"] == 2
    out = run("download", "dataset", "--dest", str(tmp_path / "out"))
    assert out.returncode == 0, out.stderr
    expected = {k: v for k, v in tree_bytes(src).items() if not k.endswith("run.tmp") and "deeper" not in k}
    assert tree_bytes(tmp_path / "out" / "dataset") == expected
    text = "# a .gitignore's text\n*.tmp\ndeeper/\n"
    lines = run("upload", str(src), "--name", "from-file", "--ignore", text, "--json")
    assert lines.returncode == 0 and json.loads(lines.stdout)["ignored"] == 2, lines.stderr
    bad = run("upload", str(src), "--ignore", "*")
    assert bad.returncode == 1 and "no file remains: nothing was uploaded" in bad.stderr


def test_debug_shows_the_traceback_of_an_unexpected_error_in_the_core(tmp_path: Path) -> None:
    """The core logs it at DEBUG, which --debug did not show: the user was asked to report a log they had not."""
    (tmp_path / "f.txt").write_text("x")
    assert run("upload", str(tmp_path / "f.txt")).returncode == 0
    bug = ("import sys; import fedml_storage.catalog as c\n"
           f"def read(self, name): raise RuntimeError('simulated bug beside {SECRET}')\n"
           "c.Catalog.read = read\n"
           "from fedml_storage.cli import main; sys.argv[0] = 'fedml-storage'; main()\n")
    for flags, traced in (([], False), (["--debug"], True)):
        proc = subprocess.run([sys.executable, "-c", bug, *flags, "--api-key", TEST_API_KEY, "metadata", "f.txt"],
                              capture_output=True, text=True, timeout=120, env={**os.environ})
        assert proc.returncode != 0 and "RuntimeError: simulated bug beside" in proc.stderr, proc.stderr
        assert ("Traceback (most recent call last)" in proc.stderr) is traced, proc.stderr
        assert SECRET not in proc.stdout + proc.stderr


def test_configure_says_when_an_environment_variable_still_decides(tmp_path: Path) -> None:
    proc = run("--namespace", "team-a", "configure", env={"FEDML_STORAGE_NAMESPACE": "team-b"})
    assert proc.returncode == 0, proc.stderr
    assert "saved namespace" in proc.stdout and "FEDML_STORAGE_NAMESPACE, set in the environment" in proc.stdout


def test_a_bucket_configured_beside_the_default_local_service_is_pointed_out(tmp_path: Path) -> None:
    env = {"FEDML_STORAGE_HOME": str(tmp_path / "home")}
    saved = run("configure", "--bucket", "datasets", env=env)
    assert saved.returncode == 0 and "saved bucket" in saved.stdout
    assert saved.stderr.startswith("warning: the default service is still LOCAL, which uses no bucket")
    assert "`fedml-storage --service S3 configure`" in saved.stderr and "configure(service" not in saved.stderr
    empty = run("list", env=env)
    assert empty.returncode == 0 and empty.stdout.startswith("no datasets stored; commands without --service use")
    assert "'datasets'" in empty.stdout and "pass --service R2 or S3" in empty.stdout
    named = run("list", "--prefix", "run;2024", env=env)  # the hint was dropped, or found at the name's ';'
    assert named.stdout.startswith("no datasets stored named run;2024*; commands without --service use")
    assert named.stdout.count("2024") == 1 and "pass --service R2 or S3" in named.stdout
    gone = run("delete", "a;b", "--yes", "--missing-ok", env=env)
    assert gone.returncode == 0 and gone.stdout.startswith("nothing to delete: 'a;b' is not stored; commands without")
    assert gone.stdout.count("a;b") == 1
    missing = run("metadata", "mnist", env=env)
    assert missing.returncode == 1 and "pass --service R2 or S3" in missing.stderr and "service=" not in \
        missing.stderr
    nothing = run("delete", "mnist", "--yes", "--missing-ok", env=env)  # a cron job's delete: says where it looked
    assert nothing.returncode == 0 and "nothing to delete" in nothing.stdout and "pass --service R2 or S3" in \
        nothing.stdout
    chosen = run("--service", "S3", "configure", env=env)
    assert chosen.returncode == 0 and "warning" not in chosen.stderr
    cleared = run("configure", "--bucket", "", env=env)
    assert cleared.returncode == 0 and "cleared bucket in" in cleared.stdout and "saved" not in cleared.stdout
    assert "bucket" not in json.loads((tmp_path / "home" / "config.json").read_text())
    assert json.loads((tmp_path / "home" / "config.json").read_text())["service"] == "S3"
    assert run("--service", "", "configure", env=env).returncode == 0
    assert "service" not in json.loads((tmp_path / "home" / "config.json").read_text())


def test_a_download_asks_before_replacing_a_copy_at_a_terminal(tmp_path: Path) -> None:
    """It replaced DEST/NAME as a whole without a word before: files the user had added there were gone."""
    import pty

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.txt").write_text("stored")
    assert run("upload", str(tmp_path / "ds")).returncode == 0
    (tmp_path / "out" / "ds").mkdir(parents=True)
    (tmp_path / "out" / "ds" / "mine.csv").write_text("the user's own results")

    def at_terminal(*args: str, answer: bytes, stderr_too: bool = True, name: str = "ds") -> tuple[int, str]:
        main, sub = pty.openpty()
        proc = subprocess.Popen([SCRIPT, "download", name, "--dest", str(tmp_path / "out"), *args], stdin=sub,
                                stdout=subprocess.PIPE, stderr=sub if stderr_too else subprocess.PIPE)
        os.close(sub)
        os.write(main, answer)
        said = b""
        while True:  # what the terminal shows, until the process closes it
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: no writer left
                break
            if not chunk:
                break
            said += chunk
        out, err = proc.communicate(timeout=120)
        os.close(main)
        return proc.returncode, (said + out + (err or b"")).decode()

    code, said = at_terminal(answer=b"n\n")
    assert code == 1 and "exists: replace it as a whole" in said and "aborted: nothing downloaded" in said
    assert (tmp_path / "out" / "ds" / "mine.csv").exists()
    code, said = at_terminal(answer=b"\x04")  # Ctrl-D at the prompt: it was reported as an unexpected error
    assert code == 1 and "aborted" in said and "unexpectedly" not in said
    assert (tmp_path / "out" / "ds" / "mine.csv").exists()
    code, said = at_terminal("--yes", answer=b"")
    assert code == 0 and "replacing what was there" in said and "exists:" not in said
    assert sorted(p.name for p in (tmp_path / "out" / "ds").iterdir()) == ["a.txt"]
    code, said = at_terminal(answer=b"n\n")  # the copy there is that version: kept, nothing to ask
    assert code == 0 and "exists:" not in said and "kept" in said
    (tmp_path / "out" / "gone").mkdir()
    code, said = at_terminal(answer=b"n\n", name="gone")  # asked before, then told it was not stored
    assert code == 1 and "exists:" not in said and "no data named 'gone'" in said
    assert (tmp_path / "out" / "gone").is_dir()
    piped = run("download", "ds", "--dest", str(tmp_path / "out"))  # a script's download: no one to ask
    assert piped.returncode == 0 and "exists:" not in piped.stderr
    code, said = at_terminal(answer=b"", stderr_too=False)  # stderr to a log: a question no one would see
    assert code == 0 and "exists:" not in said


def test_check_prints_each_verdict_and_fails_on_a_store_that_ignores_conditions(s3_env: dict, moto_proxy) -> None:
    good = run("check", env=s3_env)
    assert good.returncode == 0, good.stderr
    assert "If-None-Match" in good.stdout and "FAILED" not in good.stdout and good.stdout.count("| ok ") == 7
    moto_proxy.strip_headers("if-none-match", "if-match")
    bad = run("check", "--json", env={**s3_env, "FEDML_STORAGE_ENDPOINT_URL": moto_proxy.endpoint})
    assert bad.returncode == 1 and "lacks what fedml-storage needs" in bad.stderr
    found = json.loads(bad.stdout)
    assert found["ok"] is False
    assert [f["feature"] for f in found["findings"] if not f["ok"]] == ["If-None-Match", "If-Match on writes",
                                                                        "If-Match on deletes"]


def test_debug_says_each_failure_and_warning_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text('{"service": "LOCAL", "colour": "blue"}')
    (home / "config.json").chmod(0o600)
    failed = run("--debug", "download", "nope", "--dest", str(tmp_path / "out"), env={"FEDML_STORAGE_HOME": str(home)})
    assert failed.returncode == 1
    assert failed.stderr.count("download of 'nope' failed") == 1, failed.stderr
    assert failed.stderr.count("ignoring unknown keys") == 1, failed.stderr


def _core_texts() -> list[str]:
    """Every string the core writes (f-strings with their fields as \\0, a repr'd field as '\\0')."""
    def text(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            return "".join(v.value if isinstance(v, ast.Constant) else "'\0'" if v.conversion == ord("r") else "\0"
                           for v in node.values)
        return None

    core = Path(cli.__file__).parent
    trees = [ast.parse(path.read_text()) for path in core.rglob("*.py")
             if path.stem != "cli" and not path.stem.startswith("cli_")]  # (client.py is the core's)
    return [t for tree in trees for t in map(text, ast.walk(tree)) if t]


def test_every_advice_the_cli_rewords_is_still_what_the_core_says() -> None:
    """The CLI turns the core's Python advice into commands by matching its words: a reworded core message would
    slip through in Python terms."""
    texts = _core_texts()
    stale = [advice for advice in cli_words.CLI_ADVICE if not any(advice.removeprefix("failed: ") in t for t in texts)]
    assert stale == []  # ("failed: " joins an action to its cause when the response is made)


def test_quiet_is_taken_before_or_after_the_command(tmp_path: Path) -> None:
    """`upload PATH --quiet` was refused ("No such option"); bars show only when stderr is a terminal."""
    import fcntl
    import pty
    import struct
    import termios

    def stderr_at_terminal(*args: str) -> tuple[int, str]:
        main, sub = pty.openpty()
        fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing 0 wide
        proc = subprocess.Popen([SCRIPT, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sub)
        os.close(sub)
        shown = b""
        while chunk := _read_or_nothing(main):
            shown += chunk
        proc.communicate(timeout=120)
        os.close(main)
        return proc.returncode, shown.decode()

    for where in ("nowhere", "before", "after"):
        before, after = (["--quiet"], []) if where == "before" else ([], ["--quiet"] if where == "after" else [])
        (tmp_path / f"{where}.bin").write_bytes(os.urandom(100_000))  # new data each time: a bar to show
        code, shown = stderr_at_terminal(*before, "upload", str(tmp_path / f"{where}.bin"), *after)
        assert code == 0 and ("Uploading" in shown) is (where == "nowhere"), (where, shown)
        code, shown = stderr_at_terminal(*before, "download", f"{where}.bin", "--dest", str(tmp_path / "out"), *after)
        assert code == 0 and ("Downloading" in shown) is (where == "nowhere"), (where, shown)


def _read_or_nothing(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: no writer left
        return b""


def test_ctrl_c_on_an_s3_upload_says_it_waits_for_requests_in_flight(s3_env: dict, moto_proxy, tmp_path: Path) -> None:
    """It waited for the parts in flight with nothing said (helper-94)."""
    src = tmp_path / "big.bin"
    src.write_bytes(b"\0" * (12 << 20))
    moto_proxy.delay_answer("partNumber=", 2, times=3)  # the parts sent whole, their answers slow to come
    env = {**os.environ, **s3_env, "FEDML_STORAGE_ENDPOINT_URL": moto_proxy.endpoint,
           "FEDML_STORAGE_PART_SIZE": "5MiB"}
    proc = subprocess.Popen([SCRIPT, "upload", str(src)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not moto_proxy.held and time.monotonic() < deadline:  # a part whole at the store, its answer held back
        time.sleep(0.01)  # (sooner, s3transfer stops sending the parts at once: nothing is left to wait for)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.rstrip().endswith("interrupted"), err
    assert "warning: stopping: waiting for the requests in flight to end, so that none completes the upload later\n" \
        in err
    assert SECRET not in out + err


def test_warnings_give_advice_in_the_command_lines_words() -> None:
    import logging

    record = logging.LogRecord("fedml_storage", logging.WARNING, __file__, 0, "x; run %s", ("fedml_login('ACCESS_KEY_ID"
                               ":SECRET_ACCESS_KEY')",), None)
    assert cli._Lowercase().format(record) == "warning: x; run `fedml-storage login`"
