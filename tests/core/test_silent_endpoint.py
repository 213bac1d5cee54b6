"""An endpoint that takes the connection and never answers: the user hears of it at each attempt, not only once
every attempt has timed out (60 s x 6 attempts by default: six minutes of silence)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from fedml_storage import ResponseCode, StorageClient
from tests.conftest import TEST_API_KEY


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
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
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
