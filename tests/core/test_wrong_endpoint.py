"""An endpoint_url that is an HTTP server but not an S3 API (a web app, MinIO's console port, a proxy's error
page): every call says so and what to check, at once, instead of an empty or misleading error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fedml_storage import ResponseCode, StorageClient
from tests.conftest import TEST_API_KEY
from tests.cutting_proxy import CuttingProxy

PAGE = b"<!doctype html><html><head><title>Console</title></head><body><div id=root></div></body></html>"
CHECK = "check that endpoint_url is the store's S3 API (for MinIO the API port"


@pytest.fixture
def web_server() -> Iterator[tuple[dict, str]]:
    """A web server answering every request with `answer["status"]` and an HTML page (with an ETag if asked)."""
    answer: dict = {"status": 200, "etag": False, "requests": 0, "bare": False}

    class Page(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            answer["requests"] += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(answer["status"])
            if answer["bare"]:  # no body at all, as some proxies and sandboxes answer
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_header("Content-Type", "text/html; charset=utf-8")
            if answer["etag"]:
                self.send_header("ETag", '"5f1-abc"')
                self.send_header("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(PAGE)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield answer, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _calls(client: StorageClient, tmp_path: Path) -> dict:
    (tmp_path / "ds").mkdir(exist_ok=True)
    (tmp_path / "ds" / "a.txt").write_text("a")
    return {"upload": lambda: client.upload(str(tmp_path / "ds")),
            "download": lambda: client.download("ds", str(tmp_path / "out")),
            "metadata": lambda: client.get_metadata("ds"),
            "list": client.list,
            "delete": lambda: client.delete("ds")}


@pytest.mark.parametrize(("status", "etag", "reason"), [
    (200, False, "not_configured"),  # a single-page app: every path is the page (a KeyError 'ETag' before)
    (200, True, "not_configured"),  # the same from a server that tags it (list said 'busy or failing (500)')
    (404, False, "not_configured"),  # said "refused the request (: )", and for a key read "no data named"
    (400, False, "not_configured"),
    (403, False, "access_denied"),  # a proxy's page: denied, but not by the store
])
def test_a_web_server_at_endpoint_url_is_named_as_such(web_server: tuple[dict, str], tmp_path: Path, status: int,
                                                        etag: bool, reason: str) -> None:
    answer, endpoint = web_server
    answer.update(status=status, etag=etag)
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=endpoint, bucket="b",
                       region="us-east-1") as client:
        for call, run in _calls(client, tmp_path).items():
            answer["requests"] = 0
            response = run()  # (a 404 page for a key read said "no data named 'ds'": helper-103)
            assert response.code == ResponseCode.FAILURE and response.reason == reason, (call, response)
            assert CHECK in response.message and endpoint in response.message, (call, response.message)
            assert f"HTTP {status}" in response.message or status == 200, (call, response.message)
            assert "try again" not in response.message, (call, response.message)
            assert answer["requests"] <= 3, (call, answer["requests"])  # not sent again and again
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("status", "reason", "words"), [
    (413, "not_configured", "client_max_body_size"),  # nginx in front of a real store: the advice is about it
    (429, "transient", "if this persists"),
    (401, "access_denied", "HTTP 401 Unauthorized"),
])
def test_a_proxys_own_error_page_is_told_apart(web_server: tuple[dict, str], tmp_path: Path, status: int,
                                               reason: str, words: str) -> None:
    answer, endpoint = web_server
    answer["status"] = status
    (tmp_path / "f.bin").write_bytes(b"x")
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=endpoint, bucket="b", region="us-east-1",
                       max_attempts=2) as client:
        response = client.list()
    assert response.reason == reason and words in response.message, response


def test_a_proxys_404_page_for_a_key_is_still_a_missing_key(moto_endpoint: str, s3_bucket: str,
                                                            moto_proxy: CuttingProxy, tmp_path: Path) -> None:
    """A proxy in front of a real store may put its own page on the store's 404 (helper-57): the store lists, so the
    name is missing; only where the listing is a page too is the endpoint no S3 API."""
    moto_proxy.answer(rb"^GET /[^ ]*/manifests/ds", "404 Not Found", "", "Not Found", times=6, page=True)
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=moto_proxy.endpoint, bucket=s3_bucket,
                       region="us-east-1") as client:
        for response in (client.get_metadata("ds"), client.download("ds", str(tmp_path / "out"))):
            assert response.reason == "not_found" and "no data named 'ds'" in response.message, response


def test_data_a_proxy_keeps_from_being_removed_after_a_publish_is_still_warned_of(
        moto_endpoint: str, s3_bucket: str, moto_proxy: CuttingProxy, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """Only a failed upload's removal is quiet when no store answers: after a publish, the replaced data stays."""
    (tmp_path / "f.bin").write_bytes(b"1")
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=moto_proxy.endpoint, bucket=s3_bucket,
                       region="us-east-1") as client:
        assert client.upload(str(tmp_path / "f.bin")).ok
        (tmp_path / "f.bin").write_bytes(b"2")
        moto_proxy.answer(rb"^(POST /[^ ]*\?delete|DELETE )", "405 Method Not Allowed", "", "Not Allowed", times=9,
                          page=True)
        assert client.upload(str(tmp_path / "f.bin")).ok  # published; the replaced version's data is left
    assert "could not remove unreferenced data" in caplog.text and "run cleanup() later" in caplog.text


