"""Which batch bounds suit a CPU (`VQSERVE_MAX_BATCH_SIZE`, `VQSERVE_MAX_BATCH_PIXELS`): the engine's time per
image at batch 1, 2, 4, 8, 16 and each image side (issues 19, 20).

One reconstruct (encode, quantize, decode) of side x side images with the shipped default, in process, under
inference mode, with the threads and the allocator policy `python -m service` uses (the CPU quota, `--threads`
overrides; freed blocks kept for the next batch, `service/memory.py`: without it large batches page-fault their
activations anew and look dearer than they are in the service). Batch sizes
and sides alternate within each round, so load from a neighbour hits them all alike; per side, the median per-image
time of each batch is printed side by side with its ratio to batch 1, and the pixels the batch holds.

    python -m bench.cpu_batch [--checkpoint DIR] [--sides 64 128 256] [--batches 1 2 4 8 16] [--rounds 5]
        [--threads N]
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
from service.memory import keep_freed_memory_for_reuse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def per_image_ms(model: VQModel, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        _, indices = model.quantize(model.encode(batch))
        model.decode_indices(indices)
    return (time.perf_counter() - started) * 1000 / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "model" / "weights" / "default")
    parser.add_argument("--sides", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: the CPU quota, as the service sizes torch")
    parser.add_argument(
        "--decoder-dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="VQSERVE_DECODER_DTYPE"
    )
    args = parser.parse_args()
    keep_freed_memory_for_reuse()  # as `create_app` does, before any tensor is allocated
    threads = args.threads or available_cpus().count
    torch.set_num_threads(threads)
    model = VQModel.from_pretrained(args.checkpoint, device="cpu").eval().optimize_for_inference()
    model.set_decoder_dtype(getattr(torch, args.decoder_dtype))
    generator = torch.Generator().manual_seed(0)
    cases = [(side, b) for side in args.sides for b in args.batches]
    inputs = {
        (side, b): torch.rand(b, model.config.in_channels, side, side, generator=generator) * 2 - 1 for side, b in cases
    }
    for case in cases:  # warm-up, not timed
        per_image_ms(model, inputs[case])
    times: dict[tuple[int, int], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            times[case].append(per_image_ms(model, inputs[case]))
    medians = {case: statistics.median(ts) for case, ts in times.items()}
    print(f"reconstruct, decoder {args.decoder_dtype}, {threads} torch threads, {args.rounds} alternating rounds")
    print("| side | batch | pixels per batch | ms per image (median) | vs batch 1 |")
    print("|---|---|---|---|---|")
    for side, b in cases:
        first = medians[(side, args.batches[0])]
        print(f"| {side} | {b} | {b * side * side} | {medians[(side, b)]:.1f} | {medians[(side, b)] / first:.2f} |")
    names = {case: f"{case[0]}x{case[1]}" for case in cases}  # side x batch
    print(
        json.dumps(
            {
                "threads": threads,
                "decoder_dtype": args.decoder_dtype,
                "per_image_ms": {names[case]: medians[case] for case in cases},
                "rounds": {names[case]: times[case] for case in cases},
            }
        )
    )


if __name__ == "__main__":
    main()
