"""A/B of ways to fuse the memory-bound work of a ResnetBlock (GroupNorm, SiLU, the residual add) on CPU.

What the model runs today (`model/layers.py`, after `optimize_for_inference()`): `F.group_norm` (ATen's
channels-last kernel: one pass for statistics, one to normalise), then `F.silu(..., inplace=True)`, and after the
second conv `h.add_(shortcut)`. Candidates, each checked against the baseline's values first:

- `compiled`: regional `torch.compile` of just `group_norm -> silu` (Inductor's fused C++ loop), shape-static.
- `single_pass`: statistics by one `var_mean` over the groups, folded into per-channel scale/shift, then one
  `addcmul` and an in-place `silu_` (no separate normalised tensor besides the output).
- `conv_add_postop`: the second conv with oneDNN's binary "add" post-op (`mkldnn._convolution_pointwise.binary`),
  so the residual is added while the conv writes its output instead of in a pass of its own.
- `cpp_fused` (`--cpp`, needs a C++ compiler; built on first use, about a minute): `bench/kernels/gn_silu.cpp`,
  GroupNorm and SiLU in one C++/OpenMP kernel (statistics pass, then one pass writing `silu(x*scale + shift)`).
  `--model` also A/Bs it inside the shipped model (every ResnetBlock's two norm+SiLU pairs) on a 256² reconstruct.

Rounds alternate baseline and candidate (ABAB...) in one process; each round's ratio is baseline time over
candidate time (> 1: the candidate is faster). Prints the median ratio and its spread per shape, as JSON lines.
Shapes are the shipped model's (block_out_channels 32/64/128, 16 groups) at a 256x256 input, batch 1.

    .venv/bin/python -m bench.norm_fusion [--rounds 7] [--threads 1] [--quick] [--cpp [--model]]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types
from collections.abc import Callable
from pathlib import Path

# as `python -m service` sets for itself: waiting OpenMP threads sleep instead of spinning (bench/README.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model import VQModel  # noqa: E402

GROUPS = 16
EPS = 1e-6
SHAPES = [(1, 128, 64, 64), (1, 64, 128, 128), (1, 32, 256, 256)]
QUICK_SHAPES = [(1, 32, 32, 32)]

Fn = Callable[..., torch.Tensor]


def norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The model's path today."""
    return F.silu(F.group_norm(x, GROUPS, weight, bias, EPS), inplace=True)


