"""diffusers' own `remote_decode` / `remote_encode` against a real vqserve, for every output type, compared
with diffusers' in-process `VQModel` on the same checkpoint."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import diffusers
import httpx
import numpy as np
import pytest
import requests
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.remote_utils import remote_decode, remote_encode
from PIL import Image

from tests.support.checkpoints import TINY_RGB_SPATIAL_NORM, build_checkpoint
from tests.support.images import random_rgb
from tests.support.reference import model_input
from tests.support.servers import Server, stop_server

from .conftest import start_server

SCALE = 0.5
SHIFT = 0.1


@pytest.fixture(scope="module")
def dvae(server: Server) -> diffusers.VQModel:
    return diffusers.VQModel.from_pretrained(server.checkpoint).eval()


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(0))  # (B, D, h, w)


def reference(
    dvae: diffusers.VQModel,
    latents: torch.Tensor,
    force_not_quantize: bool = False,
) -> torch.Tensor:
    with torch.inference_mode():
        return dvae.decode(latents, force_not_quantize=force_not_quantize).sample  # (B, C, H, W) in ~[-1, 1]


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """diffusers' own postprocessing to (B, H, W, C) uint8."""
    return (VaeImageProcessor().postprocess(images, output_type="np") * 255).round().astype(np.uint8)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_pil_png_and_jpg(server: Server, dvae: diffusers.VQModel, latents: torch.Tensor) -> None:
    expected = as_uint8(reference(dvae, latents / SCALE))[0]
    endpoint = server.url + "/remote/decode"
    png = remote_decode(endpoint, latents, scaling_factor=SCALE, output_type="pil", image_format="png")
    assert isinstance(png, Image.Image)
    assert png.format == "png"
    assert png.size == (32, 24)
    assert max_diff(np.asarray(png), expected) <= 1
    jpg = remote_decode(endpoint, latents, scaling_factor=SCALE, output_type="pil", image_format="jpg")
    assert isinstance(jpg, Image.Image)
    assert jpg.format == "jpeg"
    buf = io.BytesIO()
    Image.fromarray(expected).save(buf, "JPEG", quality=95)  # the server's default JPEG quality
    local_jpg = np.asarray(Image.open(buf))
    assert np.mean(np.abs(np.asarray(jpg).astype(float) - local_jpg.astype(float))) < 0.5


def test_pt_float_and_partial(server: Server, dvae: diffusers.VQModel, latents: torch.Tensor) -> None:
    endpoint = server.url + "/remote/decode"
    batch = torch.cat([latents, latents.flip(-1)])  # (2, D, h, w)
    expected = reference(dvae, batch / SCALE + SHIFT)
    floats = remote_decode(
        endpoint, batch, scaling_factor=SCALE, shift_factor=SHIFT, output_type="pt", return_type="pt"
    )
    assert isinstance(floats, torch.Tensor)
    assert floats.shape == (2, 3, 24, 32)
    assert floats.dtype == torch.float32
    torch.testing.assert_close(floats, expected, atol=1e-3, rtol=1e-3)

    uint8 = remote_decode(
        endpoint,
        batch,
        scaling_factor=SCALE,
        shift_factor=SHIFT,
        output_type="pt",
        partial_postprocess=True,
        return_type="pt",
    )
    assert isinstance(uint8, torch.Tensor)
    assert uint8.dtype == torch.uint8
    assert uint8.shape == (2, 24, 32, 3)
    assert max_diff(uint8.numpy(), as_uint8(expected)) <= 1

    images = remote_decode(
        endpoint, latents, scaling_factor=SCALE, output_type="pt", partial_postprocess=True, return_type="pil"
    )
    assert isinstance(images, Image.Image)
    assert max_diff(np.asarray(images), as_uint8(reference(dvae, latents / SCALE))[0]) <= 1


def test_pt_with_processor_and_pil_through_processor(
    server: Server, dvae: diffusers.VQModel, latents: torch.Tensor
) -> None:
    endpoint = server.url + "/remote/decode"
    expected = reference(dvae, latents / SCALE)
    processed = remote_decode(
        endpoint,
        latents,
        processor=VaeImageProcessor(),
        scaling_factor=SCALE,
        output_type="pt",
        return_type="pil",
    )
    assert isinstance(processed, Image.Image)
    assert max_diff(np.asarray(processed), as_uint8(expected)[0]) <= 1
    # output_type="pil" with a processor: the server sends floats in [0, 1] that the client turns into images
    via_processor = remote_decode(
        endpoint, latents, processor=VaeImageProcessor(), scaling_factor=SCALE, output_type="pil"
    )
    assert isinstance(via_processor, list)
    assert max_diff(np.asarray(via_processor[0]), as_uint8(expected)[0]) <= 1


