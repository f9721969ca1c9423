"""The engine: device and dtype choice, warm-up, and batches computed on its own thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from model import VQModel
from service.engine import Engine, ModelLoadError, resolve_dtype, serving_device
from service.ops import FloatDecode, LatentDecode, NoParams, Op
from service.settings import Settings

pytestmark = pytest.mark.timeout(60)


def test_auto_dtype_is_float32_on_cpu_and_explicit_dtypes_win() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, force_upcast=False) == torch.float32
    assert resolve_dtype("bfloat16", cpu, force_upcast=False) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda"), force_upcast=True) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    assert serving_device("auto") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="VQSERVE_DEVICE"):
        serving_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_on_gpu_is_half_precision(tiny_checkpoint: Path) -> None:
    engine = Engine(Settings(model_path=tiny_checkpoint).model_specs()[0], Settings(model_path=tiny_checkpoint))
    facts = engine.load()
    assert facts.device.startswith("cuda")
    assert facts.dtype in ("bfloat16", "float16")
    engine.close()


def test_engine_warms_up_and_computes_batches_matching_the_model(tiny_checkpoint: Path) -> None:
    settings = Settings(model_path=tiny_checkpoint, warmup=True)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    assert engine.ready
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    results = asyncio.run(engine.compute(Op.ENCODE, list(x), NoParams()))
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
    assert engine.load().dtype == "bfloat16"
    x = torch.rand(3, 8, 8) * 2 - 1
    (result,) = asyncio.run(engine.compute(Op.ENCODE, [x], NoParams()))
    (image,) = asyncio.run(engine.compute(Op.DECODE_INDICES, [result.indices.long()], NoParams()))
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


def test_every_decode_op_matches_the_model(tiny_checkpoint: Path) -> None:
    """The float op is a batch op like the others (no side door): same decoder output as `VQModel.decode`."""
    settings = Settings(model_path=tiny_checkpoint, warmup=False)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    latents = torch.randn(2, 4, 4, 4)
    raw = engine.run(Op.DECODE_FLOAT, list(latents), FloatDecode(force_not_quantize=True))
    unit = engine.run(Op.DECODE_FLOAT, list(latents), FloatDecode(unit_range=True))
    images = engine.run(Op.DECODE_LATENTS, list(latents), LatentDecode(scaling_factor=2.0))
    with pytest.raises(TypeError):
        engine.run(Op.DECODE_FLOAT, list(latents), LatentDecode())
    engine.close()
    model = VQModel.from_pretrained(tiny_checkpoint)
    with torch.inference_mode():
        expected_raw = model.decode(latents, force_not_quantize=True)
        expected_unit = (model.decode(latents) / 2 + 0.5).clamp(0, 1)
        expected_images = model.decode(latents / 2.0).clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    assert torch.allclose(torch.stack(raw), expected_raw, atol=1e-5)
    assert torch.allclose(torch.stack(unit), expected_unit, atol=1e-5)
    got = torch.from_numpy(images[1]).permute(2, 0, 1).int()
    assert (got - expected_images[1].int()).abs().max() <= 1


def test_a_prefetched_batch_computes_exactly_what_it_computes_unprefetched(tiny_checkpoint: Path) -> None:
    """VQSERVE_PREFETCH=on (a GPU's default; here on the CPU): the batch handed over early is stacked on the copy
    thread and its compute takes that stack; the results are bit for bit those of the same batch copied as it
    computes, and `vqserve_prefetched_batches_total` counts it."""
    from prometheus_client import REGISTRY

    settings = Settings(model_path=tiny_checkpoint, prefetch="on", warmup=False)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    assert engine.prefetches

    def counted() -> float:
        labels = {"model": engine.name, "op": "reconstruct"}
        return REGISTRY.get_sample_value("vqserve_prefetched_batches_total", labels) or 0.0

    images = list(torch.rand(3, 3, 16, 16) * 2 - 1)
    before = counted()
    plain = engine.run(Op.RECONSTRUCT, [image.clone() for image in images])
    assert counted() == before  # nothing was prefetched for these tensors
    engine.prefetch(Op.RECONSTRUCT, images)
    ahead = engine.run(Op.RECONSTRUCT, images)
    engine.close()
    assert counted() == before + 1
    assert all((a == b).all() for a, b in zip(plain, ahead, strict=True))


def test_prefetch_is_off_on_a_cpu_by_default(tiny_checkpoint: Path) -> None:
    settings = Settings(model_path=tiny_checkpoint, warmup=False)
    engine = Engine(settings.model_specs()[0], settings)
    engine.load()
    assert settings.prefetch == "auto"
    assert not engine.prefetches
    engine.close()
