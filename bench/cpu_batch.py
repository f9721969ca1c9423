"""Which `VQSERVE_MAX_BATCH_SIZE` suits a CPU: the engine's time per image at batch 1, 2, 4, 8 (issue 19).

One reconstruct (encode, quantize, decode) of 256x256 images with the shipped default, in process, under inference
mode, with the threads `python -m service` would use (the CPU quota; `--threads` overrides). Batch sizes alternate
within each round, so load from a neighbour hits them all alike; the median per-image time of each is printed side
by side with its ratio to batch 1.

    python -m bench.cpu_batch [--checkpoint DIR] [--side 256] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m service` runs (bench/README.md)

import torch  # noqa: E402

from model import VQModel  # noqa: E402
from service.cpus import available_cpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 2, 4, 8)


def per_image_ms(model: VQModel, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        _, indices = model.quantize(model.encode(batch))
        model.decode_indices(indices)
    return (time.perf_counter() - started) * 1000 / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "model" / "weights" / "default")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: the CPU quota, as the service sizes torch")
    args = parser.parse_args()
    threads = args.threads or available_cpus().count
    torch.set_num_threads(threads)
    model = VQModel.from_pretrained(args.checkpoint, device="cpu").eval().optimize_for_inference()
    generator = torch.Generator().manual_seed(0)
    inputs = {
        b: torch.rand(b, model.config.in_channels, args.side, args.side, generator=generator) * 2 - 1 for b in BATCHES
    }
    for b in BATCHES:  # warm-up, not timed
        per_image_ms(model, inputs[b])
    times: dict[int, list[float]] = {b: [] for b in BATCHES}
    for _ in range(args.rounds):
        for b in BATCHES:
            times[b].append(per_image_ms(model, inputs[b]))
    medians = {b: statistics.median(ts) for b, ts in times.items()}
    print(f"{args.side}x{args.side} reconstruct, {threads} torch threads, {args.rounds} alternating rounds")
    print("| batch | ms per image (median) | vs batch 1 |")
    print("|---|---|---|")
    for b in BATCHES:
        print(f"| {b} | {medians[b]:.1f} | {medians[b] / medians[1]:.2f} |")
    print(json.dumps({"side": args.side, "threads": threads, "per_image_ms": medians, "rounds": times}))


if __name__ == "__main__":
    main()
