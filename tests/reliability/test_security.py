"""Security: API keys are checked against every configured key in constant time and never written to the
logs; no endpoint opens a file named by the client; CORS is off unless origins are configured, and then
only for them. (Body limits on every route: `test_body_limits.py`.)"""

from __future__ import annotations

import base64
import hmac
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service import deps
from service.settings import Settings
from tests.support.constants import PNG
from tests.support.images import png
from tests.support.servers import app_client, serving_checkpoint

from . import inputs

pytestmark = pytest.mark.timeout(120)
KEYS = ("k3y-Alpha-7d1c9e", "k3y-Bravo-52aa0f", "k3y-Charlie-e81b44")
WRONG = "k3y-Wrong-0badc0ffee"


@pytest.fixture(scope="module")
def keyed(tiny_64ch_checkpoint: Path) -> Iterator[TestClient]:
    with app_client(tiny_64ch_checkpoint, torch_threads=1, api_keys=list(KEYS)) as client:
        yield client


# API keys
def test_keys_guard_inference_and_models_but_not_health(keyed: TestClient) -> None:
    guarded = [
        ("POST", "/encode"),
        ("POST", "/decode"),
        ("POST", "/reconstruct"),
        ("POST", "/remote/decode"),
        ("POST", "/remote/encode"),
        ("POST", "/v2/models/default/infer"),
        ("GET", "/models"),
        ("GET", "/models/default"),
        ("GET", "/models/default/codebook/colors"),
        ("GET", "/v2/models/default"),
    ]
    for method, path in guarded:
        for auth in (None, f"Bearer {WRONG}", f"Basic {KEYS[0]}", KEYS[0], "Bearer "):
            headers = {**PNG, **({"authorization": auth} if auth else {})}
            reply = keyed.request(method, path, content=png(), headers=headers)
            assert reply.status_code == 401, (method, path, auth, reply.status_code)
            assert WRONG not in reply.text
            assert KEYS[0] not in reply.text
    for key in KEYS:  # every configured key works
        reply = keyed.post("/encode", content=png(), headers={**PNG, "authorization": f"Bearer {key}"})
        assert reply.status_code == 200
    reply = keyed.post("/encode", content=png(), headers=PNG)
    assert reply.json()["error"]["code"] == "unauthorized"
    assert reply.headers["www-authenticate"] == "Bearer"
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"):
        assert keyed.get(path).status_code == 200, path


