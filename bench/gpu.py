"""GPU throughput: our VQModel against diffusers' in the same dtype on the same GPU, and against the GPU's limit.

One call does it all (fits one 10-minute device run): for each image size, diffusers' VQModel and ours in half
precision (bfloat16 where supported, else float16; `--dtype` overrides), channels-last, cuDNN autotuning, inputs in
pinned memory copied with non_blocking; optionally `torch.compile` of our decoder (`--compile`). Prints images/s
for both, the ratio, the model's FLOPs per image (counted by torch's FlopCounterMode) and the achieved fraction of
a measured bf16 matmul peak. On a machine without CUDA it runs a tiny smoke pass on CPU so the script stays tested.

    python -m bench.gpu [--checkpoint DIR] [--sizes 256 512] [--batch 16] [--compile]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import VQModel
from model.device import resolve_device

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "model" / "weights" / "default"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn, x_host: torch.Tensor, device: torch.device, iters: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):  # warm-up: autotuning, compilation
        fn(x_host.to(device, non_blocking=True))
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn(x_host.to(device, non_blocking=True))
    sync(device)
    return iters * x_host.shape[0] / (time.perf_counter() - start)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    iters = 20
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--dtype", choices=["auto", "float16", "bfloat16", "float32"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile our encoder and decoder")
    args = parser.parse_args()

    from diffusers import VQModel as DiffusersVQModel

    device = resolve_device("auto")  # the service's rule: the first CUDA device when there is one
    cuda = device.type == "cuda"
    if not cuda:  # smoke mode: prove the script runs
        args.sizes, args.batch, args.iters = [64], 2, 2
    if args.dtype == "auto":
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True

    theirs = DiffusersVQModel.from_pretrained(args.checkpoint).eval().to(device, dtype)
    ours = VQModel.from_pretrained(args.checkpoint, device=device, dtype=dtype).optimize_for_inference()
    if args.compile:
        ours.encoder = torch.compile(ours.encoder, dynamic=False)  # type: ignore[assignment]
        ours.decoder = torch.compile(ours.decoder, dynamic=False)  # type: ignore[assignment]

    peak = matmul_peak_tflops(device, dtype)
    rows = []
    with torch.inference_mode():
        for size in args.sizes:
            x = torch.rand(args.batch, ours.config.in_channels, size, size, dtype=dtype) * 2 - 1
            if cuda:
                x = x.pin_memory()
            with FlopCounterMode(display=False) as counter:
                ours(x[:1].to(device))
            flops = counter.get_total_flops()
            theirs_ips = images_per_second(lambda t: theirs(t).sample, x, device, args.iters)
            ours_ips = images_per_second(
                lambda t: ours(t.contiguous(memory_format=torch.channels_last)), x, device, args.iters
            )
            rows.append(
                {
                    "size": size,
                    "batch": args.batch,
                    "dtype": str(dtype).removeprefix("torch."),
                    "diffusers_images_per_s": round(theirs_ips, 2),
                    "ours_images_per_s": round(ours_ips, 2),
                    "ratio": round(ours_ips / theirs_ips, 3),
                    "gflops_per_image": round(flops / 1e9, 2),
                    "achieved_tflops": round(ours_ips * flops / 1e12, 2),
                    "matmul_peak_tflops": round(peak, 1),
                    "fraction_of_peak": round(ours_ips * flops / 1e12 / peak, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu (smoke mode)"
    print(json.dumps({"device": device_name, "torch": torch.__version__, "compile": args.compile, "rows": rows}))


if __name__ == "__main__":
    main()
