"""What a real `python -m service` reports at startup: its threads (from the CPU quota unless set), warm-up at the
model's sample size with its duration, a `vqserve_queue_depth` series at 0 for every model x op, loopback binding
by default, and the device-dependent batch size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.__main__ import settings_from_args, uvicorn_config
from service.cpus import available_cpus
from service.ops import Op
from service.runtime import Services
from service.settings import (
    CPU_MAX_BATCH_PIXELS,
    CPU_MAX_BATCH_SIZE,
    GPU_MAX_BATCH_PIXELS,
    GPU_MAX_BATCH_SIZE,
    Settings,
)
from tests.support.checkpoints import TINY_RGB, build_checkpoint
from tests.support.servers import serving, start_checkpoint_server, stopping

pytestmark = pytest.mark.timeout(180)


def log_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def sample_48(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, trained (so its card says) at 48x48."""
    return build_checkpoint(tmp_path_factory.mktemp("sample48"), {**TINY_RGB, "sample_size": 48})


def test_default_threads_come_from_the_cpu_budget_and_are_reported(sample_48: Path, tmp_path: Path) -> None:
    budget = available_cpus()  # this test process runs in the same cgroup and affinity mask as the server
    with serving(["--model-path", str(sample_48)], tmp_path / "server.log") as server:
        assert server.metric("vqserve_cpu_threads", pool="torch") == budget.count
        assert server.metric("vqserve_cpu_threads", pool="codec") == min(budget.count, 4)
        lines = log_lines(server.log_text())
        (report,) = [line for line in lines if "torch_threads" in line]
        assert report["cpus"] == budget.count
        assert budget.source in str(report["msg"])
        # warm-up ran each op at the model's sample size, in one line per model with the seconds
        (warm,) = [line for line in lines if "warmup_s" in line]
        assert warm["warmup_side"] == 48
        assert isinstance(warm["warmup_s"], float)
        assert "48x48" in str(warm["msg"])
        # every model x op has its series before any request
        for op in Op:
            assert server.metric("vqserve_queue_depth", model="default", op=op.value) == 0


def test_explicit_threads_win_and_warm_up_stops_at_one_tile(sample_48: Path, tmp_path: Path) -> None:
    flags = ("--codec-threads", "3", "--tile-size", "32", "--tile-overlap", "8")
    with stopping(start_checkpoint_server(sample_48, tmp_path / "server.log", *flags)) as server:
        assert server.metric("vqserve_cpu_threads", pool="torch") == 1  # --torch-threads 1
        assert server.metric("vqserve_cpu_threads", pool="codec") == 3
        (warm,) = [line for line in log_lines(server.log_text()) if "warmup_s" in line]
        assert warm["warmup_side"] == 32  # capped at VQSERVE_TILE_SIZE


def test_bare_service_binds_loopback() -> None:
    settings = settings_from_args(["--model-path", "/nonexistent"])
    assert settings.host == "127.0.0.1"
    assert uvicorn_config(object(), settings).host == "127.0.0.1"


def test_max_batch_size_auto_depends_on_the_device(tiny_checkpoint: Path) -> None:
    assert Settings().max_batch_size == "auto"
    assert Services(Settings(model_path=tiny_checkpoint, device="cpu")).max_batch_size == CPU_MAX_BATCH_SIZE
    assert Settings(max_batch_size="auto").batch_size_on("cuda") == GPU_MAX_BATCH_SIZE
    assert Settings(max_batch_size="7").batch_size_on("cuda") == 7  # an explicit value wins on any device
    assert Services(Settings(model_path=tiny_checkpoint, max_batch_size=3)).batcher.policy.max_batch_size == 3
    with pytest.raises(ValueError, match=r"must be >= 1 \(got 0\)"):
        Settings(max_batch_size=0)
    with pytest.raises(ValueError, match="auto or a whole number"):
        Settings(max_batch_size="many")


def test_max_batch_pixels_auto_depends_on_the_device(tiny_checkpoint: Path) -> None:
    """On CPU a batch holds up to 16 images of 128² or 4 of 256² (bench/README.md, "Batches on CPU"); on GPU more."""
    assert Settings().max_batch_pixels == "auto"
    policy = Services(Settings(model_path=tiny_checkpoint, device="cpu")).batcher.policy
    assert policy.max_batch_pixels == CPU_MAX_BATCH_PIXELS == 4 * 256 * 256
    assert policy.max_batch_size * 128 * 128 == CPU_MAX_BATCH_PIXELS  # 16 images of 128², then the pixels bind
    assert Settings().batch_pixels_on("cuda") == GPU_MAX_BATCH_PIXELS
    assert Settings(max_batch_pixels="4096").batch_pixels_on("cpu") == 4096  # an explicit value wins
    with pytest.raises(ValueError, match=r"must be >= 1 \(got 0\)"):
        Settings(max_batch_pixels=0)
