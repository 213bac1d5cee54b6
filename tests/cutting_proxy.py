"""A TCP proxy in front of a real server that can break connections mid-response, as a flaky network does."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to `upstream`; each armed cut resets the first connection that has sent that
    many bytes back to its client (an abrupt RST, the client sees a broken read)."""

    def __init__(self, upstream: tuple[str, int], *, strip_ranges: bool = False) -> None:
        self._upstream = upstream
        # request headers dropped: Range (a server that does not serve byte ranges), conditions (one that ignores them)
        self._stripped: list[str] = ["range"] if strip_ranges else []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self._cuts: list[int] = []
        self._header_cuts: list[tuple[bytes, int, float]] = []
        self.request_heads: list[bytes] = []  # the head (request line and headers) of every request seen
        self._rewrites: list[tuple[bytes, bytes, bytes]] = []
        self._hooks: list[tuple[re.Pattern[bytes], Callable[[], object]]] = []
        self._answers: list[tuple[re.Pattern[bytes], bytes]] = []
        self._flips: list[tuple[bytes, int]] = []
        self._answer_delays: list[tuple[bytes, float]] = []
        self.rewritten = 0
        self.held = 0  # answers held back so far: the server had each one's whole request
        self.cut = 0  # connections cut so far
        self.flipped = 0  # answer bytes damaged so far
        self.bytes_down = 0  # response bytes passed to clients, all connections
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, *thresholds: int) -> None:
        with self._lock:
            self._cuts.extend(thresholds)

    def on_request(self, pattern: bytes, action: Callable[[], object]) -> None:
        """Call `action` (once) in the proxy's thread when a request whose head matches `pattern` arrives, before
        it is passed on."""
        with self._lock:
            self._hooks.append((re.compile(pattern), action))

    def strip_headers(self, *names: str) -> None:
        """Drop these headers from every request from now on (a server that ignores what they ask)."""
        with self._lock:
            self._stripped.extend(name.lower() for name in names)

    def disarm(self) -> None:
        """Drop the cuts not used yet."""
        with self._lock:
            self._cuts.clear()
            self._header_cuts.clear()

    def cut_headers(self, request_part: str, at: int, times: int = 1, stall: float = 0) -> None:
        """Close the connection cleanly (FIN) `at` bytes into the response to the next `times` requests whose
        request line or headers hold `request_part`: inside its headers, which http.client then takes as complete. With
        `stall`, first send nothing more for that many seconds (a server that stopped sending)."""
        with self._lock:
            self._header_cuts.extend([(request_part.encode(), at, stall)] * times)

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            conn = {"request": b""}  # the head of the request last sent on this connection
            threading.Thread(target=self._pipe, args=(client, upstream, False, conn), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True, conn), daemon=True).start()

    def flip_byte(self, request_part: str, at: int) -> None:
        """Invert (once) the byte `at` bytes into the body of the answer to the next request whose line or headers
        hold `request_part`: data damaged in transit."""
        with self._lock:
            self._flips.append((request_part.encode(), at))

    def delay_answer(self, request_part: str, seconds: float, times: int = 1) -> None:
        """Hold the answers to the next `times` requests whose line or headers hold `request_part` for `seconds`
        (a store slow to answer once it has the whole request)."""
        with self._lock:
            self._answer_delays.extend([(request_part.encode(), seconds)] * times)

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool, conn: dict[str, Any]) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if not down and self._stripped:
                    names = "|".join(map(re.escape, self._stripped)).encode()
                    data = re.sub(rb"\r\n(?:" + names + rb"): [^\r]*", b"", data, flags=re.IGNORECASE)
                if not down and re.match(rb"[A-Z]+ /", data):
                    conn["request"] = data.split(b"\r\n\r\n", 1)[0]
                    self.request_heads.append(conn["request"])
                    with self._lock:
                        hook = next((h for h in self._hooks if h[0].search(conn["request"])), None)
                        if hook is not None:
                            self._hooks.remove(hook)
                    if hook is not None:
                        hook[1]()
                    if (answer := self._answer_for(conn["request"])) is not None:
                        _skip_body(src, data)
                        src.sendall(answer)
                        continue  # the server never sees this request
                if down and re.match(rb"HTTP/1\.. [2-5]", data):
                    if (pause := self._take(self._answer_delays, conn["request"])) is not None:
                        with self._lock:
                            self.held += 1
                        time.sleep(pause[1])
                    data = self._rewritten(conn["request"], data)
                    if self._cut_headers_now(conn["request"], data, dst):
                        break
                    if (flip := self._take(self._flips, conn["request"])) is not None:  # (headers in one read)
                        conn["flip_at"] = sent + data.index(b"\r\n\r\n") + 4 + flip[1]
                if down and sent <= conn.get("flip_at", -1) < sent + len(data):
                    i = conn.pop("flip_at") - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                    self.flipped += 1
                if down:
                    with self._lock:
                        if self._cuts and sent + len(data) > self._cuts[0]:
                            keep = max(self._cuts.pop(0) - sent, 0)
                            dst.sendall(data[:keep])
                            self.bytes_down += keep
                            time.sleep(0.2)  # the client reads what came (a reset drops unread data), then
                            self.cut += 1
                            dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            dst.shutdown(socket.SHUT_RD)  # wakes the other direction's recv: its close sends the RST
                            break
                        self.bytes_down += len(data)
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def answer(self, pattern: bytes, status: str, code: str, message: str, times: int = 1, page: bool = False) -> None:
        """Answer the next `times` requests whose head matches `pattern` with an S3 error, instead of the server
        (a store without the feature the request asks for); `page`: with an HTML page of the proxy's own instead."""
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                "</Error>").encode()
        kind = "text/html" if page else "application/xml"
        if page:
            body = f"<!doctype html><html><body><h1>{status}</h1><p>{message}</p></body></html>".encode()
        head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
        with self._lock:
            self._answers.extend([(re.compile(pattern), head.encode() + body)] * times)

    def _answer_for(self, request: bytes) -> bytes | None:
        with self._lock:
            rule = next((r for r in self._answers if r[0].search(request)), None)
            if rule is not None:
                self._answers.remove(rule)
        return None if rule is None else rule[1]

    def rewrite_answer(self, request_part: str, pattern: bytes, replacement: bytes) -> None:
        """Rewrite (once) the head of the answer to the next request whose line or headers hold `request_part`."""
        with self._lock:
            self._rewrites.append((request_part.encode(), pattern, replacement))

    def _take(self, rules: list, request: bytes) -> tuple | None:
        """The first rule whose request part is in `request`, removed from `rules` (each applies once)."""
        with self._lock:
            rule = next((r for r in rules if r[0] in request), None)
            if rule is not None:
                rules.remove(rule)
            return rule

    def _rewritten(self, request: bytes, data: bytes) -> bytes:
        rule = self._take(self._rewrites, request)
        if rule is None:
            return data
        self.rewritten += 1
        return re.sub(rule[1], rule[2], data, count=1)

    def _cut_headers_now(self, request: bytes, data: bytes, dst: socket.socket) -> bool:
        rule = self._take(self._header_cuts, request)
        if rule is None:
            return False
        self.cut += 1
        dst.sendall(data[: rule[1]])
        time.sleep(rule[2])
        dst.shutdown(socket.SHUT_WR)  # a clean close, not a reset
        return True


def _skip_body(src: socket.socket, data: bytes) -> None:
    """Read and drop the rest of the request whose first bytes are `data` (by its Content-Length)."""
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    left = (int(length.group(1)) if length else 0) - len(body)
    while left > 0 and (chunk := src.recv(min(left, 65536))):
        left -= len(chunk)
