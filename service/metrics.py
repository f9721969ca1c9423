"""Every Prometheus object of the service, in one place, prefixed `vqserve_`.

Durations use geometric buckets (1 ms .. ~65 s), batch sizes powers of two. `vqserve_queue_depth` is the gauge an
autoscaler reads. Objects live in the default registry, next to the process and platform collectors.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

DURATION_BUCKETS = tuple(0.001 * 2**i for i in range(17))  # 1 ms .. 65.5 s
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024

REQUESTS = Counter("vqserve_requests", "HTTP requests answered", ["endpoint", "status"])
REQUEST_DURATION = Histogram(
    "vqserve_request_duration_seconds", "Time from request to response", ["endpoint"], buckets=DURATION_BUCKETS
)
QUEUE_DURATION = Histogram(
    "vqserve_queue_duration_seconds", "Time an item waited before compute", ["model", "op"], buckets=DURATION_BUCKETS
)
COMPUTE_DURATION = Histogram(
    "vqserve_compute_duration_seconds", "Engine time per batch", ["model", "op"], buckets=DURATION_BUCKETS
)
CODEC_DURATION = Histogram(
    "vqserve_codec_duration_seconds", "Image and tensor (de)serialisation time", ["kind"], buckets=DURATION_BUCKETS
)
BATCH_SIZE = Histogram("vqserve_batch_size", "Items per computed batch", ["model", "op"], buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("vqserve_queue_depth", "Items admitted and waiting for compute", ["model", "op"])
INFLIGHT = Gauge("vqserve_inflight_requests", "Inference requests being handled")
REQUEST_FAILURES = Counter("vqserve_request_failures", "Requests that failed, by reason", ["reason"])
TILES = Counter("vqserve_tiles", "Tiles computed for inputs larger than VQSERVE_TILE_SIZE", ["model", "op"])
BATCH_PAUSES = Counter(
    "vqserve_batch_pauses",
    "Times a tile batch paused at a module boundary to let another request's batch compute",
    ["model", "op"],
)
PREFETCHED_BATCHES = Counter(
    "vqserve_prefetched_batches",
    "Batches whose inputs were copied to the device while the batch before them computed (VQSERVE_PREFETCH)",
    ["model", "op"],
)
SAMPLED_CODES = Counter(
    "vqserve_sampled_codes", "Codes drawn from a learned prior (one per sample per step)", ["model"]
)
MEMORY_BUDGET = Gauge("vqserve_memory_budget_bytes", "Activation memory one batch may use (VQSERVE_MEMORY_BUDGET_MB)")
CPU_THREADS = Gauge(
    "vqserve_cpu_threads",
    "Threads sized from the CPUs the process may use (VQSERVE_TORCH_THREADS, VQSERVE_CODEC_THREADS when set)",
    ["pool"],
)
MODEL_INFO = Gauge(
    "vqserve_model_info",
    "Served models (value 1)",
    ["model", "device", "dtype", "codebook_size", "downsample_factor"],
)


PER_MODEL_OP = (QUEUE_DEPTH, QUEUE_DURATION, COMPUTE_DURATION, BATCH_SIZE, TILES, BATCH_PAUSES, PREFETCHED_BATCHES)


def create_series(model: str, ops: Iterable[str]) -> None:
    """Every per model x op series, at 0, before the first request: an autoscaler reading `vqserve_queue_depth` of
    an idle or new pod sees 0 rather than nothing."""
    for op in ops:
        for metric in PER_MODEL_OP:
            metric.labels(model, op)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
