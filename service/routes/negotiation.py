"""Content negotiation: which media type a request sent, and which of the offered ones its `Accept` prefers."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from starlette.requests import Request


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def negotiate(request: Request, offered: Sequence[str], override: str | None = None) -> str | None:
    """The offered media type the client prefers by `Accept` (q-values honoured); the first when unspecified.

    None when the client named only types that are not offered.
    """
    if override is not None:
        return override
    header = request.headers.get("accept", "").strip()
    if not header:
        return offered[0]
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        fields = [f.strip() for f in part.split(";")]
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        if fields[0] and quality > 0:
            ranked.append((-quality, position, fields[0].lower()))
    for _, _, wanted in sorted(ranked):
        if wanted in ("*/*", "*"):
            return offered[0]
        for candidate in offered:
            if wanted == candidate or (wanted.endswith("/*") and candidate.startswith(wanted[:-1])):
                return candidate
    return None
