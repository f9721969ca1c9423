"""The GPU benchmark stays runnable: a CPU smoke pass here, the real run where CUDA is present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import VQModel

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "block_out_channels": [32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "num_vq_embeddings": 64,
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny")
    VQModel(**TINY).save_pretrained(path)
    return path


def run_gpu_script(checkpoint: Path, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--checkpoint", str(checkpoint), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke pass runs only where there is no GPU")
def test_gpu_script_smoke_pass_on_cpu(tiny_checkpoint: Path) -> None:
    result = run_gpu_script(tiny_checkpoint)
    assert result["device"] == "cpu (smoke mode)"
    (row,) = result["rows"]
    assert row["ours_images_per_s"] > 0
    assert row["diffusers_images_per_s"] > 0
    assert row["gflops_per_image"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_script_on_gpu(tiny_checkpoint: Path) -> None:
    result = run_gpu_script(tiny_checkpoint, "--sizes", "256", "--batch", "4", "--iters", "3")
    assert result["device"] != "cpu (smoke mode)"
    assert result["rows"][0]["ours_images_per_s"] > 0
