"""The Open Inference Protocol (KServe v2) with the real `tritonclient.http` client against a real server:
health, metadata, and encode / decode as named tensors, in JSON and with the binary-data extension."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model import VQModel
from tests.support.images import image_bytes, random_rgb
from tests.support.reference import model_input, model_output
from tests.support.servers import Server

from .conftest import KEY, full_queue


def ref_indices(model: VQModel, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.quantize(model.encode(model_input(images)))[1].numpy()


@pytest.fixture
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60.0)
    yield c
    c.close()


def test_health_and_metadata(client: triton.InferenceServerClient, reference_model: VQModel) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("default")
    assert not client.is_model_ready("missing")
    assert client.get_server_metadata()["name"] == "vqserve"
    meta = client.get_model_metadata("default")
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {
        "IMAGE": "UINT8",
        "INDICES": "INT32",
        "LATENTS": "FP32",
    }
    assert {t["name"]: t["datatype"] for t in meta["outputs"]} == {
        "INDICES": "INT32",
        "LATENTS": "FP32",
        "IMAGE": "UINT8",
    }
    assert meta["parameters"]["codebook_size"] == reference_model.codebook_size
    assert client.get_model_metadata("default", model_version="1")["name"] == "default"
    with pytest.raises(InferenceServerException, match="model_not_found|no model"):
        client.get_model_metadata("missing")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encode_image_to_indices_and_latents(
    client: triton.InferenceServerClient, reference_model: VQModel, binary: bool
) -> None:
    images = np.stack([random_rgb(24, 32, seed=s) for s in range(2)])  # (B, H, W, C) uint8
    image = triton.InferInput("IMAGE", list(images.shape), "UINT8")
    image.set_data_from_numpy(images, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("INDICES", binary_data=binary),
        triton.InferRequestedOutput("LATENTS", binary_data=binary),
    ]
    result = client.infer("default", [image], outputs=outputs, request_id="r-1")
    indices = result.as_numpy("INDICES")
    assert indices.dtype == np.int32
    assert indices.shape == (2, 12, 16)
    np.testing.assert_array_equal(indices, ref_indices(reference_model, images))
    latents = result.as_numpy("LATENTS")
    assert latents.shape == (2, reference_model.config.embed_dim, 12, 16)
    with torch.inference_mode():
        np.testing.assert_allclose(latents, reference_model.encode(model_input(images)).numpy(), atol=1e-4, rtol=1e-4)
    assert result.get_response()["id"] == "r-1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decode_indices_to_image(
    client: triton.InferenceServerClient,
    reference_model: VQModel,
    binary: bool,
) -> None:
    indices = np.random.default_rng(1).integers(0, 64, (2, 8, 10)).astype(np.int32)
    tensor = triton.InferInput("INDICES", list(indices.shape), "INT32")
    tensor.set_data_from_numpy(indices, binary_data=binary)
    result = client.infer(
        "default",
        [tensor],
        outputs=[triton.InferRequestedOutput("IMAGE", binary_data=binary)],
    )
    image = result.as_numpy("IMAGE")
    assert image.dtype == np.uint8
    assert image.shape == (2, 16, 20, 3)
    with torch.inference_mode():
        expected = model_output(reference_model.decode_indices(torch.from_numpy(indices).long()))
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1


def test_decode_latents_with_parameters(
    client: triton.InferenceServerClient,
    reference_model: VQModel,
) -> None:
    latents = np.random.default_rng(2).standard_normal((1, 4, 8, 8)).astype(np.float32)
    tensor = triton.InferInput("LATENTS", list(latents.shape), "FP32")
    tensor.set_data_from_numpy(latents)
    result = client.infer("default", [tensor], parameters={"scaling_factor": 0.5, "force_not_quantize": True})
    with torch.inference_mode():
        expected = model_output(reference_model.decode(torch.from_numpy(latents) / 0.5, force_not_quantize=True))
    assert np.abs(result.as_numpy("IMAGE").astype(int) - expected.astype(int)).max() <= 1


def test_bad_requests_answer_4xx(client: triton.InferenceServerClient, server: Server) -> None:
    out_of_range = triton.InferInput("INDICES", [1, 4, 4], "INT32")
    out_of_range.set_data_from_numpy(np.full((1, 4, 4), 999, dtype=np.int32))
    with pytest.raises(InferenceServerException, match=r"\[0, 64\)") as excinfo:
        client.infer("default", [out_of_range])
    assert excinfo.value.status() == "422"  # as /decode answers indices outside the codebook
    wrong_type = triton.InferInput("IMAGE", [1, 8, 8, 3], "FP32")
    wrong_type.set_data_from_numpy(np.zeros((1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="UINT8"):
        client.infer("default", [wrong_type])
    wrong_output = triton.InferInput("INDICES", [1, 2, 2], "INT32")
    wrong_output.set_data_from_numpy(np.zeros((1, 2, 2), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="not produced"):
        client.infer("default", [wrong_output], outputs=[triton.InferRequestedOutput("INDICES")])
    raw = httpx.post(server.url + "/v2/models/default/infer", content=b"{not json")
    assert raw.status_code == 400
    assert isinstance(raw.json()["error"], str)
    sizes = {"binary_data_size": 16}
    spec = {"name": "INDICES", "shape": [1, 2, 2], "datatype": "INT32", "parameters": sizes}
    head = json.dumps({"inputs": [spec]}).encode()
    truncated = httpx.post(  # 8 of the 16 announced bytes
        server.url + "/v2/models/default/infer",
        content=head + b"\x00" * 8,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert truncated.status_code == 400
    assert "binary_data_size 16" in truncated.json()["error"]


def test_api_key_guards_inference_not_health(guarded_server: Server) -> None:
    url = guarded_server.url.removeprefix("http://")
    anonymous = triton.InferenceServerClient(url=url)
    keyed = triton.InferenceServerClient(url=url)
    try:
        assert anonymous.is_server_live()
        assert anonymous.is_server_ready()
        codes = triton.InferInput("INDICES", [1, 2, 2], "INT32")
        codes.set_data_from_numpy(np.zeros((1, 2, 2), dtype=np.int32))
        with pytest.raises(InferenceServerException) as excinfo:
            anonymous.infer("default", [codes])
        assert excinfo.value.status() == "401"
        refused = httpx.post(f"{guarded_server.url}/v2/models/default/infer", json={"inputs": []})
        assert refused.status_code == 401
        assert isinstance(refused.json()["error"], str)  # the protocol's shape, not the REST one
        assert refused.headers["www-authenticate"] == "Bearer"
        result = keyed.infer("default", [codes], headers={"Authorization": "Bearer k-test"})
        assert result.as_numpy("IMAGE").shape == (1, 4, 4, 3)
    finally:
        anonymous.close()
        keyed.close()


def test_a_full_queue_answers_429_in_the_protocols_shape_and_is_counted(guarded_server: Server) -> None:
    """/v2 answers overload as `{"error": ...}` with Retry-After, and the refusal is counted like any other 429."""
    overloaded = guarded_server.metric("vqserve_request_failures_total", reason="overloaded")
    body = {"inputs": [{"name": "INDICES", "datatype": "INT32", "shape": [1, 2, 2], "data": [1, 2, 3, 4]}]}
    with full_queue(guarded_server, image_bytes(random_rgb(32, 32, seed=11))) as still_full:
        reply = httpx.post(f"{guarded_server.url}/v2/models/default/infer", json=body, headers=KEY, timeout=30)
        assert still_full()
    assert reply.status_code == 429
    assert "error" in reply.json()
    assert isinstance(reply.json()["error"], str)
    assert int(reply.headers["retry-after"]) >= 1
    assert guarded_server.metric("vqserve_request_failures_total", reason="overloaded") == overloaded + 1


def _post(server: Server, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v2/models/default/infer", content=content, headers=headers, timeout=30)


CODES = {"name": "INDICES", "datatype": "INT32", "shape": [1, 2, 2], "data": [0, 1, 2, 3]}
# requests the protocol does not allow, each of which answered 500 internal_error (and logged a traceback)
# before the request was validated whole against the protocol's models
MALFORMED_500_BEFORE: list[tuple[str, Any]] = [
    ("input-name-object", {"inputs": [{**CODES, "name": {"a": 1}}]}),
    ("input-name-list", {"inputs": [{**CODES, "name": ["INDICES"]}]}),
    ("shape-wraps-to-0-in-int64", {"inputs": [{**CODES, "shape": [4294967296, 4294967296, 1], "data": []}]}),
    ("shape-wraps-to-2-in-int64", {"inputs": [{**CODES, "shape": [3, 6148914691236517206, 1], "data": [0, 1]}]}),
    ("outputs-number", {"inputs": [CODES], "outputs": 5}),
    ("input-parameters-list", {"inputs": [{**CODES, "parameters": [1]}]}),
    ("output-parameters-list", {"inputs": [CODES], "outputs": [{"name": "IMAGE", "parameters": [1]}]}),
    ("output-parameters-string", {"inputs": [CODES], "outputs": [{"name": "IMAGE", "parameters": "binary"}]}),
]


@pytest.mark.parametrize(("name", "body"), MALFORMED_500_BEFORE, ids=[m[0] for m in MALFORMED_500_BEFORE])
def test_malformed_requests_answer_400_in_the_protocols_shape(server: Server, name: str, body: Any) -> None:
    logged = len(server.log_text())
    reply = _post(server, body)
    assert reply.status_code == 400, reply.text
    assert isinstance(reply.json()["error"], str)
    assert "Traceback" not in server.log_text()[logged:]


def test_float_binary_data_size_and_odd_headers_answer_400(server: Server) -> None:
    spec = {"name": "INDICES", "shape": [1, 2, 2], "datatype": "INT32", "parameters": {"binary_data_size": 16.0}}
    head = json.dumps({"inputs": [spec]}).encode()
    reply = _post(server, head + b"\x00" * 16, **{"Inference-Header-Content-Length": str(len(head))})
    assert reply.status_code == 400, reply.text  # 500 (a float slice index) before
    assert "binary_data_size" in reply.json()["error"]
    for length in ("abc", "-5", "1.5", ""):
        odd = _post(server, {"inputs": [CODES]}, **{"Inference-Header-Content-Length": length})
        assert odd.status_code == 400, (length, odd.text)  # 422 in the REST shape before
        assert isinstance(odd.json()["error"], str)


def test_tritonclient_requests_still_validate(client: triton.InferenceServerClient) -> None:
    """What tritonclient sends beside the tensors (sequence, priority and timeout parameters, a request id,
    per-output binary flags) fits the protocol's models."""
    codes = triton.InferInput("INDICES", [1, 2, 2], "INT32")
    codes.set_data_from_numpy(np.zeros((1, 2, 2), dtype=np.int32), binary_data=True)
    result = client.infer(
        "default",
        [codes],
        outputs=[triton.InferRequestedOutput("IMAGE", binary_data=False)],
        request_id="r-2",
        priority=1,
        timeout=1000,
        parameters={"force_not_quantize": False, "note": "x"},
    )
    assert result.as_numpy("IMAGE").shape == (1, 4, 4, 3)


@pytest.mark.parametrize("scale", [1e-320, 5e-324, 1e-39, -1e-40, 1e39, 0])
def test_scaling_factors_that_overflow_the_latents_answer_422(
    client: triton.InferenceServerClient, scale: float
) -> None:
    """A zero, subnormal or out-of-float32 scale sends every latent to inf (1e-320 answered 200 with a garbage
    image before): the shared factor check refuses it, with /decode's status (422) in the protocol's shape."""
    tensor = triton.InferInput("LATENTS", [1, 4, 2, 2], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4, 2, 2), 0.5, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="scaling_factor") as excinfo:
        client.infer("default", [tensor], parameters={"scaling_factor": scale})
    assert excinfo.value.status() == "422"


def test_a_scale_that_overflows_these_latents_answers_422(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("LATENTS", [1, 4, 2, 2], "FP32")
    tensor.set_data_from_numpy(np.full((1, 4, 2, 2), 1e30, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="finite range") as excinfo:
        client.infer("default", [tensor], parameters={"scaling_factor": 1e-10})  # 1e40: inf in float32
    assert excinfo.value.status() == "422"
