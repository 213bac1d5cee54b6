"""Bad input: what the user sees, and that nothing was stored or lost."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedml_storage import StorageClient, api
from fedml_storage.api.fedml_response import ResponseCode
from fedml_storage.errors import to_response

from .conftest import Store


@pytest.fixture
def stored(store: Store, tmp_path: Path) -> Path:
    """One dataset already stored, to show bad calls do not harm it."""
    src = tmp_path / "keep"
    src.mkdir()
    (src / "k.txt").write_text("precious")
    assert store.client().upload(src).ok
    return src


@pytest.mark.parametrize(
    ("kwargs", "reason", "words"),
    [
        ({"data_path": "does/not/exist"}, "invalid_input", "does not exist"),
        ({"metadata": {"epochs": 3}}, "invalid_input", "must be strings"),
        ({"metadata": ["not", "a", "dict"]}, "invalid_input", "dict of strings"),
        ({"metadata": {"blob": "x" * 20_000}}, "invalid_input", "at most 16384"),
        ({"name": "../x"}, "invalid_input", "must be one name"),
        ({"name": "a/b"}, "invalid_input", "must be one name"),
        ({"name": "bad\nname"}, "invalid_input", "control characters"),
        ({"name": "bad\u2028name"}, "invalid_input", "line breaks"),
        ({"name": "é" * 101}, "invalid_input", "202 bytes long in UTF-8; at most 200"),
        ({"name": "bad\udcffname"}, "invalid_input", "not valid Unicode"),
        ({"name": ".fedml-download-x"}, "invalid_input", "reserved"),
        ({"name": 20260305}, "invalid_input", "a data name must be a string, not int 20260305; pass str(...)"),
        ({"name": ["a"]}, "invalid_input", "a data name must be a string, not list; pass str(...)"),
        ({"tag_list": "images"}, "invalid_input", "list of strings"),
        ({"tag_list": ["ok", "  "]}, "invalid_input", "non-empty strings"),
        ({"tag_list": [f"t{i}" for i in range(65)]}, "invalid_input", "65 different tags; at most 64"),
        ({"tag_list": ["x" * 257]}, "invalid_input", "257 characters long; at most 256"),
        ({"tag_list": ["t" * 1024 * 1024] * 64}, "invalid_input", "1048576 characters long"),
        ({"description": 42}, "invalid_input", "description must be a string"),
        ({"description": "bad\udcff"}, "invalid_input", "description is not valid Unicode"),
        ({"tag_list": ["ok", "bad\udcff"]}, "invalid_input", "is not valid Unicode"),
        ({"metadata": {"k": "bad\udcff"}}, "invalid_input", "metadata entry 'k' is not valid Unicode"),
        ({"metadata": {"bad\udcff": "v"}}, "invalid_input", "is not valid Unicode"),
        ({"data_path": "x" * 300}, "invalid_input", "longer than the file system allows"),
        ({"data_path": "~no_such_user_zz/data"}, "invalid_input", "home folder (~user) this system does not know"),
        ({"data_path": "da\0ta"}, "invalid_input", "NUL"),
        ({"progress_desc": 123, "show_progress": True}, "invalid_input", "progress_desc must be a string"),
    ],
)
def test_bad_upload_input_fails_clearly_and_stores_nothing(
    store: Store, stored: Path, tmp_path: Path, kwargs: dict, reason: str, words: str
) -> None:
    src = tmp_path / "new.txt"
    src.write_text("new")
    before = store.keys()
    args = {"data_path": str(src), "api_key": store.api_key, "service": store.service, **kwargs}
    response = api.upload(**args)
    assert response.code == ResponseCode.FAILURE
    assert response.reason == reason and words in response.message, response.message
    assert store.keys() == before
    assert (store.client().download("keep", tmp_path / "o").ok and (tmp_path / "o" / "keep" / "k.txt").read_text()
            == "precious")


def test_a_broken_link_as_data_path_is_named_as_one(store: Store, stored: Path, tmp_path: Path) -> None:
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "run-7")  # removed, or not made yet
    response = store.client().upload(str(link))
    assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input"
    assert "is a broken link" in response.message and "run-7" in response.message
    assert [m.dataName for m in store.client().list().data] == ["keep"]


def test_repeated_tags_count_once_and_the_longest_tag_round_trips(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "f.txt"
    src.write_text("tags")
    longest = "é" * 256
    tags = [f"t{i}" for i in range(63)] * 3 + [longest]  # 190 entries, 64 different
    client = store.client()
    assert client.upload(src, tag_list=tags).ok
    assert client.get_metadata("f.txt").data.tag_list == [f"t{i}" for i in range(63)] + [longest]


def test_longest_allowed_name_round_trips(store: Store, tmp_path: Path) -> None:
    name = "é" * 98 + ".csv"  # 102 characters, 200 bytes: the limit is in bytes, which file systems count
    src = tmp_path / "f.csv"
    src.write_text("long")
    client = store.client()
    assert client.upload(src, name=name).ok
    down = client.download(name, tmp_path / "out")
    assert down.ok and Path(down.data).read_text() == "long"
    assert client.delete(name).ok


def test_unknown_service_lists_valid_ones(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    response = api.upload(str(tmp_path / "f.txt"), service="GCS")
    assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input"
    assert "LOCAL, S3, R2" in response.message
    assert api.list_storage_objects(service="azure").code == ResponseCode.FAILURE


def test_service_is_case_insensitive_and_none_means_configured_default(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    assert api.upload(str(tmp_path / "f.txt"), service="local").code == ResponseCode.SUCCESS
    assert [o.dataName for o in api.list_storage_objects().data] == ["f.txt"]  # default service: LOCAL


def test_s3_without_bucket_says_how_to_configure(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    response = api.upload(str(tmp_path / "f.txt"), service="S3")
    assert response.code == ResponseCode.FAILURE and response.reason == "not_configured"
    assert "FEDML_STORAGE_BUCKET" in response.message


def test_r2_without_account_or_endpoint_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    response = StorageClient(service="R2", bucket="b1").upload(tmp_path / "f.txt")
    assert response.reason == "not_configured" and "R2_ACCOUNT_ID" in response.message


def test_download_into_a_file_path_is_refused(store: Store, stored: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "iam-a-file"
    blocker.write_text("do not overwrite")
    response = store.client().download("keep", blocker)
    assert response.reason == "invalid_input" and "is a file" in response.message
    assert blocker.read_text() == "do not overwrite"


@pytest.mark.parametrize("version", ["../../etc", "latest", 3])
def test_a_malformed_version_is_bad_input_not_an_expired_one(store: Store, stored: Path, tmp_path: Path,
                                                            version: object) -> None:
    got = store.client().download("keep", tmp_path / "out", version=version)
    assert got.code == ResponseCode.FAILURE and got.reason == "invalid_input"
    assert "is not a version id" in got.message and "keep_versions" not in got.message
    assert not (tmp_path / "out").exists()


def test_download_replaces_existing_target_completely(store: Store, stored: Path, tmp_path: Path) -> None:
    stale = tmp_path / "out" / "keep"
    stale.mkdir(parents=True)
    (stale / "stale.txt").write_text("old run")
    response = store.client().download("keep", tmp_path / "out")
    assert response.ok
    assert sorted(p.name for p in stale.iterdir()) == ["k.txt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep"]  # no temp leftovers


@pytest.mark.parametrize("key", [12345, ["AKIA", "x"]])
def test_non_string_api_key_is_a_failure_not_a_crash(key, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    for response in (api.fedml_login(key), api.upload(str(tmp_path / "f.txt"), api_key=key, service="S3")):
        assert response.code == ResponseCode.FAILURE and "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in response.message


def test_malformed_endpoint_is_a_configuration_failure(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    response = StorageClient(service="S3", bucket="b1", endpoint_url="htp:/nowhere here", api_key="AKIAX:secret-x",
                             region="us-east-1").upload(tmp_path / "f.txt")
    # refused by the settings' check, before boto3 sees it
    assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input", response.message
    assert "endpoint_url must be an http:// or https:// URL" in response.message
    assert "secret-x" not in response.message and "nowhere" not in response.message


def test_invalid_bucket_name_is_a_configuration_failure(moto_endpoint: str, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    client = StorageClient(service="S3", bucket="no such bucket!", endpoint_url=moto_endpoint, api_key="AKIAX:s-x",
                           region="us-east-1")
    response = client.upload(tmp_path / "f.txt")
    assert response.code == ResponseCode.FAILURE and response.reason == "not_configured", response.message
    assert not response.retryable and "bucket" in response.message


@pytest.mark.parametrize(
    ("err", "code", "reason", "words"),
    [
        (errno.ENOSPC, ResponseCode.ERROR, "transient", "no space left"),
        (errno.EACCES, ResponseCode.FAILURE, "access_denied", "refused access"),
        (errno.EROFS, ResponseCode.FAILURE, "access_denied", "refused access"),
        (errno.EIO, ResponseCode.ERROR, "internal", "report this"),
    ],
)
def test_local_file_system_errors_say_what_to_do(err: int, code: ResponseCode, reason: str, words: str) -> None:
    response = to_response(OSError(err, os.strerror(err), "/data/out/x.part"), "download of 'x'")
    assert response.code == code and response.reason == reason and words in response.message
    assert "/data/out/x.part" in response.message


def test_a_failing_name_hint_leaves_a_plain_not_found(tmp_path: Path, monkeypatch) -> None:
    from fedml_storage.backends.local import LocalStore

    def refused(self, prefix: str):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(LocalStore, "list", refused)  # only the hint lists; the lookup itself reads one entry
    for response in (api.get_storage_metadata("nothere"), api.delete("nothere", "LOCAL")):
        assert response.code == ResponseCode.FAILURE and response.reason == "not_found", response.message
        assert "no data named 'nothere'" in response.message and "did you mean" not in response.message


@pytest.mark.parametrize(("kind", "kept", "retryable", "words"), [
    ("file", 0, False, "on a volume of 1.00 MB in all"),  # larger than the disk: no retry helps (helper-103)
    ("folder", 0, False, "(the archive and its unpacked copy); choose"),  # the archive fits, with its copy not
    ("file", 600 << 10, True, "(the data) and"),  # fits once what is kept there is gone
])
def test_a_download_that_cannot_fit_fails_before_fetching_and_leaves_the_folder_as_it_was(
    store: Store, tmp_path: Path, small_disk: Path, kind: str, kept: int, retryable: bool, words: str
) -> None:
    src = tmp_path / "big"
    if kind == "file":
        src.write_bytes(os.urandom(600 << 10 if kept else 2 << 20))
    else:
        src.mkdir()  # the archive (600 KiB) fits, the archive and its unpacked copy (1.2 MiB) do not
        (src / "a.bin").write_bytes(os.urandom(600 << 10))
    assert store.client().upload(src).ok
    (small_disk / "keep.txt").write_bytes(b"m" * (kept or 4))
    response = api.download("big", service=store.service, api_key=store.api_key, dest_path=str(small_disk / "out"))
    assert response.retryable is retryable and words in response.message, response.message
    assert ("not enough space" in response.message and "free some space" in response.message) is retryable
    assert sorted(p.name for p in small_disk.iterdir()) == ["keep.txt"]  # not even the folder it would have made


def test_the_space_check_counts_what_the_download_writes(store: Store, tmp_path: Path, monkeypatch) -> None:
    import shutil as sh

    src = tmp_path / "d"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300 << 10))
    up = store.client().upload(src).data
    need = up.size + up.source_size
    real = sh.disk_usage
    for free, ok in ((need - 1, False), (need, True)):
        monkeypatch.setattr(sh, "disk_usage", lambda p, free=free: real(p)._replace(free=free))
        response = api.download("d", service=store.service, api_key=store.api_key, dest_path=str(tmp_path / "out"))
        assert response.ok is ok, response.message


@pytest.mark.parametrize(
    ("dest", "words"),
    [
        ("out\0x", "NUL"),
        ("~no_such_user_zz/out", "home folder (~user) this system does not know"),
        ("a-file/sub", "a part of the path is a file, not a folder"),
        ("dangling", "broken link"),
        ("deep", "longer than the file system allows"),
        ("/proc/out", "its parent takes no new folders"),
    ],
)
def test_a_destination_that_cannot_be_used_is_bad_input(store: Store, stored: Path, tmp_path: Path, dest: str,
                                                        words: str) -> None:
    (tmp_path / "a-file").write_text("a file, not a folder")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    deep = tmp_path.joinpath(*["d" * 250] * 20)  # past PATH_MAX
    if dest.startswith("/proc") and not Path("/proc/self").exists():
        pytest.skip("needs Linux's /proc")
    path = deep if dest == "deep" else dest if dest.startswith(("~", "/")) else str(tmp_path / dest)
    before = sorted(p.name for p in tmp_path.iterdir())
    response = store.client().download("keep", path)
    assert response.code == ResponseCode.FAILURE and response.reason == "invalid_input", response.message
    assert words in response.message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_name_too_long_for_the_local_file_system_is_simply_not_there(store: Store, stored: Path) -> None:
    name = "x" * 300  # a stored name may be this long (S3 keys); no LOCAL file can be
    for response in (api.get_storage_metadata(name, store.api_key, service=store.service),
                     api.delete(name, store.service, store.api_key),
                     api.download(name, store.api_key, store.service)):
        assert response.code == ResponseCode.FAILURE and response.reason == "not_found", response.message


def test_a_bad_progress_label_is_bad_input(store: Store, stored: Path, tmp_path: Path) -> None:
    response = store.client().download("keep", tmp_path / "out", progress_desc=123, show_progress=True)
    assert response.reason == "invalid_input" and "progress_desc must be a string" in response.message
    assert not (tmp_path / "out").exists()


def test_a_source_whose_own_name_cannot_be_stored_says_to_pass_name(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "trailing "
    src.mkdir()
    (src / "f.txt").write_text("x")
    response = store.client().upload(src)
    assert response.reason == "invalid_input" and "pass name=" in response.message
    assert store.client().upload(src, name="trailing").ok


def test_a_file_whose_name_is_not_utf8_is_named(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "latin1"
    src.mkdir()
    (src / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    response = store.client().upload(src)
    assert response.reason == "invalid_input" and "not valid UTF-8" in response.message and "rename it" in response.message
    assert [k for k in store.keys() if "/data/" in k] == []


def test_a_file_over_the_size_limit_fails_as_bad_input_and_leaves_nothing(store: Store, stored: Path,
                                                                         tmp_path: Path) -> None:
    """A real write refused by the kernel (RLIMIT_FSIZE, as FAT32 or a quota would), in a child process."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    assert store.client().upload(src).ok
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        "from fedml_storage import api\n"
        "r = api.download('big.bin', sys.argv[1], sys.argv[2], dest_path=sys.argv[3])\n"
        "print(r.reason); print(r.message)\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.run([sys.executable, "-c", script, str(store.api_key or ""), store.service, str(out)],
                         capture_output=True, text=True, env=os.environ, timeout=120)
    reason, message = run.stdout.split("\n", 1)
    assert reason == "invalid_input" and "file-size limit" in message, run.stdout + run.stderr
    assert list(out.iterdir()) == []


