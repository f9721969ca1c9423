"""HEAD is answered on every route that answers GET, as GET is without the body (load balancers and uptime
checkers probe with HEAD; it was a 405 on /healthz, /readyz, /metrics and /models). Checked over every GET
route of the app, in-process, and over a real socket, where the connection stays usable after each HEAD."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.support.routes import routes_with_paths
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.timeout(120)
PATH_VALUES = {"name": "default", "version": "1", "name:path": "app.js"}
KEY = "k-head"


def concrete(path: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PATH_VALUES[m[1]], path)


def get_paths(routes: list[Any]) -> set[str]:
    """The path of every route that answers GET."""
    return {path for route, path in routes_with_paths(routes) if route.methods and "GET" in route.methods}


def get_routes(app: Any) -> list[str]:
    """The concrete path of every GET route of the app; the schema's GET operations are all among them."""
    paths = get_paths(app.routes)
    schema = {path for path, operations in app.openapi()["paths"].items() if "get" in operations}
    assert schema <= paths, schema - paths
    return sorted(concrete(path) for path in paths)


@pytest.fixture(scope="module", params=[False, True], ids=["open", "with api keys"])
def client(request: pytest.FixtureRequest, tiny_64ch_checkpoint: Path) -> Iterator[TestClient]:
    keys = [KEY] if request.param else []
    with TestClient(create_app(Settings(model_path=tiny_64ch_checkpoint, warmup=False, api_keys=keys))) as running:
        yield running


def test_every_get_route_answers_head_like_get_without_a_body(client: TestClient) -> None:
    paths = get_routes(client.app)
    assert {"/healthz", "/readyz", "/metrics", "/models", "/models/default", "/v2/health/live", "/"} <= set(paths)
    for auth in ({}, {"authorization": f"Bearer {KEY}"}):
        for path in paths:
            got, head = client.get(path, headers=auth), client.head(path, headers=auth)
            assert head.status_code == got.status_code, path
            assert head.status_code != 405, path
            assert head.content == b"", path
            assert head.headers.get("content-type") == got.headers.get("content-type"), path
            if path != "/metrics":  # its counters move between the two requests
                assert head.headers.get("content-length") == got.headers.get("content-length"), path


def test_head_on_a_post_only_route_is_405_like_get(client: TestClient) -> None:
    for path in ("/encode", "/decode", "/reconstruct"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 405
        assert head.headers["allow"] == got.headers["allow"] == "POST"
        assert head.content == b""


def test_the_access_log_says_head(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vqserve.access"):
        assert client.head("/healthz").status_code == 200
    (record,) = [r for r in caplog.records if r.name == "vqserve.access"]
    assert record.method == "HEAD"  # type: ignore[attr-defined]
    assert record.status == 200  # type: ignore[attr-defined]


def test_head_over_a_real_socket_keeps_the_connection_framed(tiny_64ch_checkpoint: Path) -> None:
    """Each HEAD reply carries GET's Content-Length and no body bytes: the next reply on the connection parses."""
    with (
        serve_in_thread(tiny_64ch_checkpoint) as server,
        socket.create_connection(server.host_port, timeout=10) as sock,
    ):
        sock.settimeout(10)
        for path in ("/healthz", "/readyz", "/metrics", "/models", "/v2/health/ready", "/"):
            sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), (path, head)
            assert rest == b"", path
            assert int(re.search(rb"content-length: (\d+)", head.lower())[1]) > 0, path  # type: ignore[index]
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
