"""The GPU benchmark stays runnable: a CPU smoke pass here, the real run where CUDA is present."""

from __future__ import annotations

import json
import math
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


def test_tiling_script_smoke_pass(tiny_checkpoint: Path) -> None:
    """`python -m bench.tiling --quick`: both parts run end to end on the tiny model (small sizes, tiles of 64)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.tiling", "--checkpoint", str(tiny_checkpoint), "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["quick"] is True
    service = result["service"]
    assert service["flat_large"]["status"] == 200
    assert service["flat_large"]["x_tiles"] > 1  # the large input went through tiles
    assert service["three_medium"]["statuses"] == [200, 200, 200]
    assert service["decode_grid"]["status"] == 200
    assert service["decode_grid"]["x_tiles"] > 1
    assert service["stream"]["statuses"] == [200]
    assert service["deadline"]["small_status"] == 200
    assert service["deadline"]["large_status"] in (200, 504)  # a tiny model may beat even a short deadline
    assert service["flat_large"]["peak_rss_mb"] >= service["rss_warm_mb"] > 0
    rows = result["quality"]["rows"]
    assert {r["mode"] for r in rows} == {"untiled", "tiled", "naive"}
    tiled = [r for r in rows if r["mode"] == "tiled"]
    assert all(0 < r["psnr"] < 99 and r["vs_untiled"]["seam_max"] >= 0 for r in tiled)
    assert {g["goal"][:2] for g in result["goals"]} >= {"B1", "B4", "B6", "A "}


def test_cpu_batch_script_smoke_pass(tiny_checkpoint: Path) -> None:
    """`python -m bench.cpu_batch` on the tiny model, small images: every (side, batch) is timed in every round."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.cpu_batch", "--checkpoint", str(tiny_checkpoint), "--sides", "16", "32",
         "--batches", "1", "2", "4", "--rounds", "2", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threads"] == 1
    assert set(result["per_image_ms"]) == {f"{side}x{b}" for side in (16, 32) for b in (1, 2, 4)}
    assert all(len(times) == 2 and min(times) > 0 for times in result["rounds"].values())
    assert "| 32 | 4 | 4096 |" in out.stdout  # the table printed side by side, with the pixels per batch


def test_sampling_bench_smoke_pass(tiny_prior_checkpoint: Path) -> None:
    """bench/sampling.py on the tiny model's prior: every form draws its grids and the JSON line adds up."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.sampling", "--checkpoint", str(tiny_prior_checkpoint), "-n", "3",
         "--rounds", "1", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["bench"], result["grid"], result["count"]) == ("sampling", [4, 4], 3)
    assert set(result["grids_per_s"]) == {"one request", "concurrent", "sequential"}
    assert all(rate > 0 for rate in result["grids_per_s"].values())
    assert 1 <= result["steps_per_batch_concurrent"] <= 3


def test_service_vs_peers_quick_smoke_pass(tiny_checkpoint: Path) -> None:
    """`python -m bench.service_vs_peers --quick`: one alternating round (vqserve, LitServe, the bare models) runs
    end to end and reports per-round ratios with their median and range; nothing is written to bench/results."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.service_vs_peers", "--checkpoint", str(tiny_checkpoint), "--quick",
         "--decoder-dtype", "float16"],  # float16: allowed on every CPU (bfloat16 only where it is native)
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["quick"] is True
    assert result["rounds"] == 1
    (size,) = result["sizes"]
    row = result["sizes"][size]
    assert row["litserve_c16"]["ok"] + row["vqserve_c16"]["ok"] > 0  # requests went through both servers
    assert row["vqserve_c1"]["status"].get("200", 0) > 0
    ratio = row["throughput_ratio_vs_litserve"]
    assert len(ratio["rounds"]) == 1
    if math.isfinite(ratio["rounds"][0]):  # a loaded machine may complete nothing on one side in a 2 s window
        assert ratio["min"] == ratio["median"] == ratio["max"] == ratio["rounds"][0]
    assert row["bare"][0]["diffusers_batch8_images_per_s"] > 0
    assert row["decoder_dtype"] == "float16"
    assert row["vqserve_decoder_c16"]["windows"] == 1
    assert len(row["decoder_throughput_ratio_vs_default"]["rounds"]) == 1


def test_service_settings_smoke_pass(tiny_checkpoint: Path) -> None:
    """`python -m bench.service_settings`: two settings of a real vqserve, alternating, one short round; both
    servers answer 200 and B / A is reported per size."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.service_settings", "--checkpoint", str(tiny_checkpoint), "--a", "",
         "--b", "VQSERVE_MAX_BATCH_SIZE=1 VQSERVE_TORCH_THREADS=1", "--sizes", "32", "--rounds", "1",
         "--seconds", "1.5", "--warmup", "0.5", "--concurrency", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    row = result["sizes"]["32"]
    assert row["a"][0]["status"].get("200", 0) > 0
    assert row["b"][0]["status"].get("200", 0) > 0
    assert set(row["status"]["a"][0]) == {"200"}
    assert row["b_over_a"]["rounds"][0] > 0
    assert "| 32² |" in out.stdout


def test_norm_fusion_quick_smoke_pass() -> None:
    """`python -m bench.norm_fusion --quick`: every candidate is checked against the baseline and A/B timed."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.norm_fusion", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {row["candidate"] for row in result["rows"]} == {"compiled", "single_pass", "conv_add_postop"}
    for row in result["rows"]:
        assert row["max_abs_error"] < 1e-4  # each candidate computes what the model computes
        assert row["median_ratio"] > 0


def test_quantizer_bench_finds_the_same_codes_as_the_search_it_replaced() -> None:
    """`python -m bench.quantizer`: the reference search and `VectorQuantizer.nearest` give identical codes on the
    shipped model's latents (real and random), and a ratio is printed."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.quantizer", "--counts", "300", "5000", "--rounds", "1", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert [row["count"] for row in rows] == [300, 5000]
    assert all(row["codes_identical"] for row in rows)
    assert all(row["ratio"] > 0 for row in rows)


def test_allocator_bench_runs_both_policies() -> None:
    """`python -m bench.allocator`: a round of glibc's default and of keeping freed memory, each its own process."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.allocator", "--cases", "64x1", "--rounds", "1", "--repeats", "1",
         "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert row["case"] == "64x1"
    assert row["default_ms"] > 0
    assert row["reuse_ms"] > 0
