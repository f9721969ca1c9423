"""Our VQModel against diffusers' on the same weights, on CPU: encode, decode and end to end.

Both models run alternately in one process under `torch.inference_mode()`, so machine noise hits both alike;
the printed ratio is diffusers' median time over ours (above 1: ours is faster). Outputs are compared too: a
speed-up that changes results does not count.

    .venv/bin/python -m bench.model_vs_diffusers [--checkpoint DIR] [--size 256] [--batches 1 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import VQModel as DiffusersVQModel

from model import VQModel

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "model" / "weights" / "default"
# Used when no shipped checkpoint exists yet: an f=4 RGB model of the default's size class.
FALLBACK_CONFIG = {
    "block_out_channels": [64, 128, 128],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "latent_channels": 4,
    "num_vq_embeddings": 4096,
    "vq_embed_dim": 4,
    "mid_block_add_attention": False,
}


def load_pair(checkpoint: Path | None, tmp: Path) -> tuple[DiffusersVQModel, VQModel, str]:
    if checkpoint is not None and (checkpoint / "config.json").is_file():
        source = str(checkpoint)
    else:
        torch.manual_seed(0)
        model = DiffusersVQModel(**FALLBACK_CONFIG).eval()
        with torch.no_grad():  # a codebook drawn from real latents, as training leaves it: no near-ties
            latents = model.encode(torch.rand(2, 3, 64, 64) * 2 - 1).latents
            vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
            codebook = model.quantize.embedding.weight
            codebook.copy_(
                vectors[torch.randint(0, len(vectors), (len(codebook),))] * (1 + 0.1 * torch.randn_like(codebook))
            )
        model.save_pretrained(tmp)
        source, checkpoint = f"random weights, config {json.dumps(FALLBACK_CONFIG)}", tmp
    theirs = DiffusersVQModel.from_pretrained(checkpoint).eval()
    ours = VQModel.from_pretrained(checkpoint).optimize_for_inference()
    return theirs, ours, source


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def compare(
    theirs: DiffusersVQModel, ours: VQModel, images: torch.Tensor, repeats: int
) -> list[tuple[str, float, float, float]]:
    """(op, diffusers median s, ours median s, difference) for encode, decode and end to end."""
    latents = theirs.encode(images).latents
    ops: dict[str, tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]] = {
        "encode": (
            lambda: theirs.quantize(theirs.encode(images).latents)[2][2],
            lambda: ours.quantize(ours.encode(images))[1],
        ),
        "decode": (lambda: theirs.decode(latents).sample, lambda: ours.decode(latents)),
        "end-to-end": (lambda: theirs(images).sample, lambda: ours(images)),
    }
    rows = []
    for name, (their_fn, our_fn) in ops.items():
        a, b = their_fn(), our_fn()
        # encode: how many code indices differ; images: the largest absolute difference
        diff = float((a.flatten() != b.flatten()).sum()) if name == "encode" else (a - b).abs().max().item()
        t_theirs: list[float] = []
        t_ours: list[float] = []
        for _ in range(repeats):  # alternate so drift hits both
            t_theirs += timed(their_fn, 1)
            t_ours += timed(our_fn, 1)
        rows.append((name, statistics.median(t_theirs), statistics.median(t_ours), diff))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        theirs, ours, source = load_pair(args.checkpoint, Path(tmp))
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; model: {source}"
    )
    print("# encode = encode + quantize; its last column counts differing code indices, the others max |diff|")
    print(f"{'op':<12}{'batch':>6}{'diffusers ms':>14}{'ours ms':>10}{'ratio':>8}{'difference':>12}")
    g = torch.Generator().manual_seed(0)
    totals = {"theirs": 0.0, "ours": 0.0}
    with torch.inference_mode():
        for batch in args.batches:
            images = torch.rand(batch, ours.config.in_channels, args.size, args.size, generator=g) * 2 - 1
            for name, m_theirs, m_ours, diff in compare(theirs, ours, images, args.repeats):
                if name == "end-to-end":
                    totals["theirs"] += m_theirs
                    totals["ours"] += m_ours
                ms = f"{m_theirs * 1e3:>14.1f}{m_ours * 1e3:>10.1f}"
                print(f"{name:<12}{batch:>6}{ms}{m_theirs / m_ours:>8.2f}{diff:>12.2e}")
    print(f"end-to-end ratio over all batches (diffusers / ours): {totals['theirs'] / totals['ours']:.2f}")


if __name__ == "__main__":
    main()
