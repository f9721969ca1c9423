"""model/tiling.py: tiles that share GroupNorm statistics compute what the untiled model computes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model import VQModel
from model.tiling import (
    Blender,
    TileConfig,
    apply_norm_stats,
    record_norm_stats,
    spans,
    tile_grid,
)
from tests.support.checkpoints import TINY_RGB
from tests.support.constants import ROOT, WEIGHTS


def tiny(**overrides: object) -> VQModel:
    torch.manual_seed(0)
    return VQModel(**{**TINY_RGB, **overrides}).eval()


def smooth_image(side: int, seed: int = 0) -> torch.Tensor:
    """A smooth (1, 3, side, side) image in [-1, 1]: tiling errors show at seams, not in noise."""
    coarse = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=True).clamp(-1, 1)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(10, 4, 1), (64, 16, 4), (17, 8, 3), (5, 8, 2), (33, 32, 8)])
def test_spans_cover_with_the_overlap_and_equal_sizes(length: int, tile: int, overlap: int) -> None:
    tiles = spans(length, tile, overlap)
    assert tiles[0][0] == 0
    assert tiles[-1][1] == length
    assert all(end - start == min(tile, length) for start, end in tiles)
    for (_, end), (start, _) in zip(tiles, tiles[1:], strict=False):
        assert end - start >= overlap  # neighbours share at least the overlap


@pytest.mark.parametrize(("height", "width", "tile", "overlap", "scale"), [(20, 33, 8, 2, 1), (9, 16, 4, 1, 4)])
def test_blend_weights_sum_to_one_everywhere(height: int, width: int, tile: int, overlap: int, scale: int) -> None:
    grid = tile_grid(height, width, tile, overlap, scale)
    blender = Blender((1, 2, height * scale, width * scale))
    for y, x in grid:
        assert bool((y[2] > 0).all())
        assert bool((x[2] > 0).all())
        blender.add(torch.ones(1, 2, y[1] - y[0], x[1] - x[0]), y, x)
    assert torch.allclose(blender.result(), torch.ones(1, 2, height * scale, width * scale), atol=1e-6)


def test_shared_statistics_recorded_from_the_input_reproduce_the_model() -> None:
    model = tiny()
    x = smooth_image(32)
    with torch.inference_mode():
        expected, stats = record_norm_stats(model.encoder, lambda: model.encoder(x))
        again = apply_norm_stats(model.encoder, stats, lambda: model.encoder(x))
        plain = model.encoder(x)
    assert torch.equal(expected, plain)  # recording does not change the computation
    assert torch.allclose(again, plain, atol=1e-5)
    assert len(stats.means) == sum(isinstance(m, torch.nn.GroupNorm) for m in model.encoder.modules())


def test_an_input_of_one_tile_is_untiled_bit_for_bit() -> None:
    model = tiny()
    x = smooth_image(32)
    with torch.inference_mode():
        latents = model.encode(x)
        image = model.decode(latents)
        model.enable_tiling(tile_size=32, tile_overlap=8)
        assert torch.equal(model.encode(x), latents)
        assert torch.equal(model.decode(latents), image)


def test_tiles_with_shared_statistics_beat_naive_tiling_at_the_seams() -> None:
    """Mid-block attention off: tiling with the whole image's statistics then differs from the untiled model only
    by receptive-field edge effects. A random-weight model spreads those far (trained ones far less: the shipped
    default's figures are in its model card), so this bounds them against naive tiling on the same tiles."""
    model = tiny(mid_block_add_attention=False)
    x = smooth_image(96)
    with torch.inference_mode():
        untiled = model.decode(model.encode(x), force_not_quantize=True)
        model.enable_tiling(tile_size=32, tile_overlap=16, preview_side=96)  # preview = the image: exact statistics
        tiled = model.decode(model.encode(x), force_not_quantize=True)
        naive = naive_tiled(model, x, 32, 16)
    error, naive_error = (tiled - untiled).abs(), (naive - untiled).abs()
    assert float(error.mean()) < 0.6 * float(naive_error.mean())
    assert float(error.max()) < 0.6 * float(naive_error.max())


def naive_tiled(model: VQModel, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """What diffusers' AutoencoderKL tiling does: each tile normalised with its own statistics."""
    factor = model.downsample_factor
    grid = tile_grid(x.shape[-2] // factor, x.shape[-1] // factor, tile // factor, overlap // factor, scale=factor)
    blender = Blender(tuple(x.shape))  # type: ignore[arg-type]
    for y, w in grid:
        crop = x[:, :, y[0] : y[1], w[0] : w[1]]
        blender.add(model.decode_quantized(model.quant_conv(model.encoder(crop))), y, w)
    return blender.result()


def test_tiled_encode_keeps_most_codes_and_the_shapes() -> None:
    model = tiny()
    x = smooth_image(80)
    with torch.inference_mode():
        _, untiled = model.quantize(model.encode(x))
        model.enable_tiling(tile_size=32, tile_overlap=8, preview_side=80)
        _, tiled = model.quantize(model.encode(x))
        image = model.decode_indices(tiled)
    assert tiled.shape == untiled.shape
    assert float((tiled == untiled).float().mean()) > 0.6  # near-ties flip; the model card measures PSNR
    assert image.shape == (1, 3, 80, 80)


def test_tile_config_refuses_an_overlap_as_large_as_the_tile() -> None:
    with pytest.raises(ValueError, match="tile_overlap"):
        TileConfig(tile_size=64, tile_overlap=64)


# The peak of live bytes in torch's CPU allocator during one reconstruct, from the profiler's allocation events.
# Not ru_maxrss: a process's RSS peak includes whatever loading the model touched, and on CI it hid the reconstruct's
# own peak entirely (measured 0). The allocator's events count exactly the activations the estimate models.
PEAK_PROBE = """
import json, sys, torch
from torch.profiler import ProfilerActivity, profile
from model import VQModel
from model.tiling import activation_bytes_per_pixel
torch.set_num_threads(1)
model = VQModel.from_pretrained(sys.argv[1]).optimize_for_inference()
side = int(sys.argv[2])
with torch.inference_mode():
    model.decode_indices(model.quantize(model.encode(torch.zeros(1, 3, 64, 64)))[1])  # kernels and buffers
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model.decode_indices(model.quantize(model.encode(torch.zeros(1, 3, side, side)))[1])
events = prof.profiler.kineto_results.events()
allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
live = peak = 0
for _, nbytes in allocations:
    live += nbytes
    peak = max(peak, live)
print(json.dumps({"measured": peak / side**2, "estimate": activation_bytes_per_pixel(model.config, 4)}))
"""


def test_the_activation_estimate_bounds_a_measured_peak() -> None:
    """The batcher's memory budget trusts `activation_bytes_per_pixel`: the peak of live tensor bytes in a real
    reconstruct of the shipped default must stay under it with room for the allocator's own overhead (RSS ran about
    1.5x the tensor peak here), and the estimate must not be wildly conservative."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, str(WEIGHTS / "default"), "384"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout)
    assert figures["measured"] * 1.25 <= figures["estimate"]
    assert figures["measured"] >= figures["estimate"] / 4
