"""No Python internals in what a user reads: bad uploads answer sentences (no `<_io.BytesIO object at 0x...>`), and
an in-process run (the CLI's `LocalBackend`) emits no warnings such as NumPy's "array is not writable"."""

from __future__ import annotations

import base64
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.cli import LocalBackend
from tests.support.constants import PNG
from tests.support.images import image_bytes, png, random_image

pytestmark = pytest.mark.timeout(120)

_INTERNALS = re.compile(r"<_io\.|0x[0-9a-f]{4,}|object at|Traceback|File \"", re.IGNORECASE)

REAL_PNG = png(32, 32)
BAD_UPLOADS = {
    "text": b"not an image at all",
    "png-signature-then-junk": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    "png-cut-short": REAL_PNG[: len(REAL_PNG) // 2],
    "jpeg-signature-then-junk": b"\xff\xd8\xff\xe0" + b"junk" * 10,
    "jpeg-cut-short": image_bytes(random_image(32, 32), "JPEG")[:200],
    "gif-signature-then-junk": b"GIF89a" + b"\x01" * 20,
    "webp-signature-then-junk": b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8,
    "bmp-signature-then-junk": b"BM" + b"\x00" * 30,
    "tiff-signature-then-junk": b"II*\x00" + b"\xff" * 30,
    "empty": b"",
}


def assert_clean(message: str) -> None:
    assert message, "an empty message"
    assert not _INTERNALS.search(message), message


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_uploads_answer_a_sentence_on_every_image_route(client: TestClient, name: str) -> None:
    body = BAD_UPLOADS[name]
    answers = [
        client.post("/encode", content=body, headers=PNG),
        client.post("/reconstruct", content=body, headers=PNG),
        client.post("/encode", files=[("image", ("x.png", body, "image/png"))]),
        client.post("/encode", json={"image": base64.b64encode(body).decode()}),
        client.post("/remote/encode", content=body, headers=PNG),
    ]
    for response in answers:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code, response.text)
        assert_clean(response.json()["error"]["message"])


def test_bad_base64_and_json_answer_sentences(client: TestClient) -> None:
    for response in (
        client.post("/encode", json={"image": "%%% not base64 %%%"}),
        client.post("/encode", content=b"{not json", headers={"content-type": "application/json"}),
        client.post("/decode", json={"indices": [[1, 2], [3]]}),
    ):
        assert 400 <= response.status_code < 500, response.text
        assert_clean(response.json()["error"]["message"])


def test_an_in_process_run_emits_no_warnings(tiny_checkpoint: Path) -> None:
    """encode, decode (of a read-only array, as `np.frombuffer` gives) and reconstruct, with every warning shown."""
    backend = LocalBackend(tiny_checkpoint, None, "cpu")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            indices = backend.encode(REAL_PNG)
            read_only = np.frombuffer(indices.astype(np.int64).tobytes(), dtype=np.int64).reshape(1, *indices.shape)
            assert not read_only.flags.writeable
            pixels = backend.decode(read_only)
            result = backend.reconstruct(image_bytes(random_image(24, 40), "JPEG"))
    finally:
        backend.engine.close()
    assert pixels.shape[0] == 1
    assert result.image.shape[:2] == (24, 40)
    assert [str(w.message) for w in seen if issubclass(w.category, UserWarning)] == []
    assert [f"{w.category.__name__}: {w.message}" for w in seen] == []
