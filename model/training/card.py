"""Figures for the model cards: a reconstructions grid PNG, CPU reconstruct timing, and held-out evaluation.

`python -m model.training.card grid model/weights/digits` writes `reconstructions.png` there (inputs,
reconstructions and code maps of held-out images);
`python -m model.training.card report model/weights/default` prints evaluation and CPU timing as JSON.
Timings use `--threads` torch threads (2 mirrors the 2-core serving target).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model import VQModel
from model.pixels import to_uint8
from model.training import data
from model.training.evaluate import evaluate


def code_colours(num_codes: int) -> np.ndarray:
    """A fixed, well-spread RGB colour per code (golden-ratio hues), so code maps read like segmentations."""
    hues = (np.arange(num_codes) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 255, np.full(num_codes, 200), np.full(num_codes, 230)], axis=1).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv[None], mode="HSV").convert("RGB"))[0]


@torch.no_grad()
def reconstruction_grid(model: VQModel, images: torch.Tensor, scale: int = 1) -> Image.Image:
    """Rows: inputs, reconstructions from the codes alone, code maps (one colour per code). (N, C, S, S) in."""
    _, indices = model.quantize(model.encode(images))  # (N, S/f, S/f)
    recon = model.decode_indices(indices)
    palette = code_colours(model.codebook_size)
    size = images.shape[-1]
    pad = 2
    n = len(images)
    canvas = np.full((3 * (size + pad) + pad, n * (size + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        x0 = pad + i * (size + pad)
        for row, tile in enumerate((images[i], recon[i])):
            pixels = to_uint8(tile).permute(1, 2, 0).numpy()  # (S, S, C), C = 1 or 3
            y0 = pad + row * (size + pad)
            canvas[y0 : y0 + size, x0 : x0 + size] = pixels
        codes = palette[indices[i].numpy()]  # (S/f, S/f, 3)
        block = size // indices.shape[-1]
        y0 = pad + 2 * (size + pad)
        canvas[y0 : y0 + size, x0 : x0 + size] = codes.repeat(block, 0).repeat(block, 1)
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


@torch.no_grad()
def reconstruct_seconds(model: VQModel, size: int = 256, repeats: int = 7) -> float:
    """Median wall time of encode -> quantize -> decode of one size x size image."""
    x = torch.rand(1, model.config.in_channels, size, size) * 2 - 1
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        _, indices = model.quantize(model.encode(x))
        model.decode_indices(indices)
        if i:  # the first call warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(path: Path) -> dict[str, Any]:
    model = VQModel.from_pretrained(path)
    weights = path / "diffusion_pytorch_model.safetensors"
    out: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_mb": round(weights.stat().st_size / 2**20, 2),
        "threads": torch.get_num_threads(),
    }
    if model.config.in_channels == 1:
        _, held_out = data.digits(1)
        out["evaluation"] = evaluate(model, ["digits"] * len(held_out), held_out)
    else:
        names, tiles = data.eval_photos(model.config.in_channels, 256)
        out["evaluation"] = evaluate(model, names, tiles)
        out["reconstruct_256_seconds"] = round(reconstruct_seconds(model), 4)
        # the service runs the model after optimize_for_inference (fused upsampling, channels-last)
        out["reconstruct_256_seconds_optimized"] = round(reconstruct_seconds(model.optimize_for_inference()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m model.training.card")
    parser.add_argument("what", choices=["grid", "report"])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "grid":
        model = VQModel.from_pretrained(args.checkpoint)
        if model.config.in_channels == 1:
            images, scale = data.digits(1)[1][:10], 4
        else:
            _, tiles = data.eval_photos(model.config.in_channels, 256)
            images, scale = tiles[[1, 4, 7, 10]], 1  # two crops of each held-out photo
        reconstruction_grid(model, images, scale).save(args.checkpoint / "reconstructions.png", optimize=True)
    else:
        print(json.dumps(report(args.checkpoint), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
