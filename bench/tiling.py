"""Tiling (issue 15): the model's tiled reconstructions against untiled ones, and the service on large inputs.

A. Quality, in process, same weights: real photos (scikit-image's astronaut, coffee, chelsea, resized with Pillow
   bicubic to N x N) reconstructed through the codebook (encode, nearest code, decode, rounded to 8 bits as the
   service returns them) untiled and with `VQModel.enable_tiling(tile, overlap, preview_side)`. For each: PSNR of
   tiled and untiled against the input, PSNR of tiled against untiled, and the largest pixel error (tiled against
   untiled, 0..255) on the seams (pixels within `overlap` of an interior tile edge) and elsewhere. Naive tiling
   (the same tiles and blending, each tile normalised by its own statistics) at one setting, for comparison.
   Untiled runs only where its extrapolated memory fits (`--untiled-sides`, and the peak of the smaller size).
B. The service: `python -m service` on 127.0.0.1 with default settings (VQSERVE_REQUEST_TIMEOUT_S=600); the
   server's RSS (VmRSS of /proc/PID/status) sampled every 50 ms in a thread.
   1. a flat 4096 x 4096 PNG to /reconstruct   2. three 2048 x 2048 photos at once   3. a 1024 x 1024 index grid to
   /decode (int32, tensor/binary)   5. 256 x 256 requests back to back while a 4096 x 4096 one runs
   6. RSS after warm-up against RSS once the large requests are done
   4. (a second server, VQSERVE_REQUEST_TIMEOUT_S=3) a 4096 x 4096 request (504) and a 256 x 256 one right after.

    python -m bench.tiling [--checkpoint DIR] [--part all|quality|service] [--quick]

`--quick` is a CPU smoke pass on a tiny random checkpoint with small sizes (tests/bench/test_bench_scripts.py).
Prints readable tables, then one JSON line; the full run also writes bench/results/tiling.json (with RSS traces).
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m service` runs (bench/README.md)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.loadgen import stop_group  # noqa: E402
from model import VQModel  # noqa: E402
from model.pixels import from_uint8, psnr, to_uint8  # noqa: E402
from model.tiling import Blender, TileConfig, preview_cells, preview_image, tile_grid  # noqa: E402
from service.memory import release_free_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEFAULT_CHECKPOINT = ROOT / "model" / "weights" / "default"
PHOTOS = ("astronaut", "coffee", "chelsea")
TINY = {  # the smoke pass's random model (as tests/bench/test_bench_scripts.py)
    "block_out_channels": [32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "num_vq_embeddings": 64,
}


@dataclass(frozen=True)
class Sizes:
    """Every size the run uses: the full run's are the issue's; `--quick` scales them down for a tiny model."""

    quality_sides: tuple[int, ...] = (2048, 4096)
    tile: int = 512
    overlaps: tuple[int, ...] = (32, 64, 128)
    previews: tuple[int, ...] = (512, 1024)
    default_overlap: int = 64
    # service
    large: int = 4096
    medium: int = 2048
    grid: int = 1024  # index grid side for /decode
    small: int = 256
    stream: int = 20  # small requests during the large one
    short_timeout_s: float = 3.0
    server_env: dict[str, str] = field(default_factory=dict)

    @property
    def default_preview(self) -> int:
        return 2 * self.tile  # service/tiles.py's choice


QUICK = Sizes(
    quality_sides=(96, 128),
    tile=64,
    overlaps=(8, 16),
    previews=(64, 128),
    default_overlap=16,
    large=256,
    medium=128,
    grid=128,
    small=32,
    stream=4,
    short_timeout_s=0.5,
    server_env={"VQSERVE_TILE_SIZE": "64", "VQSERVE_TILE_OVERLAP": "16"},
)


# inputs
def photo(name: str, side: int) -> np.ndarray:
    """A scikit-image photo resized (Pillow bicubic) to side x side, (H, W, 3) uint8."""
    from skimage import data

    return np.array(Image.fromarray(getattr(data, name)()).resize((side, side), Image.Resampling.BICUBIC))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# memory
def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class RssSampler:
    """VmRSS of one process every `interval` seconds, in a thread: `peak(t0, t1)`, `settled(t)`, the trace."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            self._stop.wait(self.interval)

    def peak(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)

    def now(self, window: float = 1.0) -> int:
        """The median of the last `window` seconds: the settled value."""
        time.sleep(self.interval * 2)
        end = time.monotonic()
        values = [rss for t, rss in self.samples if t >= end - window]
        return int(statistics.median(values)) if values else 0

    def trace(self, start: float, step: float = 0.25) -> list[tuple[float, int]]:
        """Every `step` seconds' maximum, relative to `start`, in MB: small enough to keep in results/."""
        out: dict[int, int] = {}
        for t, rss in self.samples:
            if t >= start:
                key = int((t - start) / step)
                out[key] = max(out.get(key, 0), rss)
        return [(round(k * step, 2), round(v / 1e6)) for k, v in sorted(out.items())]


