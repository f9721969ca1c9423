"""Serving a taming-transformers checkpoint as it is: a real `python -m service` on a directory holding only a
`.ckpt` and its `.yaml` answers with taming's own indices and decodes as taming does."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model.pixels import from_uint8, to_uint8
from tests.support.constants import PNG, ROOT
from tests.support.images import random_rgb
from tests.support.servers import free_port, serving_checkpoint
from tests.support.taming import TamingVQGAN, family, make_taming, save_taming

pytestmark = pytest.mark.timeout(240)


def pair_directory(tmp_path: Path) -> tuple[Path, TamingVQGAN]:
    fam = family("ldm-vq-f8")
    reference = make_taming(fam, seed=5)
    ckpt, config = save_taming(reference, fam, tmp_path / "logs")
    served = tmp_path / "vq-f8"
    served.mkdir()
    ckpt.rename(served / "last.ckpt")
    config.rename(served / "model.yaml")
    return served, reference


@torch.no_grad()
def test_service_serves_a_ckpt_and_yaml_directory(tmp_path: Path) -> None:
    served, reference = pair_directory(tmp_path)
    pixels = random_rgb(64, 64, seed=11)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, "PNG")
    x = from_uint8(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    _, quant, indices = reference.encode(x)
    expected_image = to_uint8(reference.decode(quant))[0].permute(1, 2, 0).numpy()

    with serving_checkpoint(served, tmp_path) as server:
        info = httpx.get(f"{server.url}/models/default", timeout=30).json()
        assert info["codebook_size"] == 1024
        assert info["downsample_factor"] == 8
        encoded = httpx.post(f"{server.url}/encode", content=data.getvalue(), headers=PNG, timeout=120)
        assert encoded.status_code == 200, encoded.text
        assert encoded.json()["shape"] == [8, 8]
        assert np.array_equal(np.asarray(encoded.json()["indices"]), indices[0].numpy())
        decoded = httpx.post(f"{server.url}/decode", json={"indices": encoded.json()["indices"]}, timeout=120)
        assert decoded.status_code == 200, decoded.text
        image = np.asarray(Image.open(io.BytesIO(decoded.content)).convert("RGB")).astype(int)
        assert np.abs(image - expected_image.astype(int)).max() <= 1  # float differences of 1e-5 may round apart


def test_an_ambiguous_directory_exits_with_one_line_naming_the_files(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"")
    (tmp_path / "epoch=3.ckpt").write_bytes(b"")
    (tmp_path / "model.yaml").write_text("model: {}")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model-path", str(tmp_path), "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VQSERVE_LOG_LEVEL": "info"},
        check=False,
    )
    assert result.returncode == 2
    assert "exactly one .ckpt and one .yaml" in result.stderr
    assert "epoch=3.ckpt" in result.stderr
