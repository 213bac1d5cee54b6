"""`stop_when`: a call in a worker thread (where no Ctrl-C or signal reaches) stops when its caller sets an event,
cleans up, and never publishes. S3 through the cutting proxy in front of moto, the stop set mid-request."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from fedml_storage import ResponseCode, Stopped, stop_when, stops
from fedml_storage.stops import StoppableCall
from tests.conftest import s3_client
from tests.cutting_proxy import CuttingProxy

from .conftest import Store

MiB = 1 << 20


def _stored_v1(store: Store, tmp_path: Path, size: int = 12 * MiB, folder: bool = False, **kw
               ) -> tuple[Path, str, list[str]]:
    """A file (or a folder holding one) stored once as data.bin, then changed in place. Its path, the stored
    version and the store's keys."""
    src = tmp_path / "data.bin"
    file = src / "inside.bin" if folder else src
    file.parent.mkdir(exist_ok=True)
    file.write_bytes(os.urandom(size))
    with store.client(**kw) as client:
        version = client.upload(str(src)).unwrap().version
    file.write_bytes(os.urandom(size))
    return src, version, store.keys()


def _current(store: Store, **kw) -> str:
    with store.client(**kw) as client:
        return client.get_metadata("data.bin").unwrap().version


def test_a_stop_set_before_the_call_publishes_nothing_and_leaves_nothing(store: Store, tmp_path: Path) -> None:
    src, version, keys = _stored_v1(store, tmp_path, size=MiB)
    stop = threading.Event()
    stop.set()
    with store.client() as client, stop_when(stop):
        with pytest.raises(Stopped):
            client.upload(str(src))
        with pytest.raises(Stopped):
            client.download("data.bin", str(tmp_path / "out"))
    assert store.keys() == keys and _current(store) == version
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    with store.client() as client:  # outside the block the same client works as before
        assert client.upload(str(src)).code == ResponseCode.SUCCESS and _current(store) != version


def _s3_via(proxy: CuttingProxy) -> dict:
    return {"endpoint_url": proxy.endpoint, "part_size": 5 * MiB}


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_an_upload_stopped_mid_part_cancels_its_multipart_upload(s3_store: Store, moto_proxy: CuttingProxy,
                                                                    tmp_path: Path, folder: bool) -> None:
    kw = _s3_via(moto_proxy)
    src, version, keys = _stored_v1(s3_store, tmp_path, folder=folder, **kw)
    stop = threading.Event()
    moto_proxy.on_request(rb"^PUT /[^ ]*/data/[^ ]*partNumber=", lambda: (stop.set(), threading.Event().wait(0.5)))
    seen = len(moto_proxy.request_heads)
    with s3_store.client(**kw) as client, stop_when(stop):
        with pytest.raises(Stopped):
            client.upload(str(src))
    assert stop.is_set() and s3_store.keys() == keys and _current(s3_store) == version
    heads = moto_proxy.request_heads[seen:]
    assert not [h for h in heads if re.match(rb"^POST /[^ ]*uploadId=", h)]  # never completed, but aborted:
    assert [h for h in heads if re.match(rb"^DELETE /[^ ]*uploadId=", h)]
    assert not s3_client(s3_store.endpoint).list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads")


def test_an_upload_stopped_once_its_data_is_in_does_not_commit(s3_store: Store, moto_proxy: CuttingProxy,
                                                                tmp_path: Path) -> None:
    """The stop arrives as the data's upload completes, so all of it is in: the commit must still not happen."""
    kw = _s3_via(moto_proxy)
    src, version, keys = _stored_v1(s3_store, tmp_path, **kw)
    stop = threading.Event()
    moto_proxy.on_request(rb"^POST /[^ ]*uploadId=", stop.set)  # CompleteMultipartUpload, passed on after this
    seen = len(moto_proxy.request_heads)
    with s3_store.client(**kw) as client, stop_when(stop):
        with pytest.raises(Stopped):
            client.upload(str(src))
    completed = [h for h in moto_proxy.request_heads[seen:] if re.match(rb"^POST /[^ ]*uploadId=", h)]
    assert stop.is_set() and completed
    assert s3_store.keys() == keys and _current(s3_store) == version  # its data was removed


