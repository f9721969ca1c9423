"""vqserve over HTTP against its peers, side by side in one run (issue 7's goals 1-4, issue 20's alternation).

At each headline size (64, 128 and 256 px by default), in alternating rounds (vqserve, LitServe, the bare models;
again; ...), each round giving its own ratios; reported as the median ratio and its range (min, max) over rounds:
1. vqserve vs LitServe (batching, max batch 8) hosting diffusers' VQModel: /reconstruct throughput and p99 at 16
   concurrent clients, PNG in and out (LitServe with its idiomatic JSON/base64 interface).
2. vqserve vs diffusers' VQModel in-process at batch 8 (no HTTP, no codecs): throughput.
3. One client: vqserve's median latency vs our model's bare compute time for the same image.
4. Scaling curves (`--curves`): throughput and p50/p99 against concurrency and image size -> bench/results/.
5. `--decoder-dtype bfloat16`: vqserve with its decoder in that dtype as one more setup of every round, against
   vqserve's default (float32) and LitServe: issue 20's "fast pixels" (codes stay float32's).

Servers run one at a time as subprocesses on 127.0.0.1; the load generator (bench/loadgen.py) is its own process.
`--quick` is a smoke pass (one round of 2 s windows at the first size, nothing written) that proves it runs.

    .venv/bin/python -m bench.service_vs_peers [--checkpoint DIR] [--seconds 10] [--rounds 5] [--curves] [--quick]
        [--decoder-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Every process of this benchmark (servers, peer, the bare in-process models) runs with the wait policy that
# `python -m service` sets for itself, so that the comparison is between serving stacks, not OpenMP settings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.loadgen import stop_group  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_CHECKPOINT = ROOT / "model" / "weights" / "default"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo_png(size: int) -> bytes:
    """A real photo (scikit-image's astronaut), resized to size x size, as PNG bytes."""
    from skimage import data

    image = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def server(command: list[str], ready_url: str, env: dict[str, str] | None = None) -> Iterator[None]:
    log = tempfile.TemporaryFile()
    # a session of its own, so that the whole process group (LitServe forks workers) can be stopped
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{command[2]} exited early:\n{log.read().decode()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"{ready_url} never became ready")
        yield
    finally:
        stop_group(proc, timeout_s=30)
        log.close()


# The service as it ships (its batch bounds are the defaults), with a queue deep enough for every client.
VQSERVE_BENCH_ENV = {"VQSERVE_MAX_WAIT_MS": "5", "VQSERVE_MAX_QUEUE": "1024"}


def vqserve(
    checkpoint: Path, port: int, decoder_dtype: str = "auto", env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[None]:
    """`python -m service` on 127.0.0.1:`port` with the benchmark's queue settings, then `env` (settings to try)."""
    env = {**VQSERVE_BENCH_ENV, "VQSERVE_DECODER_DTYPE": decoder_dtype, **(env or {})}
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model-path", str(checkpoint)]
    return server(command, f"http://127.0.0.1:{port}/readyz", env)


def litserve(checkpoint: Path, port: int) -> contextlib.AbstractContextManager[None]:
    command = [sys.executable, "-m", "bench.peers.litserve_vq", "--checkpoint", str(checkpoint), "--port", str(port)]
    return server(command, f"http://127.0.0.1:{port}/health")


def load(url: str, style: str, image: Path, concurrency: int, seconds: float, warmup: float = 3.0) -> dict:
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--style", style, "--image", str(image)]
    command += ["--concurrency", str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=seconds + 300)
    return json.loads(out.stdout.strip().splitlines()[-1])


class BareModels:
    """diffusers' and our model in this process at one image size, for the no-HTTP, no-codec references."""

    def __init__(self, checkpoint: Path, png: bytes) -> None:
        from diffusers import VQModel as DiffusersVQModel

        from model import VQModel
        from model.pixels import from_uint8

        # the photo as the service hands it to the model: 8-bit RGB through model.pixels.from_uint8
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8))
        self.one = from_uint8(pixels.permute(2, 0, 1).contiguous())[None]
        self.eight = self.one.repeat(8, 1, 1, 1)
        self.theirs = DiffusersVQModel.from_pretrained(checkpoint).eval()
        self.ours = VQModel.from_pretrained(checkpoint).optimize_for_inference()
        self.measure()  # warm-up, discarded

    @torch.inference_mode()
    def measure(self, repeats: int = 3) -> dict:
        """One round: medians over `repeats` of diffusers at batch 8 (images/s) and ours at batch 1 (ms)."""
        theirs, ours = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            self.theirs(self.eight)
            theirs.append(time.perf_counter() - start)
            start = time.perf_counter()
            self.ours.decode_indices(self.ours.quantize(self.ours.encode(self.one))[1])
            ours.append(time.perf_counter() - start)
        return {
            "diffusers_batch8_images_per_s": 8 / statistics.median(theirs),
            "ours_batch1_compute_ms": statistics.median(ours) * 1e3,
        }


