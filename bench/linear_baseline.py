"""What a *linear* f=4 autoencoder reaches on the held-out photos, beside a trained checkpoint.

The default checkpoint's quality goal (mean PSNR >= 25 dB on 256 px crops of scikit-learn's china/flower) is
measured at a fixed rate: one of K codes per 4x4 RGB patch (13 bits for K = 8192). This script separates the two
limits. PCA of 4x4x3 patches (fit on the training crops) keeping `latent_channels` components is the best linear
encoder/decoder of that width; quantizing its coefficients with a K-means codebook of the same K gives the linear
model at the checkpoint's rate. A network below the first number is limited by its transform; near the second, by
the rate.

    python -m bench.linear_baseline --checkpoint model/weights/default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from model import VQModel
from model.pixels import psnr, to_uint8
from model.quantizer import VectorQuantizer
from model.training import data
from model.training.evaluate import evaluate
from model.training.presets import OPENCV_PHOTOS


def to_patches(images: torch.Tensor, f: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * H/f * W/f, C * f * f), one row per f x f patch."""
    n, c, h, w = images.shape
    return images.unfold(2, f, f).unfold(3, f, f).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * f * f)


def from_patches(rows: torch.Tensor, shape: torch.Size, f: int) -> torch.Tensor:
    """Inverse of `to_patches`."""
    n, c, h, w = shape
    return rows.reshape(n, h // f, w // f, c, f, f).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's algorithm from k random points; empty clusters keep their centre."""
    centres = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    quantizer = VectorQuantizer(k, points.shape[1])
    for _ in range(iterations):
        quantizer.embedding.weight.data.copy_(centres)
        nearest = quantizer.nearest(points)
        sums = torch.zeros_like(centres).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=k)
        used = counts > 0
        centres[used] = sums[used] / counts[used, None].float()
    return centres


def mean_psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean PSNR of `images` against `reference`, pair by pair, both rounded to 8 bits as `evaluate` measures."""
    pairs = zip(reference, images, strict=True)
    return round(sum(psnr(to_uint8(x), to_uint8(y)) for x, y in pairs) / len(images), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(args.seed)
    model = VQModel.from_pretrained(args.checkpoint)
    f, width, k = model.downsample_factor, model.config.embed_dim, model.codebook_size
    sources = "photos" + (f",{OPENCV_PHOTOS}" if Path(OPENCV_PHOTOS).is_dir() else "")
    sampler = data.CropSampler(data.source_images(sources, 3), 64, generator, gray_weight=0.2)
    train = to_patches(sampler.batch(args.crops), f)
    names, held_out = data.eval_photos(3, 256)
    test = to_patches(held_out, f)

    mean = train.mean(dim=0)
    _, _, vt = torch.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:width].T  # (C*f*f, width): the principal directions

    def linear(coefficients: torch.Tensor) -> torch.Tensor:
        return from_patches(coefficients @ basis.T + mean, held_out.shape, f)

    centres = kmeans((train - mean) @ basis, k, args.iterations, generator)
    quantizer = VectorQuantizer(k, width)
    quantizer.embedding.weight.data.copy_(centres)
    coded = centres[quantizer.nearest((test - mean) @ basis)]
    network = evaluate(model, names, held_out)
    with torch.no_grad():  # the same network with its quantizer skipped: what the transform alone reaches
        continuous = torch.cat([model.decode(model.encode(x), force_not_quantize=True) for x in held_out.split(4)])
    return {
        "checkpoint": str(args.checkpoint),
        "rate": f"one of {k} codes per {f}x{f} patch ({k.bit_length() - 1} bits)",
        "training_crops": args.crops,
        "pca_continuous_psnr": mean_psnr(linear((test - mean) @ basis), held_out),
        "pca_kmeans_psnr": mean_psnr(linear(coded), held_out),
        "network_psnr": network["psnr_mean"],
        "network_continuous_psnr": mean_psnr(continuous, held_out),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.linear_baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("model/weights/default"))
    parser.add_argument("--crops", type=int, default=512, help="64 px training crops to fit PCA and K-means on")
    parser.add_argument("--iterations", type=int, default=15, help="K-means iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args), indent=2))  # noqa: T201


if __name__ == "__main__":
    main()