def norm_silu_single_pass(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    b, c = x.shape[:2]
    var, mean = torch.var_mean(x.reshape(b, GROUPS, -1), dim=2, correction=0)  # (B, G)
    scale = torch.rsqrt(var + EPS).repeat_interleave(c // GROUPS, dim=1) * weight  # (B, C)
    shift = bias - mean.repeat_interleave(c // GROUPS, dim=1) * scale
    return F.silu(torch.addcmul(shift.view(b, c, 1, 1), x, scale.view(b, c, 1, 1)), inplace=True)


def conv_then_add(h: torch.Tensor, shortcut: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The model's path today."""
    return F.conv2d(h, weight, bias, padding=1).add_(shortcut)


def conv_add_postop(h: torch.Tensor, shortcut: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    one = [1, 1]
    return torch.ops.mkldnn._convolution_pointwise.binary(
        h, shortcut, weight, bias, one, one, one, 1, "add", None, None, [], None
    )


def cpp_kernel() -> Callable[..., torch.Tensor]:
    """`gn_silu(x, weight, bias, groups, eps)` from bench/kernels/gn_silu.cpp, compiled on first use."""
    from torch.utils.cpp_extension import load_inline

    source = (Path(__file__).parent / "kernels" / "gn_silu.cpp").read_text()
    flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
    module = load_inline("vqserve_bench_gn_silu", [source], functions=["gn_silu"], extra_cflags=flags,
                         extra_ldflags=["-fopenmp"])  # fmt: skip
    return module.gn_silu


def model_ab(kernel: Callable[..., torch.Tensor], rounds: int) -> dict:
    """The shipped model's 256² reconstruct, ResnetBlocks as they are against their norm+SiLU pairs in `kernel`."""
    from model.layers import ResnetBlock

    checkpoint = Path(__file__).resolve().parents[1] / "model" / "weights" / "default"
    exact = VQModel.from_pretrained(checkpoint).optimize_for_inference()
    fused = VQModel.from_pretrained(checkpoint).optimize_for_inference()

    def forward(block: ResnetBlock, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        n1, n2 = block.norm1, block.norm2
        assert isinstance(n1, torch.nn.GroupNorm)
        assert isinstance(n2, torch.nn.GroupNorm)
        h = block.conv1(kernel(x, n1.weight, n1.bias, n1.num_groups, n1.eps))
        h = block.conv2(kernel(h, n2.weight, n2.bias, n2.num_groups, n2.eps))
        return h.add_(block.conv_shortcut(x) if block.conv_shortcut is not None else x)

    for module in fused.modules():
        if isinstance(module, ResnetBlock):
            module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
    with torch.inference_mode():
        return _model_rows(exact, fused, rounds)


def _model_rows(exact: VQModel, fused: VQModel, rounds: int) -> dict:
    x = (torch.rand(1, 3, 256, 256) * 2 - 1).contiguous(memory_format=torch.channels_last)
    a = exact.decode_indices(exact.quantize(exact.encode(x))[1])
    b = fused.decode_indices(fused.quantize(fused.encode(x))[1])
    codes_equal = bool(torch.equal(exact.quantize(exact.encode(x))[1], fused.quantize(fused.encode(x))[1]))
    row = {"candidate": "cpp_fused_in_model_reconstruct_256", "codes_identical": codes_equal,
           "max_abs_error": float((a - b).abs().max())}  # fmt: skip
    row |= alternate(
        lambda: exact.decode_indices(exact.quantize(exact.encode(x))[1]),
        lambda: fused.decode_indices(fused.quantize(fused.encode(x))[1]),
        (),
        rounds,
        1,
    )
    return row


def alternate(a: Fn, b: Fn, args: tuple[torch.Tensor, ...], rounds: int, calls: int) -> dict:
    """ABAB... timing; per round the ratio time(a) / time(b)."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(rounds):
        for key, fn in (("a", a), ("b", b)):
            start = time.perf_counter()
            for _ in range(calls):
                fn(*args)
            times[key].append((time.perf_counter() - start) / calls)
    ratios = [ta / tb for ta, tb in zip(times["a"], times["b"], strict=True)]
    return {
        "median_ratio": round(statistics.median(ratios), 3),
        "min_ratio": round(min(ratios), 3),
        "max_ratio": round(max(ratios), 3),
        "baseline_ms": round(statistics.median(times["a"]) * 1e3, 3),
        "candidate_ms": round(statistics.median(times["b"]) * 1e3, 3),
    }


def cases(
    shape: tuple[int, int, int, int], kernel: Callable[..., torch.Tensor] | None = None
) -> list[tuple[str, Fn, Fn, tuple[torch.Tensor, ...]]]:
    g = torch.Generator().manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    shortcut = torch.randn(shape, generator=g).contiguous(memory_format=torch.channels_last)
    weight, bias = 1 + 0.2 * torch.randn(c, generator=g), 0.1 * torch.randn(c, generator=g)
    conv_w = (0.05 * torch.randn(c, c, 3, 3, generator=g)).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(norm_silu, dynamic=False)
    found: list[tuple[str, Fn, Fn, tuple[torch.Tensor, ...]]] = [
        ("compiled", norm_silu, compiled, (x, weight, bias)),
        ("single_pass", norm_silu, norm_silu_single_pass, (x, weight, bias)),
        ("conv_add_postop", conv_then_add, conv_add_postop, (x, shortcut, conv_w, bias)),
    ]
    if kernel is not None:
        found.append(("cpp_fused", norm_silu, lambda *a: kernel(*a, GROUPS, EPS), (x, weight, bias)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="calls per timed round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="one small shape, 2 rounds: proves the script runs")
    parser.add_argument("--cpp", action="store_true", help="also the C++ kernel (bench/kernels/gn_silu.cpp)")
    parser.add_argument("--model", action="store_true", help="with --cpp: the kernel inside the shipped model too")
    args = parser.parse_args()
    kernel = cpp_kernel() if args.cpp else None
    torch.set_num_threads(args.threads)
    shapes, rounds = (QUICK_SHAPES, 2) if args.quick else (SHAPES, args.rounds)
    rows = []
    with torch.inference_mode():
        for shape in shapes:
            for name, baseline, candidate, inputs in cases(shape, kernel):
                started = time.perf_counter()
                expected, got = baseline(*inputs), candidate(*inputs)  # first call: compiles where it compiles
                first_call_s = time.perf_counter() - started
                error = float((expected - got).abs().max())
                row = {"candidate": name, "shape": list(shape), "max_abs_error": error, "first_call_s": first_call_s}
                row |= alternate(baseline, candidate, inputs, rounds, args.calls)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if kernel is not None and args.model:  # loads models: outside inference mode (the quantizer caches by version)
        rows.append(model_ab(kernel, rounds))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({"threads": args.threads, "rounds": rounds, "load_average_1m": load, "rows": rows}))


if __name__ == "__main__":
    main()
