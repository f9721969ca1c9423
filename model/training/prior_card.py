"""Figures for a prior's model card: held-out bits per code against baselines, class recognition, a sample grid.

`python -m model.training.prior_card all model/weights/digits` writes `prior/evaluation.json` (every figure of
`prior/README.md`) and `prior/samples.png` next to the prior of that VQ checkpoint:

- held-out negative log-likelihood in bits per code of the VQ model's 300 held-out digits, under the prior (with
  their true labels, and without), against the uniform code distribution (log2 K) and the unigram distribution
  of the training codes (add-one smoothed), and the same codes with their cells shuffled within each grid;
- recognition: samples drawn for each class are decoded by the VQ model, resized to 8x8 and classified by an
  SVC trained on scikit-learn's 8x8 training digits; the classifier's accuracy on the real held-out digits (as
  they are, and after the same 28 -> 8 round trip, and through the VQ model) is measured beside it;
- sampling speed in grids per second on the CPU with `--threads` threads (1: the network is tiny, a second
  thread only adds synchronisation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model import VQModel
from model.pixels import to_uint8
from model.prior import PRIOR_SUBFOLDER, PixelCNNPrior, load_prior_for, nll_bits, sample
from model.training import codes as code_data
from model.training import data

SAMPLES_PER_CLASS = 20
GRID_COLUMNS = 10


def unigram_bits(train: torch.Tensor, held_out: torch.Tensor, num_codes: int) -> float:
    """Mean bits per code of `held_out` under the add-one-smoothed code frequencies of `train`."""
    counts = torch.bincount(train.flatten(), minlength=num_codes).double() + 1.0
    log2_p = (counts / counts.sum()).log2()
    return float(-log2_p[held_out.flatten()].mean())


def shuffled_cells(codes: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N, H, W) -> each grid's cells in a random order: the same codes, without their layout."""
    generator = torch.Generator().manual_seed(seed)
    flat = codes.flatten(1)
    order = torch.stack([torch.randperm(flat.shape[1], generator=generator) for _ in range(len(codes))])
    return flat.gather(1, order).view_as(codes)


def to_digits_scale(images: torch.Tensor) -> np.ndarray:
    """(N, 1, S, S) in [-1, 1] -> (N, 64) features as scikit-learn's digits: 8x8, values 0..16."""
    small = F.interpolate((images.float() + 1) / 2, size=(8, 8), mode="bilinear", antialias=True)
    return (small.clamp(0, 1) * 16).flatten(1).numpy()


def digit_classifier() -> Any:
    """An SVC on the 8x8 training digits (the first 1,497: the VQ model's training split)."""
    import sklearn.datasets
    from sklearn.svm import SVC

    digits = sklearn.datasets.load_digits()
    n_train = len(digits.data) - data.DIGITS_EVAL
    return SVC(gamma=0.001).fit(digits.data[:n_train], digits.target[:n_train])


@torch.no_grad()
def decode(vq: VQModel, codes: torch.Tensor) -> torch.Tensor:
    return vq.decode_indices(codes.to(vq.device)).cpu()


def classifier_accuracy(vq: VQModel, classifier: Any) -> dict[str, float]:
    """The classifier on the real held-out digits: as given, after 28 -> 8 resizing, and through the VQ model."""
    import sklearn.datasets

    digits = sklearn.datasets.load_digits()
    target = digits.target[-data.DIGITS_EVAL :]
    _, held_out = data.digits(1)
    reconstructed = decode(vq, code_data.encode(vq, held_out))

    def accuracy(features: np.ndarray) -> float:
        return round(float((classifier.predict(features) == target).mean()), 4)

    return {
        "held_out_8x8": accuracy(digits.data[-data.DIGITS_EVAL :]),
        "held_out_28_resized_to_8": accuracy(to_digits_scale(held_out)),
        "held_out_vq_reconstructions_resized_to_8": accuracy(to_digits_scale(reconstructed)),
    }


def class_samples(prior: PixelCNNPrior, temperature: float, count: int) -> torch.Tensor:
    """(num_labels, count, H, W): `count` samples of each class, class c drawn with seed c."""
    return torch.stack(
        [sample(prior, count, label=c, temperature=temperature, seed=c) for c in range(prior.config.num_labels)]
    )


def recognition(vq: VQModel, classifier: Any, samples: torch.Tensor) -> dict[str, Any]:
    """How often the classifier names the asked class of (classes, n, H, W) sampled codes."""
    classes, n = samples.shape[:2]
    predicted = classifier.predict(to_digits_scale(decode(vq, samples.flatten(0, 1)))).reshape(classes, n)
    hits = predicted == np.arange(classes)[:, None]
    return {
        "samples": int(classes * n),
        "recognized": round(float(hits.mean()), 4),
        "per_class": [round(float(h.mean()), 2) for h in hits],
    }


