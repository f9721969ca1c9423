"""A closed-loop HTTP load generator, run as its own process so it does not share the server's interpreter.

N clients each send one request, wait for the reply, and send the next; replies that complete inside the
measured window (after a short warm-up) count. The result is one JSON line: requests/s, latency percentiles and
status counts. Two request styles: `vqserve` (raw PNG body to /reconstruct, PNG reply) and `litserve`
(LitServe's JSON {"image": base64} to /predict).

    python -m bench.loadgen --url http://127.0.0.1:8000 --style vqserve --image x.png --concurrency 16 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def client_loop(
    client: httpx.AsyncClient, request: dict, stop_at: float, warm_until: float, latencies: list[float], codes: Counter
) -> None:
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            response = await client.post(**request)
            code = str(response.status_code)
            if response.status_code == 200 and not response.content:
                code = "empty"
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        end = time.perf_counter()
        if warm_until <= end <= stop_at:  # completions inside the measured window
            codes[code] += 1
            if code == "200":
                latencies.append(end - start)


async def run(url: str, style: str, image: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    if style == "vqserve":
        request = {"url": f"{url}/reconstruct", "content": image, "headers": {"content-type": "image/png"}}
    else:
        request = {"url": f"{url}/predict", "json": {"image": base64.b64encode(image).decode()}}
    latencies: list[float] = []
    codes: Counter = Counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        begin = time.perf_counter()
        warm_until, stop_at = begin + warmup, begin + warmup + seconds
        await asyncio.gather(
            *(client_loop(client, request, stop_at, warm_until, latencies, codes) for _ in range(concurrency))
        )
        measured = stop_at - warm_until
    return {
        "style": style,
        "concurrency": concurrency,
        "seconds": round(measured, 2),
        "ok": len(latencies),
        "throughput_rps": len(latencies) / measured,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "mean_ms": (statistics.fmean(latencies) * 1e3) if latencies else float("nan"),
        "status": dict(codes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--style", choices=["vqserve", "litserve"], required=True)
    parser.add_argument("--image", type=Path, required=True, help="a PNG file")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    result = asyncio.run(
        run(args.url.rstrip("/"), args.style, args.image.read_bytes(), args.concurrency, args.seconds, args.warmup)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM a server's process group, wait up to `timeout_s`, then SIGKILL whatever the group left behind."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
