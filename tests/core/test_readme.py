"""The README's API example runs as written, on the embedded LOCAL store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _api_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [example] = [b for b in blocks if b.startswith("import fedml_storage\n")]
    return example


def _run(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDML_STORAGE_HOME": str(cwd / "home")}
    return subprocess.run([sys.executable, "-c", _api_example()], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_readme_api_example_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "data" / "mnist" / "train").mkdir(parents=True)
    (tmp_path / "data" / "mnist" / "train" / "0.png").write_bytes(b"\x89PNG digits")
    (tmp_path / "data" / "mnist" / "scratch.tmp").write_text("left out")
    run = _run(tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("file://") and lines[0].endswith("/mnist.zip")
    assert lines[2] == str(tmp_path / "work" / "mnist")  # the download's absolute path
    assert (tmp_path / "work" / "mnist" / "train" / "0.png").read_bytes() == b"\x89PNG digits"
    assert not (tmp_path / "work" / "mnist" / "scratch.tmp").exists()
    assert "{'owner': 'vision'}" in lines and "does all fedml-storage needs" in run.stdout
    assert lines[-2:] == ["True", "False"]  # deleted, then already gone


def test_the_readme_api_example_stops_with_the_reason_when_there_is_no_data(tmp_path: Path) -> None:
    run = _run(tmp_path)
    assert run.returncode == 1 and "does not exist" in run.stderr and "Traceback" not in run.stderr


def test_the_readme_stop_example_stops_a_call_in_another_thread(tmp_path: Path, monkeypatch) -> None:
    import threading

    from fedml_storage import StorageClient

    [snippet] = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "stop_when(stop)" in b]
    (tmp_path / "data" / "mnist").mkdir(parents=True)
    (tmp_path / "data" / "mnist" / "0.png").write_bytes(os.urandom(1 << 20))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDML_STORAGE_LOCAL_ROOT", str(tmp_path / "store"))
    names: dict = {}
    exec(snippet, names)
    names["stop"].set()
    worker = threading.Thread(target=names["work"])
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and StorageClient().list().unwrap() == []
    names["stop"].clear()
    names["work"]()
    assert [m.dataName for m in StorageClient().list().unwrap()] == ["mnist"]