def sample_grid(vq: VQModel, samples: torch.Tensor, scale: int = 2) -> Image.Image:
    """One row per class of decoded samples (classes, n, H, W) -> a PIL image with 2 px gutters."""
    classes = samples.shape[0]
    images = decode(vq, samples[:, :GRID_COLUMNS].flatten(0, 1))  # (classes * columns, 1, S, S)
    size, pad = images.shape[-1], 2
    canvas = np.full((classes * (size + pad) + pad, GRID_COLUMNS * (size + pad) + pad), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        row, column = divmod(k, GRID_COLUMNS)
        y, x = pad + row * (size + pad), pad + column * (size + pad)
        canvas[y : y + size, x : x + size] = to_uint8(image)[0].numpy()
    grid = Image.fromarray(canvas)
    return grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)


def sampling_speed(prior: PixelCNNPrior, count: int, repeats: int = 5) -> dict[str, float]:
    """Grids per second of one `sample(prior, count)` call, median over `repeats`: per wall-clock second, and per
    CPU second of this process (the figure a shared, loaded machine does not distort)."""
    wall, cpu = [], []
    for seed in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        sample(prior, count, label=seed % max(1, prior.config.num_labels), seed=seed)
        wall.append(count / (time.perf_counter() - start))
        cpu.append(count / max(1e-9, time.process_time() - start_cpu))
    return {
        "grids_per_second": round(statistics.median(wall), 2),
        "grids_per_cpu_second": round(statistics.median(cpu), 2),
    }


def report(vq_dir: Path, temperature: float = 1.0) -> tuple[dict[str, Any], torch.Tensor]:
    vq = VQModel.from_pretrained(vq_dir)
    prior = load_prior_for(vq_dir, vq.config)
    if prior is None:
        raise SystemExit(f"error: {vq_dir} has no {PRIOR_SUBFOLDER}/ folder")
    code_data.training_data_of(vq_dir)
    splits = code_data.digits_codes(vq)
    k = vq.config.num_vq_embeddings
    held_out, labels = splits.held_out, splits.held_out_labels
    nll: dict[str, float] = {
        "uniform": round(math.log2(k), 4),
        "unigram_of_train_codes": round(unigram_bits(splits.train, held_out, k), 4),
        "prior_unconditional": round(float(nll_bits(prior, held_out).mean()), 4),
        "prior_shuffled_cells_unconditional": round(float(nll_bits(prior, shuffled_cells(held_out)).mean()), 4),
    }
    if prior.config.conditional:
        nll["prior_conditional"] = round(float(nll_bits(prior, held_out, labels).mean()), 4)
    weights = next(p for p in (vq_dir / PRIOR_SUBFOLDER).iterdir() if p.suffix == ".safetensors")
    out: dict[str, Any] = {
        "prior": {
            "parameters": sum(p.numel() for p in prior.parameters()),
            "file_mb": round(weights.stat().st_size / 2**20, 3),
            "grid": list(prior.config.grid_size),
        },
        "held_out_grids": len(held_out),
        "nll_bits_per_code": nll,
        "threads": torch.get_num_threads(),
    }
    samples = torch.empty(0)
    if prior.config.conditional:
        classifier = digit_classifier()
        samples = class_samples(prior, temperature, SAMPLES_PER_CLASS)
        out["classifier"] = {"model": "sklearn SVC(gamma=0.001) on the 1,497 8x8 training digits"}
        out["classifier"]["accuracy"] = classifier_accuracy(vq, classifier)
        out["recognition"] = {"temperature": temperature, **recognition(vq, classifier, samples)}
        unconditional = sample(prior, 100, label=None, temperature=temperature, seed=10_000)
        predicted = classifier.predict(to_digits_scale(decode(vq, unconditional)))
        out["unconditional_100_predicted_classes"] = np.bincount(predicted, minlength=10).tolist()
    out["sampling_speed"] = {f"count_{n}": sampling_speed(prior, n) for n in (1, 20)}
    out["load_average_1min"] = round(os.getloadavg()[0], 1)  # the machine is shared: the wall-clock rate reads less
    return out, samples


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m model.training.prior_card")
    parser.add_argument("what", choices=["all", "report"], help="all: write evaluation.json and samples.png")
    parser.add_argument("vq", type=Path, help="the VQ checkpoint directory holding prior/")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures, samples = report(args.vq, args.temperature)
    figures["command"] = f"python -m model.training.prior_card all {args.vq} --threads {args.threads}"
    text = json.dumps(figures, indent=2)
    print(text)  # noqa: T201
    if args.what == "all":
        (args.vq / PRIOR_SUBFOLDER / "evaluation.json").write_text(text + "\n")
        if len(samples):
            vq = VQModel.from_pretrained(args.vq)
            sample_grid(vq, samples).save(args.vq / PRIOR_SUBFOLDER / "samples.png", optimize=True)


if __name__ == "__main__":
    main()
