"""The GPU benchmark stays runnable: a CPU smoke pass here, the real run where CUDA is present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.constants import ROOT


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


def test_linear_baseline_brackets_the_rate(tiny_checkpoint: Path) -> None:
    from bench.linear_baseline import from_patches, to_patches

    images = torch.rand(2, 3, 8, 12)
    assert torch.equal(from_patches(to_patches(images, 4), images.shape, 4), images)
    out = subprocess.run(
        [sys.executable, "-m", "bench.linear_baseline", "--checkpoint", str(tiny_checkpoint), "--crops", "8",
         "--iterations", "3", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout)
    # quantizing the linear code to 64 values can only lose detail, and both beat a blank image by far
    assert 15 < result["pca_kmeans_psnr"] < result["pca_continuous_psnr"] < 99
    assert result["rate"] == "one of 64 codes per 2x2 patch (6 bits)"
    assert 0 < result["network_continuous_psnr"] < 99  # the random tiny network, its quantizer skipped