def test_a_download_stopped_mid_fetch_leaves_dest_as_it_was(s3_store: Store, moto_proxy: CuttingProxy,
                                                             tmp_path: Path) -> None:
    kw = _s3_via(moto_proxy)
    _stored_v1(s3_store, tmp_path, size=48 * MiB, **kw)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    stop = threading.Event()
    moto_proxy.on_request(rb"^GET /[^ ]*/data/", lambda: (stop.set(), threading.Event().wait(0.5)))
    before = moto_proxy.bytes_down
    with s3_store.client(**kw) as client, stop_when(stop):
        with pytest.raises(Stopped):
            client.download("data.bin", str(dest))
    assert moto_proxy.bytes_down - before < 32 * MiB  # it stopped fetching (some was in socket buffers)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    with s3_store.client(**kw) as client:  # what it fetched does not spoil the next download
        path = client.download("data.bin", str(dest)).unwrap().path
    assert Path(path).read_bytes() == s3_store.read(_data_key(s3_store))


def _data_key(store: Store) -> str:
    return next(k for k in store.keys() if "/data/" in k)


def test_a_stop_set_mid_transfer_leaves_the_store_and_dest_as_they_were(store: Store, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Set as the first bytes are counted (on LOCAL in the copying thread, on S3 in s3transfer's), the bytes then
    coming slower than the stop is looked at (on 127.0.0.1 the whole file went in that time)."""
    src, version, keys = _stored_v1(store, tmp_path, size=24 * MiB)
    stop = threading.Event()
    counted: list[int] = []
    _counting_bar(monkeypatch, counted, stop)
    dest = tmp_path / "dest"
    with store.client() as client, stop_when(stop):
        with pytest.raises(Stopped):
            client.upload(str(src), show_progress=True)
        assert 0 < sum(counted) < 24 * MiB and store.keys() == keys and _current(store) == version
        counted.clear()
        stop.clear()
        with pytest.raises(Stopped):
            client.download("data.bin", str(dest), show_progress=True)
        assert 0 < sum(counted) < 24 * MiB
    assert not dest.exists() or not list(dest.iterdir())


def _counting_bar(monkeypatch: pytest.MonkeyPatch, counted: list[int], stop: threading.Event | None = None) -> None:
    """Progress bars that count the bytes they are told of (and set `stop` at the first, each then taking two of the
    stop's polls: a slow link)."""
    import fedml_storage.progress

    class Bar(fedml_storage.progress.tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            counted.append(int(n or 0))
            if stop is not None:
                stop.set()
                threading.Event().wait(2 * stops.POLL_SECONDS)
            return super().update(n)

    monkeypatch.setattr(fedml_storage.progress, "tqdm", Bar)


def test_a_stopped_folder_upload_does_not_pack_the_rest_of_the_folder(s3_store: Store, moto_proxy: CuttingProxy,
                                                                       tmp_path: Path, monkeypatch) -> None:
    """s3transfer reads a stream to its end before a cancelled upload ends: the whole folder was packed first."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(64):
        (folder / f"{i:02}.bin").write_bytes(os.urandom(MiB))
    stop = threading.Event()
    moto_proxy.on_request(rb"^PUT /[^ ]*/data/[^ ]*partNumber=", lambda: (stop.set(), threading.Event().wait(0.5)))
    counted: list[int] = []
    _counting_bar(monkeypatch, counted)
    with s3_store.client(**_s3_via(moto_proxy)) as client, stop_when(stop):
        with pytest.raises(Stopped):
            client.upload(str(folder), show_progress=True)
    assert stop.is_set() and sum(counted) < 48 * MiB and s3_store.keys() == []


def test_a_stop_ends_the_hashing_of_a_changed_folder(tmp_path: Path, monkeypatch) -> None:
    """A changed folder of the same shape is hashed first (to send nothing if its content is the same): the helper
    threads did not see the stop, and the call waited for every file."""
    from fedml_storage import StorageClient, StorageSettings, local_match

    folder = tmp_path / "same-shape"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i:03}.txt").write_text(f"{i:03}")
    with StorageClient(StorageSettings(service="LOCAL", local_root=str(tmp_path / "store"))) as client:
        version = client.upload(str(folder)).unwrap().version
        for i in range(300):
            (folder / f"{i:03}.txt").write_text(f"{i + 1:03}")
        stop, hashed = threading.Event(), []
        original = local_match.sha256_file

        def slow(*args, **kwargs):  # a slow disk: each file takes a while
            stop.set()
            hashed.append(1)
            threading.Event().wait(0.01)
            return original(*args, **kwargs)

        monkeypatch.setattr(local_match, "sha256_file", slow)
        with stop_when(stop), pytest.raises(Stopped):
            client.upload(str(folder))
        monkeypatch.undo()
        assert 0 < len(hashed) < 300 and client.get_metadata("same-shape").unwrap().version == version


def test_ctrl_c_while_a_folder_is_hashed_ends_the_helper_threads_within_a_file(tmp_path: Path, monkeypatch) -> None:
    """The helper threads do not see Ctrl-C: the call waited for every group of files already started."""
    from fedml_storage import local_match
    from fedml_storage.digests import DigestCache
    from fedml_storage.trees import scan_tree

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(512):  # two groups of 256 files of 20 KiB: large enough for the helper threads
        (folder / f"{i:03}.txt").write_bytes(os.urandom(20 << 10))
    hashed: list[str] = []
    original = local_match.sha256_file

    def slow(path, *args, **kwargs):  # a slow disk
        hashed.append(path)
        threading.Event().wait(0.005)
        return original(path, *args, **kwargs)

    def ctrl_c(future):  # while the caller waits for the first group
        threading.Event().wait(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(local_match, "sha256_file", slow)
    monkeypatch.setattr(local_match.stops, "result", ctrl_c)
    tree, cache = scan_tree(folder), DigestCache(tmp_path / "cache.sqlite")
    try:
        with pytest.raises(KeyboardInterrupt):
            local_match.digest_tree(tree.entries, cache)
    finally:
        tree.entries.close()
        cache.close()
    assert 0 < len(hashed) < 100  # two groups of 256 had started


def test_a_stop_during_a_commit_retry_does_not_deny_a_publish_that_landed(tmp_path: Path, monkeypatch) -> None:
    """The catalog write landed, its answer was lost and another writer built on it; the stop came then. The retry
    must find the upload published and say so, not raise Stopped ("nothing was published")."""
    import json

    from fedml_storage import StorageClient, StorageSettings
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.errors import PreconditionFailed

    src = tmp_path / "a.bin"
    src.write_bytes(b"v1")
    client = StorageClient(StorageSettings(service="LOCAL", local_root=str(tmp_path / "store")))
    client.upload(str(src)).unwrap()
    src.write_bytes(b"v2 content")
    stop = threading.Event()
    real = LocalStore.write_bytes

    def answer_lost(self, key, data, **kw):
        etag = real(self, key, data, **kw)
        if key.endswith("manifests/a.bin.json") and not stop.is_set():
            other = json.loads(data)
            other["description"] = "another writer's, on top"
            real(self, key, json.dumps(other).encode())
            stop.set()
            raise PreconditionFailed(key)  # what a retried PUT, whose first answer was lost, sees
        return etag

    monkeypatch.setattr(LocalStore, "write_bytes", answer_lost)
    with stop_when(stop):
        response = client.upload(str(src))
    assert stop.is_set() and response.code == ResponseCode.SUCCESS, response.message
    assert client.download("a.bin", str(tmp_path / "out")).unwrap().path == str(tmp_path / "out" / "a.bin")
    assert (tmp_path / "out" / "a.bin").read_bytes() == b"v2 content"


def test_a_stop_as_the_folder_producer_closes_the_stream_does_not_hang(s3_store: Store, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its last push failed once the reader was given up, outside the producer's clean-up: the pipe never ended and
    s3transfer's reading thread (and the stopped call with it) waited for ever."""
    from fedml_storage import streams

    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.bin").write_bytes(os.urandom(3 * MiB))
    stop = threading.Event()
    real_close = streams.BoundedPipe.close

    def close(self) -> None:  # the producer reaches its last push just as the caller stops
        stop.set()
        for _ in range(500):
            if self._reader_gone:
                break
            threading.Event().wait(0.01)
        return real_close(self)

    monkeypatch.setattr(streams.BoundedPipe, "close", close)
    ended: list[BaseException] = []

    def call() -> None:
        with s3_store.client(part_size=5 * MiB) as client, stop_when(stop):
            try:
                client.upload(str(folder))
            except BaseException as exc:
                ended.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the stopped upload never returned"
    assert [type(e) for e in ended] == [Stopped] and s3_store.keys() == []


def test_a_pipe_given_up_by_its_reader_fails_a_read_still_waiting() -> None:
    from fedml_storage.streams import BoundedPipe

    pipe = BoundedPipe(limit=MiB)
    got: list[object] = []

    def read() -> None:
        try:
            got.append(pipe.read(5 * MiB))
        except BaseException as exc:
            got.append(exc)

    waiting, real_wait = threading.Event(), pipe._cond.wait

    def wait(*args, **kwargs):  # the read is about to wait for data (close_reader takes the lock once it does)
        waiting.set()
        return real_wait(*args, **kwargs)

    pipe._cond.wait = wait
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert waiting.wait(5)
    pipe.close_reader()
    reader.join(5)
    assert [type(g) for g in got] == [BrokenPipeError]


def test_a_stop_during_a_commit_lost_to_another_writer_publishes_nothing(tmp_path: Path, monkeypatch) -> None:
    """Another writer's commit came first (this one's did not land); the stop came then: the retry published."""
    import json

    from fedml_storage import StorageClient, StorageSettings
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.errors import PreconditionFailed

    src = tmp_path / "a.bin"
    src.write_bytes(b"v1")
    client = StorageClient(StorageSettings(service="LOCAL", local_root=str(tmp_path / "store")))
    version = client.upload(str(src)).unwrap().version
    src.write_bytes(b"v2 content")
    stop = threading.Event()
    real = LocalStore.write_bytes

    def other_writer_first(self, key, data, **kw):
        if key.endswith("manifests/a.bin.json") and not stop.is_set():
            current = json.loads(self.read_bytes(key)[0])
            current["description"] = "another writer's"
            real(self, key, json.dumps(current).encode())  # the other writer's commit lands; this one's does not
            stop.set()
            raise PreconditionFailed(key)
        return real(self, key, data, **kw)

    monkeypatch.setattr(LocalStore, "write_bytes", other_writer_first)
    with stop_when(stop), pytest.raises(Stopped):
        client.upload(str(src))
    monkeypatch.undo()
    meta = client.get_metadata("a.bin").unwrap()
    assert meta.version == version and meta.description == "another writer's"
    assert len([k for k in (tmp_path / "store").rglob("*") if k.is_file() and "/data/" in k.as_posix()]) == 1


def test_a_stoppable_call_says_how_it_ended_and_never_starts_once_stopped() -> None:
    calls: list[str] = []
    early = StoppableCall(lambda: calls.append("made"))
    assert early.stop() is False  # had not started
    with pytest.raises(Stopped):
        early.run()
    assert calls == [] and early.outcome == "waiting" and early.ended.is_set()

    waiting = StoppableCall(lambda: stops.wait_event(threading.Event()))  # waits until stopped
    raised: list[BaseException] = []

    def work() -> None:
        try:
            waiting.run()
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    while waiting.outcome == "waiting":
        worker.join(0.01)
    assert waiting.stop() is True
    assert waiting.ended.wait(10) and waiting.outcome == "stopped"
    worker.join()
    assert [type(exc) for exc in raised] == [Stopped]

    assert StoppableCall(lambda: 7).run() == 7
    failing = StoppableCall(lambda: {}["x"])
    with pytest.raises(KeyError):
        failing.run()
    assert failing.outcome == "KeyError" and failing.ended.is_set()