def test_every_key_is_compared_in_constant_time(keyed: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each request compares the given token with every key through hmac.compare_digest (no `==`, no
    early exit on a match), so the time taken does not depend on which key, or how much of one, was
    guessed."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    for token in (KEYS[0], KEYS[2], WRONG, KEYS[0][:-1], ""):
        calls.clear()
        keyed.get("/models", headers={"authorization": f"Bearer {token}"})
        assert [b for _, b in calls] == [k.encode() for k in KEYS], token
        assert all(a == token.encode() for a, _ in calls)


def test_keys_never_reach_the_logs(tiny_64ch_checkpoint: Path, tmp_path: Path) -> None:
    flags = ("--api-keys", ",".join(KEYS), "--log-level", "debug")
    with serving_checkpoint(tiny_64ch_checkpoint, tmp_path, *flags) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for token in (*KEYS, WRONG):
                for path in ("/encode", "/reconstruct", "/models"):
                    headers = {**PNG, "authorization": f"Bearer {token}", "x-request-id": "req-1"}
                    http.post(path, content=png(), headers=headers)
            # a key misplaced in the query string is not logged either (the access log has the path only)
            http.post("/encode", content=b"x", headers=PNG, params={"key": KEYS[1]})
            http.post(
                "/encode",
                content=inputs.truncated_png(),
                headers={**PNG, "authorization": f"Bearer {KEYS[0]}"},
            )
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        log = server.log_text()
    assert '"msg":"request"' in log  # the access log was written, at debug level
    assert log.count('"status":401') >= 3
    for secret in (*KEYS, WRONG):
        assert secret not in log, f"{secret} appears in the log"


# no client-given path is ever opened
def test_no_endpoint_opens_a_client_given_path(tiny_64ch_checkpoint: Path, tmp_path: Path) -> None:
    """Every parameter and body field of every operation gets the path of a real, readable image; an audit
    hook records every file the process opens meanwhile: that path is never among them."""
    canary = tmp_path / "canary.png"
    canary.write_bytes(png())
    names = (str(canary), f"file://{canary}", f"../../../../{canary}", str(canary.parent))
    opened: list[str] = []
    watching = [False]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if watching[0] and event == "open" and args and isinstance(args[0], str | bytes | Path):
            opened.append(str(args[0]))

    sys.addaudithook(hook)  # cannot be removed: it only records while `watching`
    with app_client(tiny_64ch_checkpoint, torch_threads=1) as client:
        schema = client.get("/openapi.json").json()
        watching[0] = True
        canary.read_bytes()  # the control: the hook does see this process open the canary
        assert [p for p in opened if "canary" in p]
        opened.clear()
        sent = 0
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                for name in names:
                    params = {p["name"]: name for p in operation.get("parameters", []) if p["in"] == "query"}
                    concrete = path.replace("{name}", name.replace("/", "%2F")).replace("{version}", "1")
                    text = base64.b64encode(name.encode()).decode()
                    bodies = [
                        ({"content-type": "application/json"}, _json_with(name, text)),
                        ({"content-type": "image/png"}, name.encode()),
                        ({"content-type": "text/uri-list"}, name.encode()),
                    ]
                    for headers, body in bodies:
                        client.request(method.upper(), concrete, params=params, content=body, headers=headers)
                        sent += 1
                    default = path.replace("{name}", "default").replace("{version}", "1")
                    client.post(default, params={"model": name})
                    sent += 1
        for name in names:
            reply = client.get(f"/static/{name}")
            assert reply.status_code == 404
            reply = client.get("/static/..%2F..%2F..%2Fpyproject.toml")
            assert b"[project]" not in reply.content
        watching[0] = False
    assert sent > 200
    assert not [p for p in opened if "canary" in p], opened


def _json_with(name: str, b64: str) -> bytes:
    import orjson

    return orjson.dumps(
        {
            "image": b64,
            "images": [b64],
            "path": name,
            "file": name,
            "model_path": name,
            "url": name,
            "indices": name,
        }
    )


# CORS
def test_cors_is_off_by_default(tiny_64ch_checkpoint: Path) -> None:
    with app_client(tiny_64ch_checkpoint, torch_threads=1) as client:
        origin = {"origin": "https://elsewhere.example"}
        preflight = client.options("/encode", headers={**origin, "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        reply = client.post("/encode", content=png(), headers={**PNG, **origin})
        assert reply.status_code == 200
        assert "access-control-allow-origin" not in reply.headers


def test_cors_allows_only_the_configured_origins(tiny_64ch_checkpoint: Path) -> None:
    allowed = "https://app.example"
    with app_client(tiny_64ch_checkpoint, torch_threads=1, cors_origins=[allowed], max_body_bytes=10_000) as client:
        preflight = client.options(
            "/encode",
            headers={
                "origin": allowed,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        reply = client.post("/encode", content=png(), headers={**PNG, "origin": allowed})
        assert reply.headers["access-control-allow-origin"] == allowed
        assert "x-request-id" in reply.headers["access-control-expose-headers"]
        # refusals carry the CORS headers too, so a browser page can read the JSON error
        too_big = client.post("/encode", content=b"\0" * 20_000, headers={**PNG, "origin": allowed})
        assert too_big.status_code == 413
        assert too_big.headers["access-control-allow-origin"] == allowed
        other = client.options(
            "/encode", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"
        evil = {**PNG, "origin": "https://evil.example"}
        reply = client.post("/encode", content=png(), headers=evil)
        assert "access-control-allow-origin" not in reply.headers


def test_cors_origins_setting_parses_a_comma_list() -> None:
    parsed = Settings(cors_origins="https://a.example, https://b.example")  # type: ignore[arg-type]
    assert parsed.cors_origins == ["https://a.example", "https://b.example"]
    assert Settings().cors_origins == []
