"""The page and its files are served with the right content types; nothing outside `service/static/` is."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.routes.web import STATIC_DIR
from tests.support.constants import ROOT
from tests.support.servers import app_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def client(tiny_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_checkpoint) as test_client:
        yield test_client


def test_index_is_html_with_a_strict_csp(client: TestClient) -> None:
    reply = client.get("/")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>vqserve" in reply.text
    csp = reply.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert reply.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/downloads.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/index.html", "text/html; charset=utf-8"),
        ("/static/samples/astronaut.png", "image/png"),
        ("/static/samples/digit-7.png", "image/png"),
    ],
)
def test_static_files_have_their_content_types(client: TestClient, path: str, content_type: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == content_type
    assert reply.content == (STATIC_DIR / path.removeprefix("/static/")).read_bytes()


def test_page_references_only_files_that_are_served(client: TestClient) -> None:
    """No CDN and no dangling link: every src/href of the page is a local file the router serves."""
    page = client.get("/").text
    refs = re.findall(r'(?:src|href|data-sample)="([^"]+)"', page)
    local = [ref for ref in refs if ref not in ("/docs", "data:,")]  # API docs; the empty favicon
    assert local, "the page links no script, style or sample"
    for ref in local:
        assert not ref.startswith(("http:", "https:", "//")), ref
        path = ref if ref.startswith("/") else f"/static/{ref}"
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "path",
    [
        "/static/missing.js",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fsettings.py",
        "/static/",
        "/static/samples",
    ],
)
def test_unknown_or_escaping_paths_are_404_json(client: TestClient, path: str) -> None:
    reply = client.get(path)
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_static_files_are_packaged() -> None:
    """pyproject's package-data must ship service/static, or an installed service serves an empty page."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'service = ["static/**/*"]' in pyproject
    assert (STATIC_DIR / "index.html").is_file()