class PeakRss:
    """The peak RSS of this process above its level on entry, while inside (quality runs)."""

    def __enter__(self) -> PeakRss:
        release_free_memory()  # what earlier runs freed goes back first, so the base is the idle footprint
        self.base = rss_bytes(os.getpid())
        self._sampler = RssSampler(os.getpid())
        self._sampler.__enter__()
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sampler.__exit__()
        self.bytes = max(0, self._sampler.peak(self.start, time.monotonic()) - self.base)


def mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# A. quality
def reconstruct(model: VQModel, image: torch.Tensor, config: TileConfig | None) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8 through the codebook, tiled with `config` unless None."""
    model.tiling = config
    try:
        with torch.inference_mode():
            _, indices = model.quantize(model.encode(image))
            return to_uint8(model.decode_indices(indices))[0].permute(1, 2, 0).contiguous()
    finally:
        model.tiling = None


def reconstruct_naive(model: VQModel, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """The same tiles and blending as `enable_tiling`, each tile normalised by its own statistics (as diffusers'
    AutoencoderKL tiles): encode tiles, blend latents, quantize once, decode tiles, blend pixels."""
    f = model.downsample_factor
    h, w = image.shape[-2] // f, image.shape[-1] // f
    with torch.inference_mode():
        latents = Blender((1, model.config.embed_dim, h, w))
        for y, x in tile_grid(h, w, tile // f, overlap // f):
            crop = image[:, :, y[0] * f : y[1] * f, x[0] * f : x[1] * f]
            latents.add(model.quant_conv(model.encoder(crop)), y, x)
        _, indices = model.quantize(latents.result())
        quantized = model.quantize.lookup(indices).to(model.dtype)
        pixels = Blender((1, model.config.out_channels, h * f, w * f))
        for y, x in tile_grid(h, w, tile // f, overlap // f, scale=f):
            pixels.add(model.decode_quantized(quantized[:, :, y[0] // f : y[1] // f, x[0] // f : x[1] // f]), y, x)
        return to_uint8(pixels.result())[0].permute(1, 2, 0).contiguous()


def seam_mask(side: int, tile: int, overlap: int, factor: int) -> torch.Tensor:
    """(side, side) bool: pixels within `overlap` of an interior tile edge (either axis), the tiler's geometry."""
    rows = [y for y, _ in tile_grid(side // factor, 1, tile // factor, overlap // factor, scale=factor)]
    edges = [start for start, _, _ in rows[1:]] + [end for _, end, _ in rows[:-1]]
    band = torch.zeros(side, dtype=torch.bool)
    for edge in edges:
        band[max(0, edge - overlap) : edge + overlap] = True
    return band[:, None] | band[None, :]


def region_errors(test: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Largest and mean absolute error (0..255) on the seams (`mask`) and elsewhere."""
    error = (test.to(torch.int16) - reference.to(torch.int16)).abs().amax(dim=-1)  # (H, W), worst channel
    seams, rest = error[mask], error[~mask]
    return {
        "seam_max": int(seams.max()) if seams.numel() else 0,
        "rest_max": int(rest.max()) if rest.numel() else 0,
        "seam_mean": round(float(seams.float().mean()), 3) if seams.numel() else 0.0,
        "rest_mean": round(float(rest.float().mean()), 3) if rest.numel() else 0.0,
    }


def db(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 2)


def quality(
    checkpoint: Path,
    sizes: Sizes,
    untiled_sides: set[int],
    naive_sides: set[int],
    sweep_sides: set[int],
    photos: tuple[str, ...] = PHOTOS,
) -> dict:
    model = VQModel.from_pretrained(checkpoint).optimize_for_inference()
    f = model.downsample_factor
    settings = [(sizes.tile, o, sizes.default_preview) for o in sizes.overlaps]
    settings += [(sizes.tile, sizes.default_overlap, p) for p in sizes.previews if p != sizes.default_preview]
    rows: list[dict] = []
    untiled_peak: dict[int, int] = {}  # side -> bytes above the idle process, measured
    skipped: list[str] = []
    for side in sizes.quality_sides:
        for name in photos:
            pixels = photo(name, side)
            original = torch.from_numpy(pixels)
            image = from_uint8(original).permute(2, 0, 1)[None].contiguous()
            untiled = None
            fits, why = untiled_fits(side, untiled_sides, untiled_peak)
            if fits:
                started = time.perf_counter()
                with PeakRss() as peak:
                    untiled = reconstruct(model, image, None)
                untiled_peak[side] = max(untiled_peak.get(side, 0), peak.bytes)
                rows.append(
                    {
                        "photo": name,
                        "side": side,
                        "mode": "untiled",
                        "psnr": db(psnr(original, untiled)),
                        "seconds": round(time.perf_counter() - started, 1),
                        "peak_mb": round(peak.bytes / 1e6),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            elif why not in skipped:
                skipped.append(why)
            default = (sizes.tile, sizes.default_overlap, sizes.default_preview)
            chosen = settings if side in sweep_sides else [default]
            runs = [("tiled", tile, overlap, preview) for tile, overlap, preview in chosen]
            if side in naive_sides:
                runs.append(("naive", sizes.tile, sizes.default_overlap, 0))
            for mode, tile, overlap, preview in runs:
                started = time.perf_counter()
                with PeakRss() as peak:
                    if mode == "naive":
                        output = reconstruct_naive(model, image, tile, overlap)
                    else:
                        output = reconstruct(model, image, TileConfig(tile, overlap, preview))
                row: dict = {
                    "photo": name,
                    "side": side,
                    "mode": mode,
                    "tile": tile,
                    "overlap": overlap,
                    "preview_side": preview or None,
                    "psnr": db(psnr(original, output)),
                    "seconds": round(time.perf_counter() - started, 1),
                    "peak_mb": round(peak.bytes / 1e6),
                }
                mask = seam_mask(side, tile, overlap, f)
                if untiled is not None:
                    row["psnr_untiled"] = rows_untiled_psnr(rows, name, side)
                    row["delta_db"] = round(row["psnr"] - row["psnr_untiled"], 3)
                    row["psnr_vs_untiled"] = db(psnr(untiled, output))
                    row["vs_untiled"] = region_errors(output, untiled, mask)
                row["vs_input"] = region_errors(output, original, mask)
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "untiled_skipped": skipped, "settings": settings}


def rows_untiled_psnr(rows: list[dict], name: str, side: int) -> float:
    return next(r["psnr"] for r in rows if r["mode"] == "untiled" and r["photo"] == name and r["side"] == side)


def untiled_fits(side: int, allowed: set[int], measured: dict[int, int]) -> tuple[bool, str]:
    """Whether to run the untiled model at `side`: asked for, and its peak (extrapolated by area from the largest
    measured smaller side) leaves 4 GiB of the memory available now (the machine is shared)."""
    if side not in allowed:
        return False, f"untiled {side}: not asked for (--untiled-sides)"
    smaller = [s for s in measured if s < side]
    if not smaller:
        return True, ""
    base = max(smaller)
    estimate = measured[base] * (side / base) ** 2
    available = mem_available_bytes()
    if estimate > available - (4 << 30):
        return False, (
            f"untiled {side}: estimated peak {estimate / 1e9:.1f} GB (from {measured[base] / 1e9:.2f} GB at {base}),"
            f" {available / 1e9:.1f} GB available"
        )
    return True, ""


# B. the service
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service(checkpoint: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """`python -m service` on a free port: yields (base URL, pid) once /readyz answers 200."""
    port = free_port()
    log = tempfile.TemporaryFile()
    command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model-path", str(checkpoint)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the server did not become ready:\n{log.read().decode()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url, proc.pid
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server died:\n{log.read().decode()[-3000:]}")
    finally:
        stop_group(proc, timeout_s=60)
        log.close()


@dataclass
class Reply:
    status: int
    seconds: float
    size: int
    tiles: int
    started: float
    ended: float


def post(url: str, body: bytes, content_type: str, accept: str = "image/png", timeout: float = 1800) -> Reply:
    started = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        response = client.post(url, content=body, headers={"content-type": content_type, "accept": accept})
    ended = time.monotonic()
    tiles = int(response.headers.get("x-tiles", 0))
    return Reply(response.status_code, round(ended - started, 2), len(response.content), tiles, started, ended)


def in_thread(fn: Callable[[], Reply]) -> tuple[threading.Thread, list[Reply]]:
    out: list[Reply] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 2)


def stream_during_large(url: str, large: bytes, small: bytes, count: int, delay_s: float, wait: bool = True) -> dict:
    """`count` sequential small reconstructs starting `delay_s` into one large reconstruct (by then it is decoded
    and in its tiles); `wait`: until the large one answers too (else it is left running)."""
    thread, big_reply = in_thread(lambda: post(f"{url}/reconstruct", large, "image/png"))
    time.sleep(delay_s)
    replies = [post(f"{url}/reconstruct", small, "image/png") for _ in range(count)]
    latencies = [r.seconds for r in replies]
    out = {
        "statuses": sorted({r.status for r in replies}),
        "count": len(replies),
        "median_s": round(statistics.median(latencies), 2),
        "p90_s": percentile(latencies, 0.9),
        "max_s": round(max(latencies), 2),
        "latencies_s": latencies,
        "large_running": thread.is_alive(),
    }
    if wait:
        thread.join()
        (big,) = big_reply
        out |= {
            "large_status": big.status,
            "large_s": big.seconds,
            "finished_before_large": sum(r.ended <= big.ended for r in replies),
        }
    return out


def deadline_phase(checkpoint: Path, sizes: Sizes, large: bytes, small: bytes, alone: int = 1) -> dict:
    """B.4 on a server with a `sizes.short_timeout_s` deadline: `alone` small reconstructs (the first warms up),
    the large one (504 expected), then how long the next small one takes."""
    env = {"VQSERVE_REQUEST_TIMEOUT_S": str(sizes.short_timeout_s), **sizes.server_env}
    with service(checkpoint, env) as (url, pid), RssSampler(pid):
        lone = [post(f"{url}/reconstruct", small, "image/png") for _ in range(alone)]
        big = post(f"{url}/reconstruct", large, "image/png")
        after = post(f"{url}/reconstruct", small, "image/png")
    return {
        "timeout_s": sizes.short_timeout_s,
        "small_alone_s": [r.seconds for r in lone],
        "large_status": big.status,
        "large_s": big.seconds,
        "late_s": round(big.seconds - sizes.short_timeout_s, 2),
        "small_status": after.status,
        "small_s": after.seconds,
    }


def service_run(checkpoint: Path, sizes: Sizes, settle_s: float, budget_mb: int = 0, timeout_s: float = 600) -> dict:
    """B.1-3, 5 and 6 on one server with default settings, then B.4 on another with a 3 s deadline."""
    flat = png(np.full((sizes.large, sizes.large, 3), (118, 141, 163), dtype=np.uint8))
    mediums = [png(photo(name, sizes.medium)) for name in PHOTOS]
    small = png(photo("astronaut", sizes.small))
    codebook = VQModel.from_pretrained(checkpoint).config.num_vq_embeddings
    grid = torch.randint(0, codebook, (sizes.grid, sizes.grid), generator=torch.Generator().manual_seed(0))
    grid_body = grid.to(torch.int32).numpy().astype("<i4").tobytes()
    decode_query = f"/decode?shape={sizes.grid}&shape={sizes.grid}&dtype=int32"
    out: dict = {"inputs": {"flat_png_bytes": len(flat), "medium_png_bytes": [len(m) for m in mediums]}}

    env = {"VQSERVE_REQUEST_TIMEOUT_S": str(timeout_s), **sizes.server_env}
    if budget_mb:
        env["VQSERVE_MEMORY_BUDGET_MB"] = str(budget_mb)
    out["memory_budget_mb"] = budget_mb or "default"
    out["request_timeout_s"] = timeout_s
    with service(checkpoint, env) as (url, pid), RssSampler(pid) as rss:
        t0 = time.monotonic()
        out["rss_ready_mb"] = round(rss.now() / 1e6)
        alone = [post(f"{url}/reconstruct", small, "image/png") for _ in range(5)]  # warm-up and a baseline
        time.sleep(settle_s)
        warm = rss.now()
        out["small_alone"] = {
            "statuses": sorted({r.status for r in alone}),
            "median_s": round(statistics.median(r.seconds for r in alone[1:]), 2),
        }
        out["rss_warm_mb"] = round(warm / 1e6)
        print(json.dumps({"service": "warm", **out}), flush=True)

        def phase(name: str, run: Callable[[], dict]) -> None:
            start = time.monotonic()
            result = run()
            end = time.monotonic()
            time.sleep(settle_s)
            result.update(
                peak_rss_mb=round(rss.peak(start, end + 1) / 1e6),
                settled_rss_mb=round(rss.now() / 1e6),
                seconds=round(end - start, 1),
                t_start=round(start - t0, 1),
            )
            out[name] = result
            print(json.dumps({"service": name, **result}), flush=True)

        def flat_reconstruct() -> dict:
            reply = post(f"{url}/reconstruct", flat, "image/png")
            return {"status": reply.status, "reply_bytes": reply.size, "x_tiles": reply.tiles}

        def three_at_once() -> dict:
            threads = [in_thread(lambda body=body: post(f"{url}/reconstruct", body, "image/png")) for body in mediums]
            for thread, _ in threads:
                thread.join()
            replies = [r for _, result in threads for r in result]
            return {"statuses": [r.status for r in replies], "each_s": [r.seconds for r in replies]}

        def decode_grid() -> dict:
            reply = post(f"{url}{decode_query}", grid_body, "tensor/binary")
            return {"status": reply.status, "reply_bytes": reply.size, "x_tiles": reply.tiles}

        def stream() -> dict:
            return stream_during_large(url, flat, small, sizes.stream, 2.0 if sizes is not QUICK else 0.1)

        phase("flat_large", flat_reconstruct)
        phase("three_medium", three_at_once)
        phase("decode_grid", decode_grid)
        phase("stream", stream)
        final = rss.now()
        out["rss_final_mb"] = round(final / 1e6)
        out["rss_growth_mb"] = round((final - warm) / 1e6)
        out["rss_trace"] = rss.trace(t0)

    out["deadline"] = deadline_phase(checkpoint, sizes, flat, small)
    print(json.dumps({"service": "deadline", **out["deadline"]}), flush=True)
    return out


# where the memory of one large request goes (in process, the service's own engine ops and codecs)
def stages(checkpoint: Path, sizes: Sizes, budget_mb: int, preview_side: int | None) -> dict:
    """One flat `sizes.large` reconstruct, stage by stage as service/tiles.py runs it, on the service's Engine:
    the RSS of this process on entry to each stage and its peak inside (one run of tiles stands for all runs:
    each is the same size). `budget_mb` 0 is the service's default; `preview_side` None is 2 x tile."""
    from service import codecs
    from service.engine import Engine
    from service.memory import default_budget_bytes
    from service.ops import Op, Tile
    from service.settings import ModelSpec, Settings
    from service.tiles import _uint8

    settings = Settings(**sizes_settings(sizes))
    engine = Engine(ModelSpec("default", checkpoint, None), settings)
    facts = engine.load()
    f = facts.config.downsample_factor
    budget = budget_mb << 20 if budget_mb else default_budget_bytes()
    config = TileConfig(settings.tile_size, settings.tile_overlap, preview_side or 2 * settings.tile_size)
    tile, overlap = config.latent(f)
    data = png(np.full((sizes.large, sizes.large, 3), (118, 141, 163), dtype=np.uint8))
    out: list[dict] = []
    held: dict = {}

    def stage(name: str, run: Callable[[], object]) -> None:
        release_free_memory()
        entry = rss_bytes(os.getpid())
        started = time.perf_counter()
        with PeakRss() as peak:
            held[name] = run()
        seconds = round(time.perf_counter() - started, 2)
        out.append({"stage": name, "entry_mb": round(entry / 1e6), "peak_mb": round((peak.base + peak.bytes) / 1e6),
                    "above_entry_mb": round(peak.bytes / 1e6), "seconds": seconds})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)

    def per_run(op: Op, shape: tuple[int, ...]) -> int:
        return max(1, min(settings.max_batch_size, budget // max(engine.cost(op, shape).bytes, 1)))

    def decode_png() -> tuple[np.ndarray, torch.Tensor]:
        arr = codecs.read_image(data, channels=3, max_pixels=settings.max_pixels)
        return arr, codecs.to_model_input(arr, f)

    stage("PNG decode + model input", decode_png)
    arr, image = held.pop("PNG decode + model input")
    live: dict = {}  # what the request holds between stages, dropped when tiles.py drops it

    def blend_run(op: Op, windows: list, sources: list, stats: object, blender: Blender) -> None:
        outputs = engine.run(op, [Tile(c, stats) for c in sources])  # type: ignore[arg-type]
        for (y, x), o in zip(windows, outputs, strict=True):
            blender.add(o[None], y, x)

    def rest_of_weights(blender: Blender, windows: list) -> None:
        for y, x in windows:  # the runs not computed here: their weights, so that the blend divides by no zero
            blender.weight[:, :, y[0] : y[1], x[0] : x[1]] += 1

    stage("encode preview (stats op)", lambda: engine.run(Op.ENCODE_STATS, [preview_image(image, config, f)])[0])
    live["stats"] = held.pop("encode preview (stats op)")
    grid = tile_grid(image.shape[-2] // f, image.shape[-1] // f, tile, overlap)
    sources = [image[:, y[0] * f : y[1] * f, x[0] * f : x[1] * f] for y, x in grid]
    n = per_run(Op.ENCODE_TILE, tuple(sources[0].shape))
    live["latents"] = Blender((1, facts.config.embed_dim, image.shape[-2] // f, image.shape[-1] // f))
    stage(
        f"encode tiles: one run of {n} of {len(grid)}",
        lambda: blend_run(Op.ENCODE_TILE, grid[:n], sources[:n], live["stats"], live["latents"]),
    )
    rest_of_weights(live["latents"], grid[n:])
    stage("blend latents + quantize", lambda: engine.run(Op.QUANTIZE, [live["latents"].result()[0]])[0])
    indices = held.pop("blend latents + quantize").indices.long()
    live.clear()  # the encode blender and statistics go once the latents are quantized
    stage(
        "decode preview (stats op)",
        lambda: engine.run(Op.DECODE_STATS, [preview_cells(indices, config, f).contiguous()])[0],
    )
    live["stats"] = held.pop("decode preview (stats op)")
    grid = tile_grid(indices.shape[-2], indices.shape[-1], tile, overlap, scale=f)
    sources = [indices[y[0] // f : y[1] // f, x[0] // f : x[1] // f] for y, x in grid]
    n = per_run(Op.DECODE_TILE, tuple(sources[0].shape))
    live["pixels"] = Blender((1, facts.config.out_channels, indices.shape[-2] * f, indices.shape[-1] * f))
    stage(
        f"decode tiles: one run of {n} of {len(grid)} (and the pixel blender)",
        lambda: blend_run(Op.DECODE_TILE, grid[:n], sources[:n], live["stats"], live["pixels"]),
    )
    rest_of_weights(live["pixels"], grid[n:])
    stage("blend pixels + uint8", lambda: _uint8(live["pixels"].result()[0]))
    output = held.pop("blend pixels + uint8")
    live.clear()
    stage("PSNR against the input", lambda: psnr(arr, output))
    stage("PNG encode", lambda: codecs.write_image(output, "png", codecs.ImageCompression()))
    engine.close()
    return {"budget_bytes": budget, "preview_side": config.preview_side, "stages": out}


def sizes_settings(sizes: Sizes) -> dict:
    return {k.removeprefix("VQSERVE_").lower(): int(v) for k, v in sizes.server_env.items()}


# small requests during a large one: the memory budget's effect (alternating rounds, one server per setting)
def stream_compare(checkpoint: Path, sizes: Sizes, large: int, shares: list[int], rounds: int) -> dict:
    """For each budget share (the default budget is the memory limit / BUDGET_SHARE; here set through
    VQSERVE_MEMORY_BUDGET_MB), in alternating order: 256² requests back to back for as long as one flat
    `large`² reconstruct runs, and 5 alone before it (the load at that moment); tiles per run follow the budget."""
    from service.memory import memory_limit_bytes

    flat = png(np.full((large, large, 3), (118, 141, 163), dtype=np.uint8))
    small = png(photo("astronaut", sizes.small))
    runs: dict[int, list[dict]] = {share: [] for share in shares}
    for round_ in range(rounds):
        for share in shares if round_ % 2 == 0 else shares[::-1]:
            budget_mb = max(256, (memory_limit_bytes() // share) >> 20)
            env = {"VQSERVE_REQUEST_TIMEOUT_S": "3600", "VQSERVE_MEMORY_BUDGET_MB": str(budget_mb), **sizes.server_env}
            with service(checkpoint, env) as (url, pid), RssSampler(pid) as rss:
                alone = [post(f"{url}/reconstruct", small, "image/png").seconds for _ in range(6)][1:]
                start = time.monotonic()
                thread, big = in_thread(lambda: post(f"{url}/reconstruct", flat, "image/png"))
                latencies = []
                while thread.is_alive():
                    reply = post(f"{url}/reconstruct", small, "image/png")
                    if thread.is_alive() or reply.ended <= big[0].ended:
                        latencies.append(reply.seconds)
                thread.join()
                run = {
                    "round": round_,
                    "budget_mb": budget_mb,
                    "alone_median_s": round(statistics.median(alone), 2),
                    "median_s": round(statistics.median(latencies), 2),
                    "p90_s": percentile(latencies, 0.9),
                    "max_s": round(max(latencies), 2),
                    "count": len(latencies),
                    "large_status": big[0].status,
                    "large_s": big[0].seconds,
                    "peak_rss_mb": round(rss.peak(start, time.monotonic()) / 1e6),
                    "load_average": load_average(),
                }
            runs[share].append(run)
            print(json.dumps({"share": share, **run}), flush=True)
    summary = []
    for share in shares:
        pooled = runs[share]
        summary.append(
            {
                "share": share,
                "budget_mb": pooled[0]["budget_mb"],
                "median_s": round(statistics.median(r["median_s"] for r in pooled), 2),
                "p90_s": round(statistics.median(r["p90_s"] for r in pooled), 2),
                "alone_median_s": round(statistics.median(r["alone_median_s"] for r in pooled), 2),
                "large_s": round(statistics.median(r["large_s"] for r in pooled), 1),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in pooled),
            }
        )
    return {"large": large, "small": sizes.small, "rounds": rounds, "runs": runs, "summary": summary}


def print_stream(result: dict) -> None:
    print(f"\n## Small requests during a {result['large']}² reconstruct, by memory budget ({result['rounds']} "
          "alternating rounds; medians over rounds)\n")  # fmt: skip
    print(f"| BUDGET_SHARE | budget MiB | {result['small']}² median s | p90 s | alone s | large s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in result["summary"]:
        print(f"| {r['share']} | {r['budget_mb']} | {r['median_s']} | {r['p90_s']} | {r['alone_median_s']} |"
              f" {r['large_s']} | {r['peak_rss_mb']} |")  # fmt: skip


# report
def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def print_quality(result: dict) -> None:
    print("\n## A. Quality: tiled against untiled (PSNR against the input; errors 0..255, tiled vs untiled)\n")
    print("| photo | side | mode | overlap | preview | PSNR | untiled | delta dB | vs untiled | seam max / mean |"
          " elsewhere max / mean | s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if r["mode"] == "untiled":
            continue
        vs = r.get("vs_untiled")
        errors = (
            (f"{vs['seam_max']} / {vs['seam_mean']}", f"{vs['rest_max']} / {vs['rest_mean']}") if vs else ("-", "-")
        )
        print(
            f"| {r['photo']} | {r['side']} | {r['mode']} | {r['overlap']} | {r['preview_side'] or '-'} | {r['psnr']} |"
            f" {r.get('psnr_untiled', '-')} | {r.get('delta_db', '-')} | {r.get('psnr_vs_untiled', '-')} |"
            f" {errors[0]} | {errors[1]} | {r['seconds']} |"
        )
    for why in result["untiled_skipped"]:
        print(f"- {why}")


def print_service(result: dict, sizes: Sizes) -> None:
    print("\n## B. The service\n")
    flat, three, grid, stream, deadline = (
        result[k] for k in ("flat_large", "three_medium", "decode_grid", "stream", "deadline")
    )

    def memory(phase: dict) -> str:
        return f"peak {phase['peak_rss_mb']} MB, settled {phase['settled_rss_mb']} MB"

    rows = [
        (f"1. flat {sizes.large}² /reconstruct", f"{flat['status']}, {flat['reply_bytes']} B, x-tiles "
         f"{flat['x_tiles']}, {flat['seconds']} s", memory(flat)),
        (f"2. three {sizes.medium}² at once", f"{three['statuses']}, {three['each_s']} s",
         memory(three)),
        (f"3. {sizes.grid}² index grid /decode", f"{grid['status']}, {grid['reply_bytes']} B, x-tiles "
         f"{grid['x_tiles']}, {grid['seconds']} s", memory(grid)),
        (f"4. deadline {deadline['timeout_s']} s: {sizes.large}², then {sizes.small}²",
         f"{deadline['large_status']} after {deadline['large_s']} s; {deadline['small_status']} in "
         f"{deadline['small_s']} s", "-"),
        (f"5. {stream['count']} × {sizes.small}² during a {sizes.large}²",
         f"median {stream['median_s']} s, p90 {stream['p90_s']} s ({stream['finished_before_large']} finished "
         f"before the large one, {stream['large_status']} in {stream['large_s']} s; alone: "
         f"{result['small_alone']['median_s']} s)", f"peak {stream['peak_rss_mb']} MB"),
        ("6. RSS warm → after the large requests", f"{result['rss_warm_mb']} → {result['rss_final_mb']} MB",
         f"growth {result['rss_growth_mb']} MB"),
    ]  # fmt: skip
    print("| check | result | memory |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def goals(result: dict, sizes: Sizes) -> list[dict]:
    """The issue's goals against what was measured (the thresholds are for the full run's sizes)."""
    out: list[dict] = []

    def goal(name: str, measured: str, met: bool) -> None:
        out.append({"goal": name, "measured": measured, "met": bool(met)})

    svc = result.get("service")
    if svc:
        flat, three, grid, stream, late = (svc[k] for k in ("flat_large", "three_medium", "decode_grid", "stream",
                                                            "deadline"))  # fmt: skip
        goal(
            f"B1 flat {sizes.large}² /reconstruct: 200, peak RSS < 3 GB",
            f"{flat['status']}, peak {flat['peak_rss_mb']} MB",
            flat["status"] == 200 and flat["peak_rss_mb"] < 3000,
        )
        goal(
            f"B2 three {sizes.medium}² at once: all 200",
            f"{three['statuses']}, peak {three['peak_rss_mb']} MB",
            all(s == 200 for s in three["statuses"]),
        )
        goal(
            f"B3 {sizes.grid}² index grid /decode: 200",
            f"{grid['status']}, peak {grid['peak_rss_mb']} MB",
            grid["status"] == 200,
        )
        goal(
            f"B4 deadline {late['timeout_s']} s: 504 within a few (5) s of it, then a {sizes.small}² within 2 s",
            f"{late['large_status']} after {late['large_s']} s; {late['small_status']} in {late['small_s']} s",
            late["large_status"] == 504 and late["late_s"] <= 5 and late["small_status"] == 200 and late["small_s"] < 2,
        )
        goal(
            f"B5 {sizes.small}² during a {sizes.large}²: median < 2 s",
            f"median {stream['median_s']} s, p90 {stream['p90_s']} s",
            stream["median_s"] < 2,
        )
        goal(
            "B6 RSS after the large requests within 300 MB of warm",
            f"{svc['rss_warm_mb']} -> {svc['rss_final_mb']} MB ({svc['rss_growth_mb']:+} MB)",
            svc["rss_growth_mb"] <= 300,
        )
    rows = result.get("quality", {}).get("rows", [])
    side = sizes.quality_sides[0]
    default = [r for r in rows if r["mode"] == "tiled" and r["side"] == side and "delta_db" in r
               and r["overlap"] == sizes.default_overlap and r["preview_side"] == sizes.default_preview]  # fmt: skip
    for r in default:
        vs = r["psnr_vs_untiled"]
        goal(
            f"A {r['photo']} {side}²: tiled within 0.3 dB of untiled, tiled vs untiled > 35 dB",
            f"{r['delta_db']:+} dB, {vs if vs is not None else 'inf'} dB",
            abs(r["delta_db"]) <= 0.3 and (vs is None or vs > 35),
        )
    return out


def print_stages(result: dict) -> None:
    print(f"\n## Memory by stage (one large reconstruct in process; budget {result['budget_bytes'] >> 20} MiB, "
          f"preview side {result['preview_side']})\n")  # fmt: skip
    print("| stage | RSS on entry MB | peak MB | above entry MB | s |")
    print("|---|---|---|---|---|")
    for r in result["stages"]:
        print(f"| {r['stage']} | {r['entry_mb']} | {r['peak_mb']} | {r['above_entry_mb']} | {r['seconds']} |")


def print_goals(rows: list[dict]) -> None:
    if not rows:
        return
    print("\n## Goals\n")
    print("| goal | measured | |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['goal']} | {row['measured']} | {'met' if row['met'] else '**not met**'} |")


def tiny_checkpoint() -> Path:
    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="vqserve-tiny-"))
    VQModel(**TINY).save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the shipped default (or, with "
                        "--quick, a tiny random model)")  # fmt: skip
    parser.add_argument("--part", choices=["all", "quality", "service", "stages", "stream"], default="all")
    parser.add_argument("--shares", type=int, nargs="*", default=[16, 32], help="stream: budget shares to compare")
    parser.add_argument("--stream-large", type=int, default=2048, help="stream: the large image's side")
    parser.add_argument("--rounds", type=int, default=2, help="stream: alternating rounds")
    parser.add_argument("--request-timeout-s", type=float, default=600, help="the first server's deadline")
    parser.add_argument("--photos", nargs="*", default=list(PHOTOS), choices=PHOTOS)
    parser.add_argument("--sweep-sides", type=int, nargs="*", default=None, help="sides at which every setting "
                        "runs (default: all); elsewhere only the default (overlap 64, preview 2 x tile)")  # fmt: skip
    parser.add_argument("--budget-mb", type=int, default=0, help="VQSERVE_MEMORY_BUDGET_MB (0: the default)")
    parser.add_argument("--preview-side", type=int, default=None, help="stages only (default: 2 x tile)")
    parser.add_argument("--quick", action="store_true", help="a smoke pass: tiny sizes")
    parser.add_argument("--untiled-sides", type=int, nargs="*", default=None, help="sides to run untiled at "
                        "(default: all, where memory allows)")  # fmt: skip
    parser.add_argument("--naive-sides", type=int, nargs="*", default=None, help="default: the smallest side")
    parser.add_argument("--sides", type=int, nargs="*", default=None, help="quality sides (default 2048 4096)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/tiling.json (full runs)")
    args = parser.parse_args()

    sizes = QUICK if args.quick else Sizes()
    if args.sides:
        sizes = Sizes(**{**sizes.__dict__, "quality_sides": tuple(args.sides)})
    checkpoint = args.checkpoint or (tiny_checkpoint() if args.quick else DEFAULT_CHECKPOINT)
    untiled = set(sizes.quality_sides if args.untiled_sides is None else args.untiled_sides)
    naive = set(args.naive_sides if args.naive_sides is not None else sizes.quality_sides[:1])
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",  # noqa: E501
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "checkpoint": str(checkpoint),
        "quick": args.quick,
        "load_average_start": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(json.dumps(result), flush=True)
    if args.part in ("all", "service"):
        result["service"] = service_run(
            checkpoint, sizes, 0.5 if args.quick else 5.0, args.budget_mb, args.request_timeout_s
        )
        result["load_average_after_service"] = load_average()
    if args.part == "stream":
        large = min(args.stream_large, sizes.large)
        result["stream"] = stream_compare(checkpoint, sizes, large, args.shares, args.rounds)
    if args.part == "stages":
        result["stages"] = stages(checkpoint, sizes, args.budget_mb, args.preview_side)
    if args.part in ("all", "quality"):
        sweep = set(sizes.quality_sides if args.sweep_sides is None else args.sweep_sides)
        result["quality"] = quality(checkpoint, sizes, untiled, naive, sweep, tuple(args.photos))
    result["load_average_end"] = load_average()
    if "service" in result:
        print_service(result["service"], sizes)
    if "quality" in result:
        print_quality(result["quality"])
    if "stages" in result:
        print_stages(result["stages"])
    if "stream" in result:
        print_stream(result["stream"])
    result["goals"] = goals(result, sizes)
    print_goals(result["goals"])
    if not args.quick or args.out:
        path = args.out or RESULTS / "tiling.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k != "service"}
    if "service" in result:
        summary["service"] = {k: v for k, v in result["service"].items() if k != "rss_trace"}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
