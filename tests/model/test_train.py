"""The training script end to end on the `tiny` preset: real photos, real optimisation, real files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import VQModel
from model.train import Run, main, parse_args
from model.training import data
from model.training.objective import forward_loss
from tests.support.constants import ROOT


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--preset", "tiny", "--out", str(tmp_path / "out"), "--state", str(tmp_path / "state" / "state.pt"),
        "--threads", "1", *extra,
    ]  # fmt: skip


def test_held_out_photos_never_train() -> None:
    names = {im.name for im in data.shipped_photos(3)}
    assert names, "no shipped photos found"
    assert not names & set(data.HELD_OUT)
    with pytest.raises(ValueError, match="evaluation photo"):
        data._load_files([Path(data.__file__).parent / "china.jpg"], 3)


@pytest.mark.timeout(60)
def test_cli_writes_a_reloadable_diffusers_checkpoint(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "model.train", *tiny_args(tmp_path, "--steps", "20", "--eval-every", "10")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out"
    assert {"config.json", "diffusion_pytorch_model.safetensors", "training.json"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "training.json").read_text())
    assert record["seed"] == 0
    assert record["finished"] is True
    assert record["evaluation"]["step"] in (10, 20)
    assert 0 < record["evaluation"]["psnr_mean"] < 99
    assert set(record["evaluation"]["psnr_per_image"]) == set(data.HELD_OUT)
    assert not set(record["data"]["train_images"]) & set(data.HELD_OUT)
    model = VQModel.from_pretrained(out)
    assert model.config.to_dict() == record["config"]
    assert (tmp_path / "state" / "state.pt").is_file()
    assert json.loads(result.stdout)["best"]["psnr_mean"] == record["evaluation"]["psnr_mean"]


@pytest.mark.timeout(60)
def test_loss_decreases_and_runs_are_deterministic(tmp_path: Path) -> None:
    torch.set_num_threads(1)

    def losses(run: Run, x: torch.Tensor) -> tuple[float, float]:
        run.model.eval()
        with torch.no_grad():
            before = float(forward_loss(run.model, x, quantize=False).recon_loss)
        run.model.train()
        for _ in range(40):
            run.train_step()
        run.model.eval()
        with torch.no_grad():
            after = float(forward_loss(run.model, x, quantize=True).recon_loss)
        return before, after

    args = parse_args(tiny_args(tmp_path, "--steps", "40", "--vq-warmup", "20", "--lr", "3e-3"))
    first = Run(args)
    x = first.sampler.batch(8)
    before, after = losses(first, x)
    assert after < 0.8 * before

    second = Run(args)
    second.sampler.batch(8)  # the same draws as the first run
    losses(second, x)
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.timeout(60)
def test_resume_continues_from_the_saved_state(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    args = parse_args(tiny_args(tmp_path, "--steps", "12", "--eval-every", "6", "--vq-warmup", "3"))
    run = Run(args)
    run.train()
    assert run.step == 12

    longer = parse_args(tiny_args(tmp_path, "--steps", "18", "--eval-every", "6", "--vq-warmup", "3"))
    resumed = Run(longer)
    resumed.load_state()
    assert resumed.step == 12
    for a, b in zip(run.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.optimizer.state_dict()["state"].keys() == run.optimizer.state_dict()["state"].keys()
    resumed.train()
    assert resumed.step == 18
    assert [h["step"] for h in resumed.history] == [6, 12, 18]


def test_dead_codes_are_restarted(tmp_path: Path) -> None:
    args = parse_args(tiny_args(tmp_path, "--vq-warmup", "0"))
    run = Run(args)
    x = run.sampler.batch(4)
    out = forward_loss(run.model, x, quantize=True)
    run.keeper.observe(out.latents, out.indices)
    used = int((run.keeper.counts > 0).sum())
    restarted = run.keeper.restart_dead(run.model, run.optimizer)
    assert restarted == run.config.num_vq_embeddings - used > 0
    # the restarted codes now sit among the encoder outputs, so more of them get picked
    out = forward_loss(run.model, x, quantize=True)
    assert int(out.indices.unique().numel()) > used


def test_crop_sampler_weights_gray_photos_and_shuffles_channels() -> None:
    gray = data.NamedImage("gray", torch.linspace(-1, 1, 128 * 128).view(1, 128, 128).expand(3, -1, -1).clone())
    red = torch.full((3, 128, 128), -1.0)
    red[0] = 1.0
    colour = data.NamedImage("red", red)
    generator = torch.Generator().manual_seed(0)
    sampler = data.CropSampler([gray, colour], 32, generator, gray_weight=0.0, permute_channels=1.0)
    assert sampler.weights.tolist() == [0.0, 1.0]
    crops = sampler.batch(24)
    # every crop is the red image, with the bright channel moved around by the shuffles
    bright = crops.amax(dim=(2, 3)).argmax(dim=1)
    assert set(bright.tolist()) == {0, 1, 2}


@pytest.mark.timeout(60)
def test_ema_weights_are_evaluated_saved_and_resumed(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    extra = ("--steps", "8", "--eval-every", "8", "--vq-warmup", "2", "--ema-decay", "0.5")
    args = parse_args(tiny_args(tmp_path, *extra))
    run = Run(args)
    run.train()
    assert run.ema is not None
    live, averaged = run.model.state_dict(), run.shipped_model().state_dict()
    codebook = "quantize.embedding.weight"
    assert torch.equal(live[codebook], averaged[codebook])  # copied, so seeded/restarted codes act at once
    assert any(not torch.equal(live[k], averaged[k]) for k in live if k != codebook)
    shipped = VQModel.from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(shipped[k], averaged[k]) for k in shipped)
    assert json.loads((tmp_path / "out" / "training.json").read_text())["ema_decay"] == 0.5

    resumed = Run(args)
    resumed.load_state()
    assert resumed.ema is not None
    assert all(torch.equal(v, resumed.shipped_model().state_dict()[k]) for k, v in averaged.items())


@pytest.mark.timeout(60)
def test_init_starts_from_a_checkpoint_and_keeps_its_codebook(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    Run(parse_args(tiny_args(tmp_path, "--steps", "6", "--eval-every", "6", "--vq-warmup", "2"))).train()
    start = VQModel.from_pretrained(tmp_path / "out").state_dict()
    follow = tmp_path / "follow"
    args = parse_args(
        ["--preset", "tiny", "--out", str(follow / "out"), "--state", str(follow / "state.pt"), "--threads", "1",
         "--init", str(tmp_path / "out"), "--vq-warmup", "0", "--restart-every", "1000"]
    )  # fmt: skip
    run = Run(args)
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in start.items())
    run.train_step()
    # no re-seeding of the trained codebook when quantization is on from the first step
    moved = (run.model.quantize.embedding.weight - start["quantize.embedding.weight"]).abs().max()
    assert 0 < float(moved) < 0.1


def test_restarts_stop_after_their_share_of_the_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    extra = ("--steps", "16", "--vq-warmup", "0", "--restart-every", "2", "--restarts-until", "0.5")
    run = Run(parse_args(tiny_args(tmp_path, *extra)))
    for _ in range(8):
        run.train_step()
    restarted = run.keeper.restarted_total
    assert restarted > 0
    for _ in range(8):
        run.train_step()
    assert run.keeper.restarted_total == restarted


def test_sources_combine_shipped_photos_and_folders(tmp_path: Path) -> None:
    Image.fromarray(np.full((128, 160, 3), 200, dtype=np.uint8)).save(tmp_path / "extra.png")
    names = [im.name for im in data.source_images(f"photos, {tmp_path}", 3)]
    assert "extra.png" in names
    assert set(names) - {"extra.png"} == {im.name for im in data.shipped_photos(3)}
    with pytest.raises(ValueError, match="no images"):
        data.source_images(f"photos,{tmp_path / 'missing'}", 3)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nonsense", "'nonsense' is not a torch device"),
        pytest.param(
            "cuda",
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)
def test_an_unusable_device_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, message: str
) -> None:
    # model.device.resolve_device, the service's rule, refuses it before any data is loaded or model built
    assert main(tiny_args(tmp_path, "--device", device)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