def merge(runs: list[dict]) -> dict:
    """Several measured windows of one setup as one: total throughput, median of the window percentiles."""
    ok = sum(r["ok"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    status: dict[str, int] = {}
    for r in runs:
        for code, n in r["status"].items():
            status[code] = status.get(code, 0) + n
    return {
        "style": runs[0]["style"],
        "concurrency": runs[0]["concurrency"],
        "windows": len(runs),
        "seconds": seconds,
        "ok": ok,
        "throughput_rps": ok / seconds,
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "status": status,
    }


def spread(values: list[float]) -> dict:
    """The median of per-round ratios and their range: one noisy window moves the range, not the median."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "rounds": values}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite), "rounds": values}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def headline(
    checkpoint: Path,
    seconds: float,
    rounds: int,
    work: Path,
    sizes: list[int],
    warmup: float = 3.0,
    decoder_dtype: str | None = None,
) -> dict:
    """Rounds alternate the setups (vqserve, then LitServe, then the bare models: ABC ABC ...) at every size, so
    drift hits all of them; one server runs at a time (LitServe's idle worker polls). Each round gives its own
    ratios; the result is their median and range per size. `decoder_dtype`: also vqserve with
    VQSERVE_DECODER_DTYPE set to it, in every round, against vqserve's default and LitServe."""
    images = {size: work / f"photo{size}.png" for size in sizes}
    for size, path in images.items():
        path.write_bytes(photo_png(size))
    ours_port, peer_port = free_port(), free_port()
    ours_url, peer_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{peer_port}"
    per_size: dict[int, dict[str, list[dict]]] = {
        size: {"vqserve_c16": [], "litserve_c16": [], "vqserve_c1": [], "bare": [], "decoder_c16": []} for size in sizes
    }
    bare_models = {size: BareModels(checkpoint, path.read_bytes()) for size, path in images.items()}
    for _ in range(rounds):
        with vqserve(checkpoint, ours_port):
            for size in sizes:
                per_size[size]["vqserve_c16"].append(load(ours_url, "vqserve", images[size], 16, seconds, warmup))
                per_size[size]["vqserve_c1"].append(load(ours_url, "vqserve", images[size], 1, seconds, warmup))
        if decoder_dtype is not None:
            with vqserve(checkpoint, ours_port, decoder_dtype):
                for size in sizes:
                    per_size[size]["decoder_c16"].append(load(ours_url, "vqserve", images[size], 16, seconds, warmup))
        with litserve(checkpoint, peer_port):
            for size in sizes:
                per_size[size]["litserve_c16"].append(load(peer_url, "litserve", images[size], 16, seconds, warmup))
        for size in sizes:
            per_size[size]["bare"].append(bare_models[size].measure())
    result: dict = {"rounds": rounds, "seconds_per_window": seconds, "sizes": {}}
    for size in sizes:
        runs = per_size[size]
        ours16, peer16, ours1, bare = runs["vqserve_c16"], runs["litserve_c16"], runs["vqserve_c1"], runs["bare"]
        result["sizes"][str(size)] = {
            "throughput_ratio_vs_litserve": spread(
                [ratio(a["throughput_rps"], b["throughput_rps"]) for a, b in zip(ours16, peer16, strict=True)]
            ),
            "p99_ratio_vs_litserve": spread(
                [ratio(a["p99_ms"], b["p99_ms"]) for a, b in zip(ours16, peer16, strict=True)]
            ),
            "throughput_ratio_vs_bare_diffusers_b8": spread(
                [
                    ratio(a["throughput_rps"], b["diffusers_batch8_images_per_s"])
                    for a, b in zip(ours16, bare, strict=True)
                ]
            ),
            "c1_median_over_bare_compute": spread(
                [ratio(a["p50_ms"], b["ours_batch1_compute_ms"]) for a, b in zip(ours1, bare, strict=True)]
            ),
            "vqserve_c16": merge(ours16),
            "litserve_c16": merge(peer16),
            "vqserve_c1": merge(ours1),
            "bare": bare,
        }
        if decoder_dtype is not None:
            fast = runs["decoder_c16"]
            result["sizes"][str(size)] |= {
                "decoder_dtype": decoder_dtype,
                "decoder_throughput_ratio_vs_default": spread(
                    [ratio(a["throughput_rps"], b["throughput_rps"]) for a, b in zip(fast, ours16, strict=True)]
                ),
                "decoder_throughput_ratio_vs_litserve": spread(
                    [ratio(a["throughput_rps"], b["throughput_rps"]) for a, b in zip(fast, peer16, strict=True)]
                ),
                "decoder_p99_ratio_vs_litserve": spread(
                    [ratio(a["p99_ms"], b["p99_ms"]) for a, b in zip(fast, peer16, strict=True)]
                ),
                "vqserve_decoder_c16": merge(fast),
            }
    return result


def curves(checkpoint: Path, seconds: float, work: Path, concurrencies: list[int], sizes: list[int]) -> list[dict]:
    rows = []
    port = free_port()
    with vqserve(checkpoint, port):
        for size in sizes:
            image = work / f"photo{size}.png"
            image.write_bytes(photo_png(size))
            for c in concurrencies:
                result = load(f"http://127.0.0.1:{port}", "vqserve", image, c, seconds)
                rows.append({"size": size, **result})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(rows: list[dict], machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for size in sorted({r["size"] for r in rows}):
        sub = [r for r in rows if r["size"] == size]
        cs = [r["concurrency"] for r in sub]
        ax_t.plot(cs, [r["throughput_rps"] for r in sub], marker="o", label=f"{size}²")
        ax_l.plot(cs, [r["p50_ms"] for r in sub], marker="o", label=f"{size}² p50")
        ax_l.plot(cs, [r["p99_ms"] for r in sub], marker="x", linestyle="--", label=f"{size}² p99")
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=7)
    ax_t.set_ylabel("images / s")
    ax_l.set_ylabel("latency ms")
    ax_l.set_yscale("log")
    fig.suptitle(f"vqserve /reconstruct, PNG in/out — {machine}", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--seconds", type=float, default=10.0, help="one measured window")
    parser.add_argument("--rounds", type=int, default=3, help="alternating windows per setup")
    parser.add_argument("--curves", action="store_true", help="also the scaling curves (goal 4)")
    parser.add_argument("--curve-seconds", type=float, default=8.0)
    parser.add_argument("--concurrencies", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512], help="curve sizes")
    parser.add_argument("--headline-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument(
        "--decoder-dtype",
        choices=["bfloat16", "float16"],
        help="also vqserve with VQSERVE_DECODER_DTYPE set to this, in every round (issue 20's fast pixels)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke: 1 round of 2 s windows at the first headline size; writes nothing"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.headline_sizes, args.curves = 1, 2.0, args.headline_sizes[:1], False
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, object] = {"machine": machine, "date": time.strftime("%Y-%m-%d")}
        result["checkpoint"] = str(args.checkpoint)
        warmup = 0.5 if args.quick else 3.0
        load_before = os.getloadavg()[0]
        result |= headline(
            args.checkpoint, args.seconds, args.rounds, Path(tmp), args.headline_sizes, warmup, args.decoder_dtype
        )
        result |= {"quick": args.quick, "load_average_1m": [load_before, os.getloadavg()[0]]}
        if not args.quick:
            (RESULTS / "headline.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(json.dumps(result))  # the last line: one JSON object, for scripts
        if args.curves:
            rows = curves(args.checkpoint, args.curve_seconds, Path(tmp), args.concurrencies, args.sizes)
            (RESULTS / "scaling.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
            plot(rows, machine)


if __name__ == "__main__":
    main()