def test_only_a_failure_of_no_store_keeps_a_failed_removal_quiet(isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A failed upload whose data was stored (a file changed during it, a conflict) left it in silence when its
    removal met a proxy's page (helper-105)."""
    from fedml_storage.backends.local import LocalStore
    from fedml_storage.errors import NotConfigured

    def no_store(self, keys):
        raise NotConfigured("answered HTTP 405 without an S3 error")

    monkeypatch.setattr(LocalStore, "delete_many", no_store)
    with StorageClient(service="LOCAL") as client:
        catalog = client._catalog()
        catalog.drop_data(["default/data/x/v/x"], cause=NotConfigured("answered HTTP 501"))
        assert "could not remove" not in caplog.text  # the upload's own failure says no store answered
        catalog.drop_data(["default/data/x/v/x"], cause=ValueError("x changed while it was being uploaded"))
    assert "could not remove unreferenced data (NotConfigured: answered HTTP 405" in caplog.text


def test_a_web_server_that_takes_only_get_is_not_asked_again(web_server: tuple[dict, str], tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """http.server answers 501 to a PUT: an upload was retried as a failure that may pass, each try warning that
    data it never stored was left for cleanup (helper-103)."""
    answer, endpoint = web_server
    answer["status"] = 501
    (tmp_path / "f.bin").write_bytes(b"x")
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=endpoint, bucket="b",
                       region="us-east-1") as client:
        response = client.upload(str(tmp_path / "f.bin"))
    assert response.reason == "not_configured" and not response.retryable, response
    assert "HTTP 501" in response.message and CHECK in response.message and "try again" not in response.message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_proxy_failing_with_a_page_may_pass_and_says_what_to_check_if_not(web_server: tuple[dict, str],
                                                                           tmp_path: Path) -> None:
    answer, endpoint = web_server
    answer["status"] = 502
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=endpoint, bucket="b", region="us-east-1",
                       max_attempts=2) as client:
        response = client.get_metadata("ds")
    assert response.code == ResponseCode.ERROR and response.retryable, response
    assert "502" in response.message and "if this persists" in response.message, response.message


def test_an_endpoint_answering_bare_404s_is_named_and_never_waited_on(web_server: tuple[dict, str],
                                                                      tmp_path: Path) -> None:
    """A listing said "unexpected ObjectMissing, please report", an upload the same, and a sensor's check said
    "not stored yet" until the sensor timed out."""
    answer, endpoint = web_server
    answer.update(status=404, bare=True)
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=endpoint, bucket="b",
                       region="us-east-1") as client:
        calls = _calls(client, tmp_path)
        for call in ("list", "upload"):
            response = calls[call]()
            assert response.code == ResponseCode.FAILURE and response.reason == "not_configured", (call, response)
            assert CHECK in response.message and "HTTP 404" in response.message, (call, response.message)
        waiting = client.ready("ds")
        assert waiting.code == ResponseCode.FAILURE and waiting.reason == "not_configured", waiting
        assert CHECK in waiting.message
    answer.update(status=404, bare=False)  # a web server's 404 page: the same
    with StorageClient(service="S3", api_key=TEST_API_KEY, endpoint_url=endpoint, bucket="b",
                       region="us-east-1") as client:
        assert client.ready("ds").reason == "not_configured"