def test_half_precision_latents_and_unscaled(
    server: Server,
    dvae: diffusers.VQModel,
    latents: torch.Tensor,
) -> None:
    endpoint = server.url + "/remote/decode"
    out = remote_decode(endpoint, latents.half(), do_scaling=False, output_type="pt", return_type="pt")
    torch.testing.assert_close(out, reference(dvae, latents.half().float()), atol=1e-3, rtol=1e-3)


def test_force_not_quantize_query(server: Server, dvae: diffusers.VQModel, latents: torch.Tensor) -> None:
    response = httpx.post(
        server.url + "/remote/decode",
        params={
            "shape": list(latents.shape),
            "dtype": "float32",
            "output_type": "pt",
            "force_not_quantize": "true",
        },
        content=latents.numpy().tobytes(),
        headers={"Content-Type": "tensor/binary", "Accept": "tensor/binary"},
        timeout=30,
    )
    assert response.status_code == 200
    got = torch.frombuffer(bytearray(response.content), dtype=torch.float32).reshape(
        json.loads(response.headers["shape"])
    )
    torch.testing.assert_close(got, reference(dvae, latents, force_not_quantize=True), atol=1e-3, rtol=1e-3)
    assert not torch.allclose(got, reference(dvae, latents), atol=1e-3)


def test_encode_pil_and_tensor_then_decode(server: Server, dvae: diffusers.VQModel) -> None:
    arr = random_rgb(24, 32, seed=4)
    # contiguous (as model_input makes it): remote_encode reads the raw memory of `image.contiguous()`
    x = model_input(arr)
    with torch.inference_mode():
        expected = (dvae.encode(x).latents - SHIFT) * SCALE
    from_pil = remote_encode(
        server.url + "/remote/encode", Image.fromarray(arr), scaling_factor=SCALE, shift_factor=SHIFT
    )
    assert from_pil.shape == (1, 4, 12, 16)
    torch.testing.assert_close(from_pil, expected, atol=1e-3, rtol=1e-3)
    from_tensor = remote_encode(server.url + "/remote/encode", x, scaling_factor=SCALE, shift_factor=SHIFT)
    torch.testing.assert_close(from_tensor, expected, atol=1e-3, rtol=1e-3)
    decoded = remote_decode(
        server.url + "/remote/decode",
        from_pil,
        scaling_factor=SCALE,
        shift_factor=SHIFT,
        output_type="pil",
        image_format="png",
    )
    assert isinstance(decoded, Image.Image)
    assert decoded.size == (32, 24)


def test_errors_are_json_4xx(server: Server) -> None:
    endpoint = server.url + "/remote/decode"
    with pytest.raises(RuntimeError, match="invalid_input"):
        remote_decode(
            endpoint,
            torch.randn(1, 3, 8, 8),
            scaling_factor=SCALE,
            output_type="pt",
            return_type="pt",
        )
    with pytest.raises(RuntimeError, match="invalid_input"):
        remote_decode(
            endpoint,
            torch.full((1, 4, 8, 8), float("nan")),
            scaling_factor=SCALE,
            output_type="pt",
            return_type="pt",
        )
    bad = httpx.post(
        endpoint,
        params={"shape": [1, 4, 8, 8], "dtype": "float32"},
        content=b"\x00" * 12,
        headers={"Content-Type": "tensor/binary"},
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_input"
    batch = httpx.post(
        endpoint,
        params={"shape": [2, 4, 8, 8], "dtype": "float32", "output_type": "pil"},
        content=b"\x00" * (2 * 4 * 8 * 8 * 4),
        headers={"Content-Type": "tensor/binary", "Accept": "image/png"},
    )
    assert batch.status_code == 406
    not_image = httpx.post(server.url + "/remote/encode", content=b"nope")
    assert not_image.status_code in (400, 422)
    assert "error" in not_image.json()


@pytest.fixture(scope="module")
def movq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A MoVQ-style (spatial norm) model: Kandinsky's pipelines decode it without quantizing."""
    folder = tmp_path_factory.mktemp("movq")
    checkpoint = build_checkpoint(folder / "ckpt", TINY_RGB_SPATIAL_NORM, seed=3)
    running = start_server(checkpoint, folder / "server.log")
    yield running
    stop_server(running)


def test_movq_skips_quantization_by_default(movq_server: Server, latents: torch.Tensor) -> None:
    movq = diffusers.VQModel.from_pretrained(movq_server.checkpoint).eval()
    got = remote_decode(
        movq_server.url + "/remote/decode", latents, do_scaling=False, output_type="pt", return_type="pt"
    )
    torch.testing.assert_close(got, reference(movq, latents, force_not_quantize=True), atol=1e-3, rtol=1e-3)


def test_sdnext_request_format(server: Server, dvae: diffusers.VQModel, latents: torch.Tensor) -> None:
    """SD.Next's `modules/sd_vae_remote.py` builds the request by hand: one latent, `do_scaling`, the
    `*_tensor_type` flags, and the tensor's raw bytes; its `raw` mode expects floats, `png` an image."""
    scale = diffusers.VQModel.load_config(server.checkpoint)["scaling_factor"]
    expected = reference(dvae, latents / scale)
    base = {
        "do_scaling": True,
        "input_tensor_type": "binary",
        "shape": list(latents.shape),
        "dtype": "float32",
    }
    raw = requests.post(
        server.url + "/remote/decode",
        params={**base, "partial_postprocess": False, "output_type": "pt", "output_tensor_type": "binary"},
        headers={"Content-Type": "tensor/binary", "Accept": "tensor/binary"},
        data=latents.contiguous().numpy().tobytes(),
        timeout=30,
    )
    assert raw.ok, raw.text
    got = torch.frombuffer(
        bytearray(raw.content),
        dtype=torch.float32,
    ).reshape(json.loads(raw.headers["shape"]))
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    png = requests.post(
        server.url + "/remote/decode",
        params={**base, "image_format": "png", "output_type": "pil"},
        headers={"Content-Type": "tensor/binary", "Accept": "image/png"},
        data=latents.contiguous().numpy().tobytes(),
        timeout=30,
    )
    assert png.ok, png.text
    assert (
        max_diff(
            np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")),
            as_uint8(expected)[0],
        )
        <= 1
    )


NON_FINITE = ["nan", "inf", "-inf"]
BAD_SCALES = [*NON_FINITE, "0", "1e-320", "5e-324", "1e-39", "1e39"]


@pytest.mark.parametrize("value", BAD_SCALES)
@pytest.mark.parametrize("path", ["/remote/decode", "/remote/encode"])
def test_scales_that_are_not_finite_or_not_normal_are_422(
    server: Server, latents: torch.Tensor, path: str, value: str
) -> None:
    """nan/inf answered 200 (decode: an image; encode: all-NaN or all-inf latents) before, 1e-320 too: the one
    factor check of the shared input path refuses them."""
    reply = _remote(server, path, latents, {"scaling_factor": value})
    assert reply.status_code == 422, reply.text[:300]
    assert reply.json()["error"]["code"] == "invalid_input"
    assert "scaling_factor" in reply.json()["error"]["message"]


@pytest.mark.parametrize("value", [*NON_FINITE, "1e39"])
@pytest.mark.parametrize("path", ["/remote/decode", "/remote/encode"])
def test_shifts_that_are_not_finite_are_422(server: Server, latents: torch.Tensor, path: str, value: str) -> None:
    reply = _remote(server, path, latents, {"shift_factor": value, "scaling_factor": SCALE})
    assert reply.status_code == 422, reply.text[:300]
    assert "shift_factor" in reply.json()["error"]["message"]


def test_factors_that_overflow_the_latents_are_422(server: Server, latents: torch.Tensor) -> None:
    """Each factor finite and normal, but the latents they give are not: refused once the latents are known."""
    big = torch.full_like(latents, 3e38)
    decoded = _remote(server, "/remote/decode", big, {"shift_factor": "3e38"})  # 6e38: inf in float32
    assert decoded.status_code == 422, decoded.text[:300]
    tiny_scale = _remote(server, "/remote/decode", latents * 1e30, {"scaling_factor": "1e-10"})
    assert tiny_scale.status_code == 422, tiny_scale.text[:300]
    encoded = _remote(server, "/remote/encode", latents, {"shift_factor": "3e38", "scaling_factor": "10"})
    assert encoded.status_code == 422, encoded.text[:300]
    assert "overflows float32" in encoded.json()["error"]["message"]


def test_diffusers_clients_see_the_refusal(server: Server, latents: torch.Tensor) -> None:
    with pytest.raises(RuntimeError, match="invalid_input"):
        remote_decode(
            server.url + "/remote/decode", latents, scaling_factor=float("nan"), output_type="pt", return_type="pt"
        )
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="invalid_input"):
        remote_encode(server.url + "/remote/encode", x, scaling_factor=SCALE, shift_factor=float("inf"))
    fine = remote_encode(server.url + "/remote/encode", x, scaling_factor=SCALE, shift_factor=1e-320)
    assert bool(torch.isfinite(fine).all())  # a subnormal shift is harmless: nothing is divided by it


def _remote(server: Server, path: str, latents: torch.Tensor, params: dict[str, str | float]) -> httpx.Response:
    """Latents to /remote/decode, or a black 16x16 uint8 image tensor to /remote/encode, as raw bytes."""
    if path == "/remote/decode":
        body, query = latents.contiguous().numpy().tobytes(), {"shape": list(latents.shape), "dtype": "float32"}
        accept = "tensor/binary"
    else:
        body, query, accept = bytes(3 * 16 * 16), {"shape": [1, 3, 16, 16], "dtype": "uint8"}, "tensor/binary"
    return httpx.post(
        server.url + path,
        params={**query, "output_type": "pt", **params},
        content=body,
        headers={"Content-Type": "tensor/binary", "Accept": accept},
        timeout=30,
    )
