"""Every endpoint and input/output form of the contract, through the app's real lifespan (TestClient)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from model import VQModel
from service.codecs import to_model_input
from service.engine import ModelLoadError
from tests.support.constants import PNG
from tests.support.images import decode_png, image_bytes, png, random_image
from tests.support.reference import model_output
from tests.support.servers import app_client, parse_metric

pytestmark = pytest.mark.timeout(60)


def direct_indices(checkpoint: Path, data: bytes) -> torch.Tensor:
    """What the model itself says for an image file (padding as the service does)."""
    model = VQModel.from_pretrained(checkpoint)
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    with torch.inference_mode():
        return model.quantize(model.encode(to_model_input(arr, model.downsample_factor)[None]))[1][0]


# health, metrics, models
def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "models": {"default": True}}
    assert client.post("/encode", content=png(), headers=PNG).status_code == 200
    text = client.get("/metrics").text
    # samples, not just the HELP/TYPE lines a labelled family writes before anything is recorded
    recorded = {
        "vqserve_requests_total": {"endpoint": "/encode", "status": "200"},
        "vqserve_request_duration_seconds_count": {"endpoint": "/encode"},
        "vqserve_queue_duration_seconds_count": {"model": "default", "op": "encode"},
        "vqserve_compute_duration_seconds_count": {"model": "default", "op": "encode"},
        "vqserve_codec_duration_seconds_count": {},
        "vqserve_batch_size_count": {"model": "default", "op": "encode"},
        "vqserve_model_info": {"model": "default"},
        "process_cpu_seconds_total": {},
    }
    for name, labels in recorded.items():
        assert parse_metric(text, name, **labels) > 0, name
    for name in ("vqserve_queue_depth", "vqserve_inflight_requests"):  # gauges, back at 0 once idle
        assert f"# TYPE {name} gauge" in text, name


def test_models(client: TestClient, tiny_checkpoint: Path) -> None:
    (info,) = client.get("/models").json()["models"]
    assert info == client.get("/models/default").json()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert info["config"]["num_vq_embeddings"] == config["num_vq_embeddings"] == info["codebook_size"] == 64
    assert info["downsample_factor"] == 2
    assert (info["in_channels"], info["latent_channels"], info["vq_embed_dim"]) == (3, 4, 4)
    assert (info["device"], info["dtype"]) == ("cpu", "float32")
    missing = client.get("/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


# /encode
def test_encode_raw_png_matches_the_model(client: TestClient, tiny_checkpoint: Path) -> None:
    data = png(37, 50)
    reply = client.post("/encode", content=data, headers=PNG)
    assert reply.status_code == 200
    body = reply.json()
    assert body["model"] == "default"
    assert body["shape"] == [19, 25]  # padded 38 x 50, factor 2
    assert body["image_size"] == [37, 50]
    assert body["codebook_size"] == 64
    assert torch.equal(torch.tensor(body["indices"]), direct_indices(tiny_checkpoint, data))


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream", "image/x-anything"])
def test_encode_raw_other_types(client: TestClient, content_type: str) -> None:
    data = image_bytes(random_image(16, 16), "JPEG")
    reply = client.post("/encode", content=data, headers={"content-type": content_type})
    assert reply.status_code == 200
    assert reply.json()["shape"] == [8, 8]


def test_encode_multipart_batch_in_order(client: TestClient, tiny_checkpoint: Path) -> None:
    files = [("image", (f"{i}.png", png(16, 16 + 4 * i, seed=i), "image/png")) for i in range(3)]
    body = client.post("/encode", files=files).json()
    assert [r["image_size"] for r in body["results"]] == [[16, 16], [16, 20], [16, 24]]
    expected = direct_indices(tiny_checkpoint, files[2][1][1])
    assert torch.equal(torch.tensor(body["results"][2]["indices"]), expected)


def test_encode_json_base64_single_and_list(client: TestClient) -> None:
    b64 = [base64.b64encode(png(8, 8, seed=i)).decode() for i in range(2)]
    single = client.post("/encode", json={"image": b64[0]}).json()
    assert single["shape"] == [4, 4]
    batch = client.post("/encode", json={"images": b64}).json()
    assert len(batch["results"]) == 2
    assert batch["results"][0]["indices"] == single["indices"]


def test_encode_return_latents(client: TestClient, tiny_checkpoint: Path) -> None:
    data = png(12, 12)
    body = client.post("/encode?return_latents=true", content=data, headers=PNG).json()
    assert body["latents_shape"] == [4, 6, 6]
    latents = torch.frombuffer(bytearray(base64.b64decode(body["latents"])), dtype=torch.float32).reshape(4, 6, 6)
    model = VQModel.from_pretrained(tiny_checkpoint)
    _, indices = model.quantize(latents[None])
    assert indices[0].tolist() == body["indices"]


def test_encode_binary_reply(client: TestClient) -> None:
    files = [("image", (f"{i}.png", png(8, 10, seed=i), "image/png")) for i in range(2)]
    reply = client.post("/encode", files=files, headers={"accept": "application/octet-stream"})
    assert reply.headers["content-type"] == "application/octet-stream"
    assert json.loads(reply.headers["shape"]) == [2, 4, 5]
    assert reply.headers["dtype"] == "int32"
    indices = np.frombuffer(reply.content, dtype="<i4").reshape(2, 4, 5)
    as_json = client.post("/encode", files=files).json()
    assert indices[1].tolist() == as_json["results"][1]["indices"]


def test_gray_model_and_model_selection(make_client: Any, tiny_checkpoint: Path, gray_checkpoint: Path) -> None:
    client = make_client(model_path=None, models=f"rgb={tiny_checkpoint},gray={gray_checkpoint}")
    assert [m["name"] for m in client.get("/models").json()["models"]] == ["rgb", "gray"]
    assert client.post("/encode", content=png(), headers=PNG).json()["model"] == "rgb"
    gray = client.post("/encode?model=gray", content=png(), headers=PNG).json()
    assert gray["model"] == "gray"
    decoded = client.post("/decode?model=gray", json={"indices": gray["indices"]})
    assert decode_png(decoded.content).ndim == 2  # an L image
    assert client.post("/encode?model=nope", content=png(), headers=PNG).status_code == 404


# /decode
def test_decode_indices_png_with_crop(client: TestClient) -> None:
    indices = np.random.default_rng(0).integers(0, 64, (5, 7)).tolist()
    reply = client.post("/decode", json={"indices": indices})
    assert reply.headers["content-type"] == "image/png"
    assert decode_png(reply.content).shape == (10, 14, 3)
    cropped = client.post("/decode", json={"indices": indices, "image_size": [9, 13]})
    assert np.array_equal(decode_png(cropped.content), decode_png(reply.content)[:9, :13])


def test_decode_batch_json_and_tensor_and_406(client: TestClient) -> None:
    indices = np.random.default_rng(1).integers(0, 64, (2, 4, 4))
    as_json = client.post("/decode", json={"indices": indices.tolist()}, headers={"accept": "application/json"})
    images = [decode_png(base64.b64decode(s)) for s in as_json.json()["images"]]
    assert len(images) == 2
    reply = client.post(
        "/decode?dtype=int16&shape=2&shape=4&shape=4",
        content=indices.astype("<i2").tobytes(),
        headers={"content-type": "tensor/binary", "accept": "tensor/binary"},
    )
    assert json.loads(reply.headers["shape"]) == [2, 8, 8, 3]
    assert reply.headers["dtype"] == "uint8"
    tensor = np.frombuffer(reply.content, dtype=np.uint8).reshape(2, 8, 8, 3)
    assert np.array_equal(tensor[1], images[1])
    several_png = client.post("/decode", json={"indices": indices.tolist()}, headers={"accept": "image/png"})
    assert several_png.status_code == 406
    assert "application/json" in several_png.json()["error"]["message"]


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_decode_format_overrides_accept(client: TestClient, fmt: str) -> None:
    reply = client.post(f"/decode?format={fmt}", json={"indices": [[1, 2], [3, 4]]}, headers={"accept": "image/png"})
    assert reply.headers["content-type"] == f"image/{fmt}"
    with Image.open(io.BytesIO(reply.content)) as im:
        assert im.size == (4, 4)


def test_decode_latents_json_binary_scaling_and_force_not_quantize(client: TestClient, tiny_checkpoint: Path) -> None:
    model = VQModel.from_pretrained(tiny_checkpoint)
    latents = torch.randn(1, 4, 3, 3)
    b64 = base64.b64encode(latents.numpy().tobytes()).decode()
    quantized = client.post("/decode", json={"latents": b64, "shape": [1, 4, 3, 3]})
    with torch.inference_mode():
        expected = model_output(model.decode(latents))
    assert np.array_equal(decode_png(quantized.content), expected[0])
    # the same latents scaled by 2 with scaling_factor=2, as float16 binary
    scaled = (latents * 2).half()
    binary = client.post(
        "/decode?dtype=float16&shape=1&shape=4&shape=3&shape=3&scaling_factor=2",
        content=scaled.numpy().tobytes(),
        headers={"content-type": "application/octet-stream"},
    )
    with torch.inference_mode():
        expected = model_output(model.decode(scaled.float() / 2))
    assert np.array_equal(decode_png(binary.content), expected[0])
    raw = client.post("/decode?force_not_quantize=true", json={"latents": b64, "shape": [1, 4, 3, 3]})
    with torch.inference_mode():
        unquantized = model_output(model.decode(latents, force_not_quantize=True))
    assert np.array_equal(decode_png(raw.content), unquantized[0])


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"indices": [[0, 64]]}}, 422),  # out of the codebook
        ({"json": {"indices": [[-1, 0]]}}, 422),
        ({"json": {"indices": [[0, 1], [2]]}}, 422),  # ragged
        ({"json": {"latents": base64.b64encode(b"\0" * 48).decode(), "shape": [1, 3, 2, 2]}}, 422),  # channels
        (
            {
                "json": {
                    "latents": base64.b64encode(np.full(16, np.nan, "<f4").tobytes()).decode(),
                    "shape": [1, 4, 2, 2],
                }
            },
            422,
        ),
        ({"json": {"latents": "AAAA", "shape": [1, 4, 2, 2]}}, 422),  # byte count
        ({"json": {"latents": "!!", "shape": [1, 4, 2, 2]}}, 400),
        ({"json": {}}, 422),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ({"content": b"\0" * 8, "headers": {"content-type": "tensor/binary"}}, 422),  # no shape/dtype
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
    ],
)
def test_decode_bad_input(client: TestClient, kwargs: dict[str, Any], status: int) -> None:
    reply = client.post("/decode", **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"]
    assert error["message"]


# /reconstruct and the round trip
def test_reconstruct_equals_decode_of_encode(client: TestClient) -> None:
    data = png(21, 30, seed=3)
    original = decode_png(data)
    reply = client.post("/reconstruct", content=data, headers=PNG)
    assert reply.status_code == 200
    recon = decode_png(reply.content)
    assert recon.shape == (21, 30, 3)
    encoded = client.post("/encode", content=data, headers=PNG).json()
    decoded = client.post("/decode", json={"indices": encoded["indices"], "image_size": encoded["image_size"]})
    assert np.array_equal(decode_png(decoded.content), recon)
    mse = np.mean((original.astype(float) - recon.astype(float)) ** 2)
    assert float(reply.headers["x-psnr"]) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-3)
    jpeg = client.post("/reconstruct?format=jpeg", content=data, headers=PNG)
    assert jpeg.headers["content-type"] == "image/jpeg"


def test_reconstruct_takes_one_image(client: TestClient) -> None:
    files = [("image", (f"{i}.png", png(), "image/png")) for i in range(2)]
    assert client.post("/reconstruct", files=files).status_code == 422


# limits and errors
def test_limits(make_client: Any) -> None:
    client = make_client(max_body_bytes=2000, max_pixels=40 * 40, max_images_per_request=2)
    big_body = client.post("/encode", content=b"\0" * 3000, headers=PNG)
    assert (big_body.status_code, big_body.json()["error"]["code"]) == (413, "body_too_large")
    many_pixels = client.post("/encode", content=image_bytes(Image.new("RGB", (41, 40))), headers=PNG)
    assert (many_pixels.status_code, many_pixels.json()["error"]["code"]) == (413, "image_too_large")
    files = [("image", (f"{i}.png", image_bytes(Image.new("RGB", (4, 4))), "image/png")) for i in range(3)]
    assert client.post("/encode", files=files).status_code == 413
    big_decode = client.post("/decode", json={"indices": [[0] * 21] * 20})
    assert big_decode.status_code == 413


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"garbage", "headers": PNG}, 400, "invalid_image"),
        ({"content": b"", "headers": PNG}, 400, "bad_request"),
        ({"json": {"image": "%%%"}}, 400, "invalid_base64"),
        ({"json": {"image": "AA", "images": ["AA"]}}, 422, "invalid_input"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"files": [("other", ("a.png", b"x", "image/png"))]}, 400, "bad_request"),
    ],
)
def test_encode_bad_input(client: TestClient, kwargs: dict[str, Any], status: int, code: str) -> None:
    reply = client.post("/encode", **kwargs)
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code)


def test_unknown_route_and_bad_query_are_json_errors(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    bad = client.post("/decode?scaling_factor=abc", json={"indices": [[0]]})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_input")


def test_api_keys(make_client: Any) -> None:
    client = make_client(api_keys="k1,k2")
    assert client.post("/encode", content=png(), headers=PNG).status_code == 401
    wrong = client.post("/encode", content=png(), headers={**PNG, "authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "unauthorized")
    assert client.post("/encode", content=png(), headers={**PNG, "authorization": "Bearer k2"}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200


def test_request_id_echoed_or_generated(client: TestClient) -> None:
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32


def test_draining_flips_readiness_and_refuses_inference(client: TestClient) -> None:
    client.app.state.services.start_draining()  # type: ignore[attr-defined]
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
    reply = client.post("/encode", content=png(), headers=PNG)
    assert (reply.status_code, reply.json()["error"]["code"]) == (503, "shutting_down")
    assert reply.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200


def test_missing_checkpoint_fails_startup_naming_path_and_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="VQSERVE_MODEL_PATH") as info, app_client(tmp_path / "absent"):
        pass
    assert str(tmp_path / "absent") in str(info.value)


def test_openapi_documents_bodies_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    encode = spec["paths"]["/encode"]["post"]
    assert {"image/png", "multipart/form-data", "application/json"} <= set(encode["requestBody"]["content"])
    assert {"413", "415", "429", "504"} <= set(encode["responses"])
    decode = spec["paths"]["/decode"]["post"]
    assert {"application/json", "tensor/binary"} <= set(decode["requestBody"]["content"])
    for name in ("EncodeJSONRequest", "EncodeResponse", "DecodeJSONRequest", "ModelInfo", "ErrorResponse"):
        assert name in spec["components"]["schemas"], name


def test_deadline_passed_before_compute_is_504(make_client: Any) -> None:
    client = make_client(request_timeout_s=0.001)
    reply = client.post("/encode", content=png(), headers=PNG)
    assert (reply.status_code, reply.json()["error"]["code"]) == (504, "deadline_exceeded")


def test_cors_origins(make_client: Any) -> None:
    client = make_client(cors_origins="https://app.example")
    reply = client.options(
        "/encode", headers={"origin": "https://app.example", "access-control-request-method": "POST"}
    )
    assert reply.headers["access-control-allow-origin"] == "https://app.example"


@pytest.mark.parametrize("scale", ["1e-320", "5e-324", "1e-39", "-1e-40", "0", "3.5e38", "1e39", "nan", "-inf"])
@pytest.mark.parametrize("form", ["json", "binary"])
def test_decode_scaling_factor_must_keep_the_latents_finite(client: TestClient, form: str, scale: str) -> None:
    """A zero, subnormal or out-of-float32 scale divides every latent into inf (1e-320 answered 200 with a
    garbage image before): 422 from the shared factor check, for either body form."""
    latents = np.full((1, 4, 2, 2), 0.5, "<f4")
    reply = _decode_latents(client, form, latents, scale)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "invalid_input"
    assert "scaling_factor" in reply.json()["error"]["message"]


def test_decode_refuses_a_scale_that_overflows_these_latents(client: TestClient) -> None:
    """Both numbers are fine alone; 1e30 / 1e-10 = 1e40 is inf in float32: refused once the latents are known."""
    reply = _decode_latents(client, "binary", np.full((1, 4, 2, 2), 1e30, "<f4"), "1e-10")
    assert reply.status_code == 422, reply.text
    assert "finite range" in reply.json()["error"]["message"]
    fine = _decode_latents(client, "json", np.full((1, 4, 2, 2), 0.5, "<f4"), "1e-3")
    assert fine.status_code == 200, fine.text


def _decode_latents(client: TestClient, form: str, latents: np.ndarray, scale: str) -> Any:
    shape = list(latents.shape)
    if form == "json":
        body = {"latents": base64.b64encode(latents.tobytes()).decode(), "shape": shape}
        return client.post("/decode", json=body, params={"scaling_factor": scale})
    return client.post(
        "/decode",
        content=latents.tobytes(),
        params={"scaling_factor": scale, "shape": shape, "dtype": "float32"},
        headers={"content-type": "tensor/binary"},
    )


def test_openapi_documents_the_open_inference_protocol(client: TestClient) -> None:
    """/v2 infer documents its request (the protocol's models, so the fuzz suite generates v2 requests) and
    every error in the protocol's shape; the metadata routes document their 404."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in ("InferenceRequest", "InferInputTensor", "InferRequestedOutput", "OIPErrorResponse"):
        assert name in schemas, name
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
    assert "application/octet-stream" in body
    for status in ("400", "401", "404", "429", "503", "504"):
        error = infer["responses"][status]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/OIPErrorResponse"}, status
    assert "InferenceResponse" in str(infer["responses"]["200"])
    for path in ("/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}"):
        assert "404" in spec["paths"][path]["get"]["responses"], path
