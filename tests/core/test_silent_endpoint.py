"""An endpoint that takes the connection and never answers: the user hears of it at each attempt, not only once
every attempt has timed out (60 s x 6 attempts by default: six minutes of silence)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fedml_storage import ResponseCode, StorageClient
from tests.conftest import TEST_API_KEY


_HELD: dict[str, list[socket.socket]] = {}  # the connections each silent endpoint took


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])  # read nothing, answer nothing
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    _HELD[endpoint] = held
    yield endpoint
    server.close()
    for conn in held:
        conn.close()


def test_a_store_that_never_answers_is_reported_at_each_attempt(silent_endpoint: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=silent_endpoint, bucket="b",
                       region="us-east-1", read_timeout=1, max_attempts=3) as client:
        response = client.get_metadata("ds")
    assert response.code == ResponseCode.ERROR and response.retryable and "read_timeout" in response.message
    said = [r.getMessage() for r in caplog.records if r.name == "fedml_storage" and r.levelname == "WARNING"]
    # attempts 1 and 2; the 3rd is the error
    assert [m.split(" (")[0] for m in said] == [f"no answer from {silent_endpoint} in time"] * 2, said
    assert "attempt 1 of 3" in said[0] and "check endpoint_url" in said[0]


class _TaskTimeout(BaseException):
    """What a framework raises in the main thread at a task's timeout (Airflow's AirflowTaskTimeout is one)."""


def test_an_interrupted_upload_leaves_no_thread_asking_again(silent_endpoint: str, tmp_path) -> None:
    """The upload's manifest read runs beside the tree scan: interrupted, the upload returned at once, but that
    thread went on asking (max_attempts x read_timeout), and the interpreter waited for it before exiting."""
    import signal

    (tmp_path / "f.txt").write_text("x")
    held = _HELD[silent_endpoint]

    raised: list[float] = []

    def timeout(*_):  # once the read's request is in flight
        if held and not raised:
            raised.append(time.monotonic())
            raise _TaskTimeout()

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=silent_endpoint, bucket="b",
                           region="us-east-1", read_timeout=1, max_attempts=4) as client:
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            with pytest.raises(_TaskTimeout):
                client.upload(str(tmp_path / "f.txt"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # the read still in flight is none the interpreter waits for at exit: a pool's thread (never a daemon) kept the
    # process of a timed-out Prefect flow alive for read_timeout (helper-95)
    assert [t.name for t in threading.enumerate() if t.name.startswith("fedml-storage-read") and not t.daemon] == []
    # past the attempt in flight (read_timeout 1 s) and botocore's longest first backoff (2 s)
    time.sleep(max(0.0, raised[0] + 4.0 - time.monotonic()))
    assert len(held) == 1  # the attempt in flight ended it: not sent again
    assert not any(t.name.startswith("fedml-storage-read") for t in threading.enumerate())  # nothing to wait for


def test_only_jobs_running_when_given_up_are_abandoned() -> None:
    from fedml_storage.abandon import Helpers, abandoned

    helpers = Helpers()
    release, seen = threading.Event(), []
    finished = threading.Thread(target=helpers.job(lambda: seen.append(("finished", abandoned()))))
    finished.start()
    finished.join()

    started = threading.Event()

    def waits() -> None:
        started.set()
        release.wait(10)
        seen.append(("running", abandoned()))

    running = threading.Thread(target=helpers.job(waits))
    running.start()
    assert started.wait(10)
    helpers.give_up()
    release.set()
    running.join()
    later = threading.Thread(target=helpers.job(lambda: seen.append(("later", abandoned()))))
    later.start()
    later.join()
    assert seen == [("finished", False), ("running", True), ("later", False)]
    assert not abandoned()  # nor the caller


def test_an_interrupted_listing_leaves_no_read_asking_again(s3_store, moto_proxy, tmp_path) -> None:
    """A listing reads the catalog entries in parallel: interrupted while the store is silent, each read in flight
    went on asking (max_attempts x read_timeout) and the listing waited for them before it raised."""
    import signal

    for name in ("a", "b", "c"):
        (tmp_path / name).write_text(name)
        assert s3_store.client().upload(str(tmp_path / name)).code == ResponseCode.SUCCESS
    manifest_get = rb"^GET /[^ ?]*/manifests/"
    for _ in range(12):  # every attempt at a catalog entry gets no answer in time
        moto_proxy.on_request(manifest_get, lambda: time.sleep(6))
    asked = lambda: [h for h in moto_proxy.request_heads if re.match(manifest_get, h)]  # noqa: E731

    raised: list[float] = []

    def timeout(*_):  # once the reads are in flight
        if asked() and not raised:
            raised.append(time.monotonic())
            raise _TaskTimeout()

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        with s3_store.client(endpoint_url=moto_proxy.endpoint, read_timeout=1, max_attempts=4) as client:
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            with pytest.raises(_TaskTimeout):
                client.list()
            signal.setitimer(signal.ITIMER_REAL, 0)
            in_flight = len(asked())
            # past the attempts in flight (read_timeout 1 s) and botocore's longest first backoff (2 s)
            time.sleep(max(0.0, raised[0] + 4.0 - time.monotonic()))
            assert len(asked()) == in_flight <= 3  # not sent again
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not any(t.name.startswith("fedml-storage-list") for t in threading.enumerate())


def test_once_a_job_fails_the_jobs_not_started_are_dropped() -> None:
    """A listing or clean-up reads in parallel: after a failure (or the caller's interrupt) the reads still queued
    were all made before it raised."""
    from fedml_storage.abandon import parallel_map

    ran: list[int] = []

    def read(i: int) -> int:
        if i == 0:
            raise ValueError("unreadable")
        time.sleep(0.02)
        ran.append(i)
        return i

    assert parallel_map(read, list(range(1, 6)), 2, "test") == [1, 2, 3, 4, 5]
    ran.clear()
    with pytest.raises(ValueError, match="unreadable"):
        parallel_map(read, list(range(100)), 2, "test")
    assert len(ran) < 10, ran


def test_an_interrupted_upload_says_it_waits_for_its_requests_in_flight(s3_store, moto_proxy, tmp_path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Ctrl-C on a multipart upload waits for the parts in flight (so none completes it later), which on a slow link
    took long with nothing said (helper-94); then nothing is published and no multipart upload is left."""
    import signal

    from tests.conftest import s3_client

    src = tmp_path / "big.bin"
    src.write_bytes(b"\0" * (12 << 20))  # three 5 MiB parts
    moto_proxy.delay_answer("partNumber=", 2, times=3)  # the parts sent whole, their answers slow to come

    def interrupt(*_):  # once a part is whole at the store, its answer held back (sooner, s3transfer stops sending
        if moto_proxy.held:  # the parts at once: nothing is left to wait for)
            signal.setitimer(signal.ITIMER_REAL, 0)
            raise _TaskTimeout()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with s3_store.client(endpoint_url=moto_proxy.endpoint, part_size=5 << 20) as client:
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            with pytest.raises(_TaskTimeout):
                client.upload(str(src))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    said = [r.getMessage() for r in caplog.records if r.name == "fedml_storage" and r.levelname == "WARNING"]
    assert any(m.startswith("stopping: waiting for the requests in flight to end") for m in said), said
    assert s3_store.client().get_metadata("big.bin").reason == "not_found"
    assert s3_client(s3_store.endpoint).list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []
