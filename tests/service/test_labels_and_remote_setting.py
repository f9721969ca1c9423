"""Metric labels stay a bounded set for every route, and the per-model remote force_not_quantize setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.middleware import endpoint_label
from service.settings import Settings


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/encode", "/encode"),
        ("/remote/decode", "/remote/decode"),
        ("/models/digits", "/models/{name}"),
        ("/v2/health/ready", "/v2/health/ready"),
        ("/v2", "/v2"),
        ("/v2/models/default", "/v2/models/{name}"),
        ("/v2/models/default/ready", "/v2/models/{name}/ready"),
        ("/v2/models/default/infer", "/v2/models/{name}/infer"),
        ("/v2/models/default/versions/1/infer", "/v2/models/{name}/infer"),
        ("/v2/models/a/b/c/d", "other"),
        ("/v2/health/anything", "other"),
        ("/etc/passwd", "other"),
    ],
)
def test_endpoint_labels(path: str, label: str) -> None:
    assert endpoint_label(path) == label


def test_remote_force_not_quantize_setting_parses() -> None:
    assert Settings(remote_force_not_quantize="a, b").remote_force_not_quantize == ["a", "b"]
    assert Settings().remote_force_not_quantize is None


def _remote_decode(client: TestClient, latents: torch.Tensor) -> np.ndarray:
    response = client.post(
        "/remote/decode",
        content=latents.numpy().tobytes(),
        params={"shape": list(latents.shape), "dtype": "float32", "output_type": "pt", "partial_postprocess": "true"},
        headers={"Accept": "tensor/binary"},
    )
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype=np.uint8)


def test_remote_decode_follows_the_per_model_setting(make_client) -> None:  # type: ignore[no-untyped-def]
    """Latents far from every code: quantizing or not gives different images, and the setting picks which."""
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 3
    quantized = _remote_decode(make_client(), latents)
    client = make_client(remote_force_not_quantize=["default"])
    raw = _remote_decode(client, latents)
    forced = client.post(
        "/remote/decode",
        content=latents.numpy().tobytes(),
        params={
            "shape": [1, 4, 4, 4],
            "dtype": "float32",
            "output_type": "pt",
            "partial_postprocess": "true",
            "force_not_quantize": "false",
        },
        headers={"Accept": "tensor/binary"},
    )
    assert not np.array_equal(quantized, raw)
    assert np.array_equal(np.frombuffer(forced.content, dtype=np.uint8), quantized), "the query overrides the setting"
