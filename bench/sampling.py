"""Sampling from a prior through the service (issue 17): do the raster steps of concurrent requests batch?

`python -m service` on 127.0.0.1 serving CHECKPOINT (default model/weights/digits, which needs its prior/; with
`--random-prior` a copy gets a random prior of `model.train_prior`'s default shape: speed does not depend on the
weights). Alternating rounds, each drawing N grids (default 16), label 0, seeds fixed:
  one request  one /generate of count N: its N samples step together (batches of N)
  concurrent   N /generate requests of count 1 at once: their steps batch across requests
  sequential   N /generate requests of count 1, one after another: batches of 1
Prints grids and codes per second of each (median over the rounds), the ratios side by side, and the mean steps
per batch of the concurrent rounds (`vqserve_batch_size{op="prior_step"}`), then one JSON line.

    python -m bench.sampling [--checkpoint DIR] [--random-prior] [-n 16] [--rounds 5] [--threads 2] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import stop_group

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "model" / "weights" / "digits"
# model.train_prior's defaults (the shape of the prior it trains), for --random-prior
RANDOM_PRIOR = {"hidden_channels": 48, "num_layers": 6, "kernel_size": 3, "output_channels": 128, "num_labels": 10}


def with_random_prior(checkpoint: Path, into: Path) -> Path:
    import torch

    from model.config import VQModelConfig
    from model.prior import PixelCNNPrior, PriorConfig

    shutil.copytree(checkpoint, into, ignore=shutil.ignore_patterns("prior"))
    config = VQModelConfig.from_json_file(into / "config.json")
    side = (config.sample_size or 28) // config.downsample_factor
    torch.manual_seed(0)
    prior = PixelCNNPrior(PriorConfig(config.num_vq_embeddings, (side, side), **RANDOM_PRIOR))  # type: ignore[arg-type]
    prior.save_pretrained(into / "prior")
    return into


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def generate(url: str, count: int, first_sample: int) -> None:
    body = {"count": count, "label": 0, "seed": 1, "first_sample": first_sample}
    response = httpx.post(f"{url}/generate", json=body, timeout=600)
    response.raise_for_status()


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--checkpoint", type=Path, default=DIGITS)
    parser.add_argument("--random-prior", action="store_true", help="serve a copy with a random prior")
    parser.add_argument("-n", "--count", type=int, default=16, help="grids per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's VQSERVE_MAX_WAIT_MS")
    args = parser.parse_args()
    n = args.count
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = (
            with_random_prior(args.checkpoint, Path(scratch) / "ckpt") if args.random_prior else args.checkpoint
        )
        if not (checkpoint / "prior" / "config.json").is_file():
            raise SystemExit(f"{checkpoint} has no prior/: train one (make train-prior) or pass --random-prior")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--model-path", str(checkpoint), "--torch-threads", str(args.threads)]
        command += ["--max-batch-size", str(max(16, n)), "--max-images-per-request", str(max(32, n))]
        command += ["--max-wait-ms", str(args.max_wait_ms)]
        env = {**os.environ, "VQSERVE_LOG_LEVEL": "warning"}
        server = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            end = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > end or server.poll() is not None:
                    raise SystemExit("the server did not turn ready")
                time.sleep(0.2)
            info = httpx.get(f"{url}/models/default", timeout=10).json()["prior"]
            cells = info["grid"][0] * info["grid"][1]
            with ThreadPoolExecutor(n) as pool:

                def concurrent() -> None:
                    for future in [pool.submit(generate, url, 1, b) for b in range(n)]:
                        future.result()

                forms: dict[str, Callable[[], None]] = {
                    "one request": lambda: generate(url, n, 0),
                    "concurrent": concurrent,
                    "sequential": lambda: [generate(url, 1, b) for b in range(n)] and None,
                }
                for form in forms.values():  # warm-up
                    form()
                times: dict[str, list[float]] = {name: [] for name in forms}
                batches = items = 0.0
                for _ in range(args.rounds):  # alternating rounds
                    for name, form in forms.items():
                        before = (
                            metric(url, "vqserve_batch_size_count", op="prior_step"),
                            metric(url, "vqserve_batch_size_sum", op="prior_step"),
                        )
                        times[name].append(timed(form))
                        if name == "concurrent":
                            batches += metric(url, "vqserve_batch_size_count", op="prior_step") - before[0]
                            items += metric(url, "vqserve_batch_size_sum", op="prior_step") - before[1]
        finally:
            stop_group(server, 30)
    median = {name: statistics.median(values) for name, values in times.items()}
    grids = {name: n / seconds for name, seconds in median.items()}
    print(  # noqa: T201
        f"{n} grids of {info['grid']} ({cells} steps each), {args.rounds} alternating rounds, {args.threads} threads, "
        f"max_wait_ms {args.max_wait_ms}"
    )
    print("| form | s per round (median) | grids/s | codes/s |")  # noqa: T201
    print("|---|---|---|---|")  # noqa: T201
    for name in forms:
        print(f"| {name} | {median[name]:.3f} | {grids[name]:.1f} | {grids[name] * cells:.0f} |")  # noqa: T201
    steps_per_batch = items / batches if batches else 0.0
    print(  # noqa: T201
        f"concurrent / sequential: {grids['concurrent'] / grids['sequential']:.2f}x; concurrent / one request: "
        f"{grids['concurrent'] / grids['one request']:.2f}x; steps per batch (concurrent rounds): {steps_per_batch:.2f}"
    )
    result = {
        "bench": "sampling",
        "checkpoint": str(args.checkpoint),
        "random_prior": args.random_prior,
        "grid": info["grid"],
        "count": n,
        "rounds": args.rounds,
        "threads": args.threads,
        "max_wait_ms": args.max_wait_ms,
        "seconds": median,
        "grids_per_s": grids,
        "steps_per_batch_concurrent": steps_per_batch,
    }
    print(json.dumps(result))  # noqa: T201


if __name__ == "__main__":
    main()
