"""Request bodies are bounded on every route, at the socket: a Content-Length over the limit is refused
before a byte of the body is sent, a chunked body is cut off once it passes the limit, and a slow-loris
body that trickles in is answered 408 once VQSERVE_BODY_TIMEOUT_S has passed, while other clients are
served normally.

A real uvicorn on 127.0.0.1 (in a thread of this process) and raw sockets, so nothing buffers the body for
us."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.images import png
from tests.support.servers import Server, serve_in_thread

pytestmark = pytest.mark.timeout(120)
LIMIT = 100_000
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tiny_64ch_checkpoint: Path) -> Iterator[Server]:
    with serve_in_thread(tiny_64ch_checkpoint, max_body_bytes=LIMIT, body_timeout_s=BODY_TIMEOUT_S) as running:
        yield running


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def head(method: str, path: str, host: str, extra: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def png_headers(length: int) -> str:
    return f"Content-Type: image/png\r\nContent-Length: {length}\r\n"


def every_route(server: Server) -> list[tuple[str, str]]:
    """(method, path) for every operation of the app's own OpenAPI schema, plus the page at /."""
    schema = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    routes = [("GET", "/"), ("POST", "/")]
    for path, operations in schema["paths"].items():
        concrete = path.replace("{name}", "default").replace("{version}", "1")
        routes += [(method.upper(), concrete) for method in operations]
    return routes


def test_oversize_content_length_refused_on_every_route_before_the_body(server: Server) -> None:
    host, port = server.host_port
    routes = every_route(server)
    assert len(routes) >= 20
    for method, path in routes:
        with socket.create_connection((host, port), timeout=10) as sock:
            extra = f"Content-Type: application/octet-stream\r\nContent-Length: {64 * 1024 * 1024 * 1024}\r\n"
            sock.sendall(head(method, path, host, extra))  # headers only: the 64 GiB body never comes
            started = time.monotonic()
            status, headers, body = read_response(sock, timeout=5)
            assert time.monotonic() - started < 5
        assert status == 413, (method, path, status, body[:200])
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["code"] == "body_too_large"


CHUNKED_PATHS = ["/encode", "/decode", "/reconstruct", "/remote/decode", "/v2/models/default/infer"]


@pytest.mark.parametrize("path", CHUNKED_PATHS)
def test_chunked_body_cut_off_at_the_limit(server: Server, path: str) -> None:
    host, port = server.host_port
    with socket.create_connection((host, port), timeout=10) as sock:
        chunked = "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
        sock.sendall(head("POST", path, host, chunked))
        chunk = b"\x00" * 16_384
        sent = 0
        try:
            while sent < 4 * LIMIT:  # the server answers (and may close) once it has seen LIMIT bytes
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = read_response(sock, timeout=10)
    assert status == 413, body[:300]
    error = json.loads(body)["error"]
    if path.startswith("/v2/"):  # the Open Inference Protocol's own error shape: {"error": "<message>"}
        assert "limit" in error
    else:
        assert error["code"] == "body_too_large"


def test_slow_loris_body_answered_408_while_others_are_served(server: Server) -> None:
    host, port = server.host_port
    data = png(16, 16)
    outcome: dict[str, object] = {}

    def trickle() -> None:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(head("POST", "/encode", host, png_headers(len(data))))
            started = time.monotonic()
            try:
                for byte in data:  # one byte every 100 ms: the whole file would take minutes
                    if select.select([sock], [], [], 0.1)[0]:
                        break  # the server answered
                    sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                pass
            outcome["reply"] = read_response(sock, timeout=10)
            outcome["seconds"] = time.monotonic() - started

    slow = threading.Thread(target=trickle)
    slow.start()
    time.sleep(0.3)
    # a well-behaved client is served while the slow one trickles
    ok = httpx.post(f"{server.url}/encode", content=data, headers={"content-type": "image/png"}, timeout=30)
    assert ok.status_code == 200
    slow.join(timeout=30)
    status, _, body = outcome["reply"]  # type: ignore[misc]
    assert status == 408, body
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert BODY_TIMEOUT_S - 0.1 <= outcome["seconds"] < BODY_TIMEOUT_S + 3  # type: ignore[operator]
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_a_body_within_both_bounds_is_served(server: Server) -> None:
    """The guard is transparent: a body under the limit, sent in pieces within the timeout, goes through."""
    host, port = server.host_port
    data = png(16, 16)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head("POST", "/encode", host, png_headers(len(data))))
        for start in range(0, len(data), 200):
            sock.sendall(data[start : start + 200])
            time.sleep(0.01)
        status, _, body = read_response(sock, timeout=10)
    assert status == 200, body
    assert json.loads(body)["shape"] == [8, 8]