def test_a_name_missing_from_the_default_local_store_points_at_the_configured_bucket(
        s3_env: dict[str, str], monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDML_STORAGE_SERVICE", raising=False)  # default service: LOCAL
    (tmp_path / "d").mkdir()
    assert api.upload(str(tmp_path / "d"), service="S3").ok
    response = api.get_storage_metadata("d")
    assert response.reason == "not_found" and "pass service='R2' or 'S3'" in response.message, response.message
    assert api.get_storage_metadata("d", service="S3").ok
    assert "pass service=" not in api.get_storage_metadata("nothere", service="LOCAL").message
    empty = api.list_storage_objects()  # the default LOCAL store holds nothing: the list says where to look
    assert empty.ok and empty.data == [] and "pass service='R2' or 'S3'" in empty.message, empty.message
    assert "pass service=" not in api.list_storage_objects(service="S3").message


def test_an_upload_that_fills_the_disk_leaves_the_store_as_it_was(small_disk: Path, tmp_path: Path) -> None:
    client = StorageClient(service="LOCAL", local_root=str(small_disk / "store"))
    (tmp_path / "small.txt").write_text("fits")
    assert client.upload(tmp_path / "small.txt").ok
    before = sorted(p.relative_to(small_disk).as_posix() for p in small_disk.rglob("*"))
    for src in (tmp_path / "big.bin", tmp_path / "bigdir"):
        if src.name == "bigdir":
            src.mkdir()
            (src / "a.bin").write_bytes(os.urandom(2 << 20))
        else:
            src.write_bytes(os.urandom(2 << 20))
        response = client.upload(src)
        assert response.code == ResponseCode.ERROR and response.retryable and "space" in response.message
        assert sorted(p.relative_to(small_disk).as_posix() for p in small_disk.rglob("*")) == before


def test_the_documented_r2_default_of_upload_says_how_to_use_the_configured_service(tmp_path: Path) -> None:
    assert api.configure(service="S3", bucket="datasets", region="eu-west-1").ok
    (tmp_path / "f.txt").write_text("x")
    response = api.upload(str(tmp_path / "f.txt"))  # service="R2" by the documented default
    assert response.reason == "not_configured", response.message
    assert "R2 needs r2_account_id" in response.message and "pass service=None" in response.message


def test_a_bucket_name_s3_cannot_take_is_told_with_the_rules(s3_store: Store) -> None:
    response = s3_store.client(bucket="Bad_Bucket!").list()
    assert response.code == ResponseCode.FAILURE and response.reason == "not_configured" and not response.retryable
    assert "bucket name 'Bad_Bucket!' is not valid" in response.message and "3 to 63 lowercase" in response.message
    assert "regex" not in response.message


def test_a_loop_of_links_as_dest_path_or_local_root_is_bad_input(store: Store, tmp_path: Path) -> None:
    """Python 3.11's Path.resolve raises RuntimeError on a loop: it was an internal error (helper-90)."""
    (tmp_path / "data.txt").write_text("x")
    assert store.client().upload(str(tmp_path / "data.txt")).ok
    os.symlink(tmp_path / "l2", tmp_path / "l1")
    os.symlink(tmp_path / "l1", tmp_path / "l2")
    response = store.client().download("data.txt", str(tmp_path / "l1"))
    assert response.reason == "invalid_input" and "loop of links" in response.message, response.message
    if store.service == "LOCAL":
        with StorageClient(service="LOCAL", local_root=str(tmp_path / "l1")) as client:
            listed = client.list()
        assert listed.reason == "invalid_input" and "loop of links" in listed.message, listed.message
