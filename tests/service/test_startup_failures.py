"""Every startup failure a user can fix is one clear line and exit 2, no traceback: `python -m service` and the CLI
in-process, each run as a real subprocess (`service/__main__.py` maps the known error types in one place)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.constants import ROOT
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(120)


def run(*args: str, env: dict[str, str] | None = None, module: str = "service") -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VQSERVE_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env={**environment, "OMP_NUM_THREADS": "1", **(env or {})},
        check=False,
    )


def the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 and exactly one non-empty stderr line without a traceback; that line's message (a JSON log line's
    `msg`, or the plain `error: ...` line printed before logging exists)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = lines[0]
    if line.startswith("{"):
        entry = json.loads(line)
        assert entry["level"] == "error", entry
        return str(entry["msg"])
    assert line.startswith("error: "), line
    return line


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint this test may damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))


def test_a_bad_flag_names_the_flag_and_the_variable() -> None:
    line = the_one_line(run("--max-batch-size", "0"))
    assert line == "error: --max-batch-size / VQSERVE_MAX_BATCH_SIZE: must be >= 1 (got 0)"


def test_a_bad_variable_reads_the_same() -> None:
    line = the_one_line(run(env={"VQSERVE_MAX_BATCH_SIZE": "0", "VQSERVE_PORT": "http"}))
    assert "--max-batch-size / VQSERVE_MAX_BATCH_SIZE: must be >= 1 (got 0)" in line
    assert "--port / VQSERVE_PORT: must be a whole number (got http)" in line
    assert "pydantic" not in line


def test_an_unknown_flag_is_one_line() -> None:
    line = the_one_line(run("--max-batchsize", "4"))
    assert "unrecognized arguments: --max-batchsize" in line


def test_a_port_in_use_fails_before_any_model_loads(tiny_checkpoint: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run("--host", "127.0.0.1", "--port", str(port), "--model-path", str(tiny_checkpoint))
    line = the_one_line(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "--port / VQSERVE_PORT" in line
    assert "loaded" not in result.stderr  # the port was checked first


def test_a_missing_checkpoint_names_the_path_and_the_setting(tmp_path: Path) -> None:
    line = the_one_line(run("--model-path", str(tmp_path / "nothing"), "--port", str(free_port())))
    assert str(tmp_path / "nothing") in line
    assert "VQSERVE_MODEL_PATH" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_names_the_device_setting(tiny_checkpoint: Path) -> None:
    line = the_one_line(run("--device", "cuda", "--model-path", str(tiny_checkpoint), "--port", str(free_port())))
    assert "CUDA is not available" in line
    assert "--device / VQSERVE_DEVICE" in line


def test_a_device_that_is_not_there_names_the_device_setting(tiny_checkpoint: Path) -> None:
    """A CUDA index past the machine's devices (or any CUDA index without CUDA), checked before the model moves."""
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    line = the_one_line(run("--device", missing, "--model-path", str(tiny_checkpoint), "--port", str(free_port())))
    assert f"device '{missing}' asked for" in line
    assert "--device / VQSERVE_DEVICE" in line


def test_a_cut_short_safetensors_file_is_named(checkpoint: Path) -> None:
    weights = checkpoint / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = the_one_line(run("--model-path", str(checkpoint), "--port", str(free_port())))
    assert str(weights) in line
    assert "cut short" in line


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"num_vq_embeddings": 32}, "tensors have other shapes: quantize.embedding.weight is (64, 4)"),
        ({"layers_per_block": 2}, "missing keys"),
    ],
)
def test_weights_that_do_not_fit_the_config_are_named(checkpoint: Path, change: dict[str, int], expected: str) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, **change}))
    line = the_one_line(run("--model-path", str(checkpoint), "--port", str(free_port())))
    assert "checkpoint weights do not match its config" in line
    assert expected in line


def test_the_cli_in_process_reports_a_bad_model_path_as_one_line(tmp_path: Path) -> None:
    line = the_one_line(run("info", "--model-path", str(tmp_path / "nothing"), module="service.cli"))
    assert line.startswith("error: ")
    assert str(tmp_path / "nothing") in line


def test_the_cli_in_process_reports_a_damaged_checkpoint_as_one_line(checkpoint: Path) -> None:
    weights = checkpoint / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = the_one_line(run("info", "--model-path", str(checkpoint), module="service.cli"))
    assert "cut short" in line


def test_the_cli_in_process_reports_a_bad_image_as_the_server_does(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    result = run(
        "encode",
        str(tmp_path / "notes.png"),
        "-o",
        str(tmp_path / "codes.npz"),
        "--model-path",
        str(tiny_checkpoint),
        module="service.cli",
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-3000:]
    assert lines == [
        "error: 400 invalid_image: the file is not an image this service reads "
        "(PNG, JPEG, WebP, BMP, GIF, TIFF are accepted)"
    ], result.stderr[-3000:]
