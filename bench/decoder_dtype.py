"""VQSERVE_DECODER_DTYPE on CPU: a float32 model against the same model with its decoder in another dtype.

Both models live in this process with the same weights; rounds alternate them (ABAB...) on `/reconstruct`'s work
(encode, quantize, decode through the codes) and on `/decode`'s (codes -> pixels) for one photo per size, so drift
hits both. Per size it prints the median throughput ratio (float32 time over the candidate's: > 1 is faster) and
its range, whether the codes are identical, the PSNR of each reconstruction against the photo and its change, and
the PSNR between the two decodes. `--config` takes a diffusers config.json instead of the shipped checkpoint
(random weights, seeded: speed and the float32-vs-candidate PSNR mean something, PSNR to the photo does not).

    .venv/bin/python -m bench.decoder_dtype [--dtype bfloat16] [--sizes 256] [--rounds 5] [--threads 2]
        [--checkpoint DIR | --config tests/model/configs/ldm-celebahq-256-vqvae.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# as `python -m service` sets for itself: waiting OpenMP threads sleep instead of spinning (bench/README.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from model import VQModel  # noqa: E402
from model.config import VQModelConfig  # noqa: E402
from model.device import cpu_has_native_bf16  # noqa: E402
from model.pixels import from_uint8, psnr, to_uint8  # noqa: E402

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "model" / "weights" / "default"


def photo(size: int) -> torch.Tensor:
    """scikit-image's astronaut at size x size as (1, 3, H, W) in [-1, 1], as the service hands it to the model."""
    import numpy as np
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC)
    return from_uint8(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())[None]


def load(args: argparse.Namespace) -> VQModel:
    if args.config is not None:
        torch.manual_seed(0)
        return VQModel(VQModelConfig.from_dict(json.loads(args.config.read_text())))
    return VQModel.from_pretrained(args.checkpoint)


def alternate(a: Callable[[], object], b: Callable[[], object], rounds: int) -> dict:
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    ratios = [ta / tb for ta, tb in zip(*times, strict=True)]
    return {
        "median_ratio": round(statistics.median(ratios), 3),
        "min_ratio": round(min(ratios), 3),
        "max_ratio": round(max(ratios), 3),
        "float32_ms": round(statistics.median(times[0]) * 1e3, 1),
        "candidate_ms": round(statistics.median(times[1]) * 1e3, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--config", type=Path, help="a config.json (random weights) instead of --checkpoint")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    exact = load(args).optimize_for_inference()
    fast = load(args).optimize_for_inference().set_decoder_dtype(dtype)
    rows = []
    with torch.inference_mode():
        for size in args.sizes:
            x = photo(size).contiguous(memory_format=torch.channels_last)
            codes = exact.quantize(exact.encode(x))[1]
            fast_codes = fast.quantize(fast.encode(x))[1]
            images = [to_uint8(m.decode_indices(codes)) for m in (exact, fast)]
            reference = to_uint8(x)
            row = {
                "size": size,
                "codes_identical": bool(torch.equal(codes, fast_codes)),
                "psnr_float32_db": round(psnr(reference, images[0]), 3),
                "psnr_candidate_db": round(psnr(reference, images[1]), 3),
                "psnr_change_db": round(psnr(reference, images[1]) - psnr(reference, images[0]), 4),
                "psnr_between_decodes_db": round(psnr(images[0], images[1]), 2),
                "reconstruct": alternate(
                    lambda x=x: exact.decode_indices(exact.quantize(exact.encode(x))[1]),
                    lambda x=x: fast.decode_indices(fast.quantize(fast.encode(x))[1]),
                    args.rounds,
                ),
                "decode": alternate(
                    lambda c=codes: exact.decode_indices(c), lambda c=codes: fast.decode_indices(c), args.rounds
                ),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "dtype": args.dtype,
                "model": str(args.config or args.checkpoint),
                "native_bf16_cpu": cpu_has_native_bf16(),
                "threads": args.threads,
                "rounds": args.rounds,
                "load_average_1m": os.getloadavg()[0],
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
