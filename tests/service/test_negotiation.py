"""Interfaces that behave as users expect (issue 19): `Accept: */*` gets the default representation, /reconstruct
answers JSON when asked, `format=jpg` is `jpeg`, one status for indices outside the codebook on every route, the
binary encode reply says each image's size, and /docs works offline."""

from __future__ import annotations

import base64
import io
import json
import re
from urllib.parse import urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.support.constants import PNG
from tests.support.images import decode_png, png

INDICES = np.random.default_rng(1).integers(0, 64, (2, 4, 4)).tolist()  # the tiny model has 64 codes


@pytest.mark.parametrize("accept", ["*/*", "", "image/png, */*;q=0.8", "application/*"])
def test_several_images_with_a_wildcard_get_json(client: TestClient, accept: str) -> None:
    """curl sends `Accept: */*`: two index maps must not be 406 because one PNG cannot hold them."""
    headers = {"accept": accept} if accept else {}
    reply = client.post("/decode", json={"indices": INDICES}, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert [decode_png(base64.b64decode(s)).shape for s in reply.json()["images"]] == [(8, 8, 3)] * 2


def test_one_image_with_a_wildcard_is_still_a_png(client: TestClient) -> None:
    reply = client.post("/decode", json={"indices": INDICES[0]}, headers={"accept": "*/*"})
    assert reply.headers["content-type"] == "image/png"
    assert decode_png(reply.content).shape == (8, 8, 3)


def test_several_images_asked_for_as_images_only_are_406(client: TestClient) -> None:
    for headers, query in (({"accept": "image/png"}, ""), ({"accept": "image/*"}, ""), ({}, "?format=png")):
        reply = client.post(f"/decode{query}", json={"indices": INDICES}, headers=headers)
        assert reply.status_code == 406, (headers, query)
        assert "application/json" in reply.json()["error"]["message"]


def test_reconstruct_answers_json_when_asked(client: TestClient) -> None:
    data = png(21, 30, seed=3)
    as_png = client.post("/reconstruct", content=data, headers=PNG)
    reply = client.post("/reconstruct", content=data, headers={**PNG, "accept": "application/json"})
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["model"] == "default"
    assert body["shape"] == [21, 30, 3]
    assert body["image_size"] == [21, 30]
    assert np.array_equal(decode_png(base64.b64decode(body["image"])), decode_png(as_png.content))
    assert body["psnr"] == pytest.approx(float(as_png.headers["x-psnr"]), abs=1e-3)
    assert float(reply.headers["x-psnr"]) == pytest.approx(body["psnr"], abs=1e-3)
    # */* is the default (a PNG); a type that cannot be offered is 406, not a PNG anyway
    assert (
        client.post("/reconstruct", content=data, headers={**PNG, "accept": "*/*"}).headers["content-type"]
        == "image/png"
    )
    refused = client.post("/reconstruct", content=data, headers={**PNG, "accept": "text/html"})
    assert refused.status_code == 406
    assert "application/json" in refused.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/decode", "/reconstruct"])
def test_format_jpg_is_jpeg(client: TestClient, path: str) -> None:
    if path == "/decode":
        reply = client.post("/decode?format=jpg", json={"indices": INDICES[0]})
    else:
        reply = client.post("/reconstruct?format=jpg", content=png(16, 16), headers=PNG)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(reply.content)) as im:
        assert im.format == "JPEG"


def test_remote_decode_takes_jpg_and_jpeg(client: TestClient) -> None:
    latents = np.zeros((1, 4, 4, 4), dtype="<f4").tobytes()
    for name in ("jpg", "jpeg"):
        query = f"/remote/decode?shape=1&shape=4&shape=4&shape=4&dtype=float32&image_format={name}&output_type=pil"
        reply = client.post(query, content=latents, headers={"content-type": "tensor/binary"})
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "image/jpeg"


def test_indices_outside_the_codebook_are_422_on_every_route(client: TestClient) -> None:
    """One status per error kind: /decode and /v2 (and the binary /decode) agree."""
    bad = [[0, 1], [2, 999]]
    as_json = client.post("/decode", json={"indices": bad})
    binary = client.post(
        "/decode?dtype=int32&shape=2&shape=2",
        content=np.asarray(bad, dtype="<i4").tobytes(),
        headers={"content-type": "tensor/binary"},
    )
    request = {"inputs": [{"name": "INDICES", "datatype": "INT32", "shape": [1, 2, 2], "data": sum(bad, [])}]}
    v2 = client.post("/v2/models/default/infer", json=request)
    assert (as_json.status_code, binary.status_code, v2.status_code) == (422, 422, 422)
    assert "[0, 64)" in as_json.json()["error"]["message"]
    assert "[0, 64)" in v2.json()["error"]  # the protocol's own error shape
    malformed = client.post(
        "/v2/models/default/infer", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400  # not a v2 request at all: still the protocol's 400


def test_binary_encode_reply_carries_image_sizes(client: TestClient) -> None:
    """33x17 and 34x18 pad to the same 17x9 code grid (f = 2): only the header tells them apart."""
    files = [("image", ("a.png", png(33, 17, seed=1), "image/png")), ("image", ("b.png", png(34, 18), "image/png"))]
    reply = client.post("/encode", files=files, headers={"accept": "application/octet-stream"})
    assert json.loads(reply.headers["shape"]) == [2, 17, 9]
    assert json.loads(reply.headers["image_size"]) == [[33, 17], [34, 18]]
    one = client.post("/encode", content=png(33, 17), headers={**PNG, "accept": "application/octet-stream"})
    assert json.loads(one.headers["image_size"]) == [[33, 17]]


def test_docs_load_without_a_cdn(client: TestClient) -> None:
    """Every script, style sheet and icon /docs and /redoc reference is served by the service itself."""
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html.text)
        assets += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", html.text)  # Swagger UI's openapi url
        assert any(a.endswith(".js") for a in assets), html.text[:500]
        for asset in assets:
            parts = urlsplit(asset)
            assert not parts.netloc, f"{page} loads {asset} from another host"
            fetched = client.get(asset)
            assert fetched.status_code == 200, asset
            assert len(fetched.content) > 100, asset
    # the web page's link goes there
    assert 'href="/docs"' in client.get("/").text
