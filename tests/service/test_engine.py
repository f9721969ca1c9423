"""The engine: device and dtype choice, warm-up, and batches computed on its own thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from model import VQModel
from service.engine import Engine, ModelLoadError, resolve_device, resolve_dtype
from service.settings import Settings

pytestmark = pytest.mark.timeout(60)


def test_auto_dtype_is_float32_on_cpu_and_explicit_dtypes_win() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, force_upcast=False) == torch.float32
    assert resolve_dtype("bfloat16", cpu, force_upcast=False) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), force_upcast=True) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="VQSERVE_DEVICE"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_gpu_is_half_precision(tiny_checkpoint: Path) -> None:
    engine = Engine(Settings(model_path=tiny_checkpoint).model_specs()[0], Settings(model_path=tiny_checkpoint))
    engine.load()
    assert engine.device.startswith("cuda")
    assert engine.dtype in ("bfloat16", "float16")
    engine.close()


def test_engine_warms_up_and_computes_batches_matching_the_model(tiny_checkpoint: Path) -> None:
    settings = Settings(model_path=tiny_checkpoint, warmup=True)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    assert engine.ready
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    results = asyncio.run(engine.compute("encode", list(x), ()))
    engine.close()
    model = VQModel.from_pretrained(tiny_checkpoint)
    with torch.inference_mode():
        latents = model.encode(x)
        _, indices = model.quantize(latents)
    assert len(results) == 2
    assert results[1].indices.dtype == torch.int32
    assert torch.equal(results[1].indices.long(), indices[1])
    assert torch.allclose(results[1].latents, latents[1], atol=1e-5)


def test_bfloat16_engine_serves_with_float32_distances(tiny_checkpoint: Path) -> None:
    settings = Settings(model_path=tiny_checkpoint, dtype="bfloat16", warmup=False)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    assert engine.dtype == "bfloat16"
    x = torch.rand(3, 8, 8) * 2 - 1
    (result,) = asyncio.run(engine.compute("encode", [x], ()))
    (image,) = asyncio.run(engine.compute("decode_indices", [result.indices.long()], ()))
    engine.close()
    assert result.latents.dtype == torch.float32
    assert int(result.indices.min()) >= 0
    assert int(result.indices.max()) < 64
    assert image.shape == (8, 8, 3)


def test_missing_checkpoint_names_path_and_setting(tmp_path: Path) -> None:
    settings = Settings(model_path=tmp_path)
    engine = Engine(settings.model_specs()[0], settings)
    with pytest.raises(ModelLoadError, match="VQSERVE_MODEL_PATH") as info:
        engine.load()
    assert str(tmp_path) in str(info.value)
    engine.close()
