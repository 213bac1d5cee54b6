"""Progress bars count exactly the bytes moved, to stderr or stdout as asked."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

import fedml_storage.progress as progress_module
from fedml_storage import human_size

from .conftest import Store, make_tree

BARS: list[tqdm] = []


class RecordingBar(tqdm):
    """A real tqdm bar that remembers itself, so the test can read its final count."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        BARS.append(self)


def test_progress_counts_are_exact(store: Store, tmp_path: Path, monkeypatch, capsys) -> None:
    BARS.clear()
    monkeypatch.setattr(progress_module, "tqdm", RecordingBar)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * 1024 * 1024 + 123))  # several parts on S3
    tree = make_tree(tmp_path / "tree")
    client = store.client(part_size=5 * 1024 * 1024, download_part_size=1024 * 1024)
    up_file = client.upload(big, show_progress=True).data
    up_tree = client.upload(tree, show_progress=True, out_progress_to_err=False, progress_desc="Packing tree").data
    client.download("big.bin", tmp_path / "o", show_progress=True)
    client.download("tree", tmp_path / "o", show_progress=True)
    totals = [(b.desc, b.n, b.total) for b in BARS]
    assert totals == [
        ("Uploading Package to Remote Storage", big.stat().st_size, big.stat().st_size),
        ("Packing tree", up_tree.source_size, up_tree.source_size),
        ("Downloading from Remote Storage", up_file.size, up_file.size),
        ("Downloading from Remote Storage", up_tree.size, up_tree.size),
    ]
    # a folder's bar counts its files' bytes; the line says those beside the zip's (it gave the zip's alone)
    assert f"({up_tree.file_count} file(s), {human_size(up_tree.source_size)}, as a {human_size(up_tree.size)} zip " \
        in up_tree.summary() and up_tree.source_size != up_tree.size
    out, err = capsys.readouterr()
    assert "Packing tree" in out and "Packing tree" not in err
    assert "Uploading Package to Remote Storage" in err


def test_the_upload_line_gives_its_rate_in_the_units_of_its_size() -> None:
    from fedml_storage.results import UploadResult

    line = UploadResult("s3://b/k", name="mnist", size=int(52.10 * (1 << 20)), seconds=1.42, version="v1",
                        skipped=False, uri="s3://b/k").summary()
    assert "(52.10 MB in 1.42 s, 36.69 MB/s, version v1)" in line  # 52.10 / 1.42, as a reader checks it
    tiny = UploadResult("s3://b/k", name="t", size=300, seconds=0.5, version="v1", skipped=False, uri="s3://b/k")
    assert "(300 B in 0.50 s, 600 B/s, version v1)" in tiny.summary()  # not '0.0 MB/s'
