"""GET / and /static/...: the page that shows what a VQ model does to an image (issue 9).

The page is plain HTML, CSS and JavaScript shipped inside the package (`service/static/`) and talks to the
service only through the public API, so it doubles as a worked example of that API. This router only serves
files: the set of servable files is fixed when the module is imported (nothing outside `static/` can be named,
whatever the path says), and every reply carries a Content-Security-Policy that allows only this origin, so
the page provably works offline and cannot pull code from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..errors import ServiceError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# explicit types: mimetypes depends on the host's /etc/mime.types, and a wrong JS type breaks the page
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}

# blob: and data: for images the page builds itself (uploads, decoded PNGs, canvases)
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["web"], include_in_schema=False)


def _servable_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for every file of a known type under `root`."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


FILES = _servable_files(STATIC_DIR)


def _file_reply(name: str) -> Response:
    path = FILES.get(name)
    if path is None:
        raise ServiceError("not_found", f"no static file {name!r}; the page is at /")
    # revalidate every time: the files are tiny and a stale app.js after an upgrade would break the page
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=headers)


@router.get("/")
async def index() -> Response:
    """The web page: upload an image, see its codes, edit them."""
    return _file_reply("index.html")


@router.get("/static/{name:path}")
async def static_file(name: str) -> Response:
    """A file of the page (script, style sheet, bundled sample image)."""
    return _file_reply(name)
