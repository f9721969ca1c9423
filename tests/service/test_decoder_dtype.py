"""VQSERVE_DECODER_DTYPE: the decoder alone in half precision, codes unchanged, on every route; bfloat16 refused
on a CPU without native bf16 (the probe reads /proc/cpuinfo text, so tests hand it fake flags).

float16 runs on any CPU (slowly), so the service tests use it for the wiring; bfloat16's pixels are checked at
the model level in tests/model/test_parity.py, where no machine check stands in the way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.device import cpu_flags, cpu_has_native_bf16
from service.engine import ModelLoadError, resolve_decoder_dtype
from tests.support.constants import PNG, ROOT
from tests.support.images import decode_png, image_bytes, random_rgb
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(120)

CPU = torch.device("cpu")
X86_WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni\n"
X86_WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile amx_int8\n"
ARM_WITH_BF16 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\n"


def test_cpu_probe_reads_the_flags() -> None:
    assert "avx512_vnni" in cpu_flags(X86_WITHOUT_BF16)
    assert not cpu_has_native_bf16(X86_WITHOUT_BF16)
    assert not cpu_has_native_bf16("")
    for cpuinfo in (X86_WITH_BF16, X86_WITH_AMX, ARM_WITH_BF16):
        assert cpu_has_native_bf16(cpuinfo), cpuinfo


def test_auto_follows_the_model_dtype_and_explicit_dtypes_win() -> None:
    assert resolve_decoder_dtype("auto", torch.float32, CPU) == torch.float32
    assert resolve_decoder_dtype("auto", torch.bfloat16, CPU, lambda: False) == torch.bfloat16  # VQSERVE_DTYPE's
    assert resolve_decoder_dtype("float16", torch.float32, CPU) == torch.float16
    assert resolve_decoder_dtype("float32", torch.bfloat16, CPU) == torch.float32


def test_bfloat16_is_refused_on_a_cpu_without_native_bf16() -> None:
    with pytest.raises(ModelLoadError, match="VQSERVE_DECODER_DTYPE.*avx512_bf16"):
        resolve_decoder_dtype("bfloat16", torch.float32, CPU, lambda: cpu_has_native_bf16(X86_WITHOUT_BF16))
    accepted = resolve_decoder_dtype("bfloat16", torch.float32, CPU, lambda: cpu_has_native_bf16(X86_WITH_BF16))
    assert accepted == torch.bfloat16


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU has native bf16: the refusal cannot happen here")
def test_server_refuses_bfloat16_decoder_with_one_line(tiny_checkpoint: Path) -> None:
    for args in (["-m", "service", "--port", str(free_port())], ["-m", "service.cli", "info"]):
        result = subprocess.run(
            [sys.executable, *args, "--model-path", str(tiny_checkpoint), "--decoder-dtype", "bfloat16"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "VQSERVE_LOG_LEVEL": "info"},
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert "--decoder-dtype" in result.stderr
        assert "avx512_bf16" in result.stderr


def test_float16_decoder_keeps_codes_on_every_route(make_client: Callable[..., TestClient]) -> None:
    exact = make_client(tile_size=32, tile_overlap=8)
    half = make_client(tile_size=32, tile_overlap=8, decoder_dtype="float16")
    info = half.get("/models/default").json()
    assert (info["dtype"], info["decoder_dtype"]) == ("float32", "float16")
    assert exact.get("/models/default").json()["decoder_dtype"] == "float32"

    def close(a: np.ndarray, b: np.ndarray) -> None:
        diff = np.abs(a.astype(int) - b.astype(int))
        assert a.shape == b.shape
        assert diff.mean() < 1.0, diff.mean()  # levels of 255
        assert diff.max() <= 8, diff.max()

    for side in (24, 72):  # one tile, then tiled (72 > 32)
        data = image_bytes(random_rgb(side, side))
        codes = [c.post("/encode", content=data, headers=PNG).json()["indices"] for c in (exact, half)]
        assert codes[0] == codes[1]
        images = [decode_png(c.post("/reconstruct", content=data, headers=PNG).content) for c in (exact, half)]
        close(*images)
        decoded = [decode_png(c.post("/decode", json={"indices": codes[0]}).content) for c in (exact, half)]
        close(*decoded)
    latents = np.random.default_rng(1).standard_normal((1, 4, 30, 20)).astype(np.float32)
    remote = [
        c.post(
            "/remote/decode",
            content=latents.tobytes(),
            params={"shape": [1, 4, 30, 20], "dtype": "float32", "output_type": "pt"},
            headers={"content-type": "tensor/binary", "accept": "tensor/binary"},
        )
        for c in (exact, half)
    ]
    assert remote[1].headers["dtype"] == "float32"  # the reply keeps the model's dtype; only the compute is half
    floats = [np.frombuffer(r.content, "<f4") for r in remote]
    assert np.abs(floats[0] - floats[1]).mean() < 0.01
