"""The nearest-code search: `VectorQuantizer.nearest` against the form it replaced, side by side, alternating.

The replaced form (kept here as the reference) computed 64 MiB distance chunks, each a fresh tensor, and took
`argmin`; `nearest` now reuses one cache-sized chunk and takes `torch.min` (first minimal index, as argmin). Per
size: median time of each over the rounds, the ratio, and whether the codes are identical. Latents are the shipped
default model's own (a real photo encoded), tiled to the wanted count, plus random ones.

    .venv/bin/python -m bench.quantizer [--counts 4096 65536] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m service` runs

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model import VQModel  # noqa: E402
from model.pixels import from_uint8  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def replaced_nearest(codebook_aug_t: torch.Tensor, z_flat: torch.Tensor) -> torch.Tensor:
    """The search as it was before: 2**24-element chunks, a new distance matrix each, then argmin."""
    rows = max(1, (1 << 24) // codebook_aug_t.shape[1])
    out = torch.empty(z_flat.shape[0], dtype=torch.long)
    for start in range(0, z_flat.shape[0], rows):
        z = z_flat[start : start + rows]
        z_aug = torch.cat([-2.0 * z, z.pow(2).sum(dim=1, keepdim=True), z.new_ones(len(z), 1)], dim=1)
        torch.argmin(z_aug @ codebook_aug_t, dim=1, out=out[start : start + rows])
    return out


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[4096, 65536], help="latent vectors per search")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from skimage import data

    model = VQModel.from_pretrained(ROOT / "model" / "weights" / "default").optimize_for_inference()
    quantizer = model.quantize
    photo = from_uint8(torch.from_numpy(np.ascontiguousarray(data.astronaut()[:256, :256])).permute(2, 0, 1))
    with torch.inference_mode():
        real = model.encode(photo[None].contiguous()).permute(0, 2, 3, 1).reshape(-1, model.config.embed_dim)
        codebook_aug_t = quantizer._augmented_codebook_t()
        rows = []
        for count in args.counts:
            generator = torch.Generator().manual_seed(count)
            z = torch.cat([real.repeat(count // len(real) + 1, 1)[: count // 2], torch.randn(count - count // 2,
                           real.shape[1], generator=generator) * real.std()])  # fmt: skip
            old, new = replaced_nearest(codebook_aug_t, z), quantizer.nearest(z)  # warm-up, and the codes
            before, after = [], []
            for _ in range(args.rounds):  # alternating: ABAB...
                before.append(timed(lambda z=z: replaced_nearest(codebook_aug_t, z)))
                after.append(timed(lambda z=z: quantizer.nearest(z)))
            rows.append(
                {
                    "count": count,
                    "codes": int(codebook_aug_t.shape[1]),
                    "codes_identical": bool(torch.equal(old, new)),
                    "replaced_ms": round(statistics.median(before) * 1e3, 1),
                    "nearest_ms": round(statistics.median(after) * 1e3, 1),
                    "ratio": round(statistics.median(b / a for b, a in zip(before, after, strict=True)), 2),
                    "ratio_min_max": [
                        round(min(b / a for b, a in zip(before, after, strict=True)), 2),
                        round(max(b / a for b, a in zip(before, after, strict=True)), 2),
                    ],  # fmt: skip
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "load_average_1m": os.getloadavg()[0],
                      "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
