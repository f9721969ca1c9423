"""Two settings of vqserve against each other over HTTP, in alternating rounds: which setting serves more.

Each round starts vqserve once per setting (A, then B; the next round again) and drives /reconstruct with 16
closed-loop clients at every size, PNG in and out (a real photo); per size, the median over rounds of B's
throughput over A's with its range, and both p99s. A setting is `NAME=value ...` (environment variables;
empty: the defaults).

    python -m bench.service_settings --a "VQSERVE_MAX_BATCH_SIZE=4 VQSERVE_MAX_BATCH_PIXELS=16777216" --b "" \
        [--sizes 64 128 256] [--rounds 3] [--seconds 8] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench.service_vs_peers import DEFAULT_CHECKPOINT, free_port, load, photo_png, ratio, spread, vqserve


def parse_setting(text: str) -> dict[str, str]:
    """`NAME=value NAME2=value2` -> {NAME: value, ...}."""
    pairs = [part.split("=", 1) for part in text.split()]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"a setting is NAME=value ... (got {text!r})")
    return dict(pairs)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="setting A (the reference)")
    parser.add_argument("--b", required=True, help="setting B (the candidate)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    settings = {"a": parse_setting(args.a), "b": parse_setting(args.b)}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runs: dict[int, dict[str, list[dict]]] = {size: {"a": [], "b": []} for size in args.sizes}
    with tempfile.TemporaryDirectory() as work:
        images = {size: Path(work) / f"photo{size}.png" for size in args.sizes}
        for size, path in images.items():
            path.write_bytes(photo_png(size))
        for _ in range(args.rounds):
            for name in ("a", "b"):
                with vqserve(args.checkpoint, port, env=settings[name]):
                    for size in args.sizes:
                        result = load(url, "vqserve", images[size], args.concurrency, args.seconds, args.warmup)
                        runs[size][name].append(result)
    print(f"A: {args.a!r}  B: {args.b!r}  ({args.rounds} alternating rounds, {args.concurrency} clients)")
    print("| size | A requests/s | B requests/s | B / A (min-max) | p99 A / B ms |")
    print("|---|---|---|---|---|")
    summary = {}
    for size in args.sizes:
        a, b = runs[size]["a"], runs[size]["b"]
        ratios = spread([ratio(y["throughput_rps"], x["throughput_rps"]) for x, y in zip(a, b, strict=True)])
        rps_a, rps_b = (statistics.median(r["throughput_rps"] for r in runs) for runs in (a, b))
        p99_a, p99_b = (statistics.median(r["p99_ms"] for r in runs) for runs in (a, b))
        print(
            f"| {size}² | {rps_a:.1f} | {rps_b:.1f} | {ratios['median']:.2f}x ({ratios['min']:.2f}-{ratios['max']:.2f})"
            f" | {p99_a:.0f} / {p99_b:.0f} |"
        )
        statuses = {name: [r["status"] for r in runs[size][name]] for name in ("a", "b")}
        summary[str(size)] = {"b_over_a": ratios, "a": a, "b": b, "status": statuses}
    print(json.dumps({"a": args.a, "b": args.b, "rounds": args.rounds, "sizes": summary}))


if __name__ == "__main__":
    main()
