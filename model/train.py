"""Train a VQModel and write it in diffusers' format: `python -m model.train --preset default --out DIR`.

This is how the shipped checkpoints under model/weights/ were made. The model trains on random multi-scale
crops of the photos scikit-image and scikit-learn ship (or a folder, or scikit-learn's digits), never on the
evaluation photos. At each evaluation the best model so far is written to --out (config.json, safetensors,
training.json), so a run may be stopped at any time; the full training state (optimizer included) goes to
--state for --resume. Runs on CPU or GPU; a --seed fixes the run.

Training-only: it runs from a checkout (its `model/training` package and the dev dependencies are not part of the
installed service), and nothing on the serving path imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, cast

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model import VQModel, VQModelConfig
from model.device import resolve_device

try:
    from model.training import data
    from model.training.evaluate import evaluate
    from model.training.loop import TrainingRun, run_main
    from model.training.objective import CodebookKeeper, forward_loss
    from model.training.presets import PRESETS, Preset
except ModuleNotFoundError as exc:  # the installed wheel leaves model/training out (pyproject.toml)
    if exc.name != "model.training":
        raise
    raise SystemExit(
        "error: training runs from a checkout of the repository (python -m model.train in its root); "
        "the installed vqserve package does not include model/training"
    ) from None

LR_WARMUP = 100  # steps of linear learning-rate warm-up


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="named config and defaults")
    parser.add_argument("--config", type=Path, help="a config.json to train instead of the preset's config")
    parser.add_argument("--out", type=Path, required=True, help="directory for the diffusers-format checkpoint")
    parser.add_argument(
        "--data", help="'digits', or a comma-separated list of 'photos' (the shipped photos) and image folders"
    )
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--crop", type=int, help="training crop side in pixels")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-crop", type=int, help="side of the held-out evaluation crops")
    parser.add_argument("--vq-warmup", type=int, help="steps without quantization before seeding the codebook")
    parser.add_argument("--gray-weight", type=float, help="sampling weight of grayscale photos (1 = by area)")
    parser.add_argument("--permute-channels", type=float, help="probability of shuffling a crop's RGB channels")
    parser.add_argument("--ema-decay", type=float, help="weight EMA decay for evaluation and the checkpoint (0 = off)")
    parser.add_argument("--restart-every", type=int, help="steps between dead-code restarts")
    parser.add_argument("--restarts-until", type=float, help="fraction of the steps after which restarts stop")
    parser.add_argument("--init", type=Path, help="start from the weights of this diffusers-format checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--state", type=Path, help="resumable training state file (default runs/<out>/state.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from --state")
    args = parser.parse_args(argv)
    preset: Preset = PRESETS[args.preset]
    for name in (
        "data", "steps", "batch_size", "crop", "lr", "eval_every", "eval_crop", "vq_warmup", "gray_weight",
        "permute_channels", "ema_decay", "restart_every", "restarts_until",
    ):  # fmt: skip
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    if args.state is None:
        args.state = Path("runs") / args.out.name / "state.pt"
    if min(args.steps, args.batch_size, args.crop, args.eval_every, args.restart_every) <= 0:
        parser.error("--steps, --batch-size, --crop, --eval-every and --restart-every must be positive")
    if not 0.0 <= args.ema_decay < 1.0:
        parser.error("--ema-decay must be in [0, 1)")
    return args


def build_config(args: argparse.Namespace) -> VQModelConfig:
    if args.config is not None:
        return VQModelConfig.from_json_file(args.config)
    if args.init is not None:
        return VQModelConfig.from_json_file(args.init / "config.json")
    return VQModelConfig.from_dict(PRESETS[args.preset].config)


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < LR_WARMUP:
        return peak * (step + 1) / LR_WARMUP
    progress = min(1.0, (step - LR_WARMUP) / max(1, total - LR_WARMUP))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Run(TrainingRun):
    """One training run: data, model, optimizer, evaluation and checkpoint writing (the loop: TrainingRun)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        torch.manual_seed(args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.device = resolve_device(args.device)
        self.config = build_config(args)
        self.model = VQModel(self.config).to(self.device).train()
        if args.init is not None:
            self.model.load_state_dict(VQModel.from_pretrained(args.init).state_dict())
        # the averaged weights are what gets evaluated and shipped: they do not jump with each noisy step
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay)) if args.ema_decay else None
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr, betas=(0.9, 0.99))
        self.keeper = CodebookKeeper(self.config.num_vq_embeddings, self.config.embed_dim, self.generator)
        self._load_data()

    # data
    def _load_data(self) -> None:
        channels = self.config.in_channels
        source = self.args.data
        self.sampler: data.CropSampler | data.TensorSampler
        if source == "digits":
            train, held_out = data.digits(channels)
            self.sampler = data.TensorSampler(train, self.generator)
            self.eval_names, self.eval_images = ["sklearn_digits_heldout"] * len(held_out), held_out
            self.data_description: dict[str, Any] = {
                "source": "sklearn.datasets.load_digits, 8x8 upsampled (bicubic) to 28x28",
                "train_images": len(train),
                "eval_images": f"the last {len(held_out)} digits",
            }
            return
        images = data.source_images(source, channels)
        self.sampler = data.CropSampler(
            images,
            self.args.crop,
            self.generator,
            gray_weight=self.args.gray_weight,
            permute_channels=self.args.permute_channels,
        )
        self.eval_names, self.eval_images = data.eval_photos(channels, self.args.eval_crop)
        self.data_description = {
            "source": source.replace("photos", "skimage.data photos + sklearn sample images"),
            "train_images": sorted(im.name for im in self.sampler.images),
            "augmentation": (
                f"random {self.args.crop}px crops of 1x-3x regions (log-uniform), horizontal flips, RGB channels "
                f"shuffled with probability {self.args.permute_channels}; grayscale photos sampled with weight "
                f"{self.args.gray_weight}"
            ),
            "eval_images": [f"sklearn {name}" for name in data.HELD_OUT],
            "eval_crops": f"{len(self.eval_images)} crops of {self.args.eval_crop}px at a 2x3 grid per photo",
        }

    # checkpoints
    def own_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "code_counts": self.keeper.counts,
            "code_buffer": self.keeper.buffer,
        }

    def restore_own_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.keeper.counts = state["code_counts"].cpu()
        self.keeper.buffer = state["code_buffer"].cpu()

    def shipped_model(self) -> VQModel:
        """The weights evaluated and written out: the moving average when there is one."""
        return self.model if self.ema is None else cast(VQModel, self.ema.module)

    def write_checkpoint(self, evaluation: dict[str, Any], final: bool) -> None:
        out: Path = self.args.out
        self.shipped_model().save_pretrained(out)
        record = {
            "preset": self.args.preset if self.args.config is None else None,
            "config_file": str(self.args.config) if self.args.config else None,
            "config": self.config.to_dict(),
            "data": self.data_description,
            "seed": self.args.seed,
            "steps": self.step,
            "steps_planned": self.args.steps,
            "batch_size": self.args.batch_size,
            "crop": self.args.crop,
            "lr": self.args.lr,
            "vq_warmup": self.args.vq_warmup,
            "ema_decay": self.args.ema_decay,
            "restart_every": self.args.restart_every,
            "restarts_until": self.args.restarts_until,
            "init": str(self.args.init) if self.args.init else None,
            "loss": "L1 + L2 reconstruction + codebook + 0.25 * commitment, dead-code restarts",
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "command": "python -m model.train " + " ".join(sys.argv[1:]),
            "finished": final,
            "evaluation": evaluation,
            "history": self.history,
        }
        (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")

    # the loop's hooks
    def evaluate(self) -> dict[str, Any]:
        evaluation = evaluate(self.shipped_model(), self.eval_names, self.eval_images.to(self.device))
        evaluation["step"] = self.step
        return evaluation

    def history_entry(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        return {"step": self.step, "psnr_mean": evaluation["psnr_mean"]}

    def is_best(self, evaluation: dict[str, Any]) -> bool:
        quantizing = self.step >= self.args.vq_warmup  # before, the codebook is not in use: nothing to ship
        return quantizing and (self.best is None or evaluation["psnr_mean"] > self.best["psnr_mean"])

    def report(self, evaluation: dict[str, Any], running_loss: float, elapsed_s: float) -> str:
        return (
            f"step {self.step}: psnr {evaluation['psnr_mean']:.2f} dB "
            f"usage {evaluation['codebook_usage']:.3f} perplexity {evaluation['perplexity']} "
            f"loss {running_loss:.4f} ({elapsed_s:.0f}s)"
        )

    def postfix(self, running_loss: float) -> dict[str, Any] | None:
        return {"loss": f"{running_loss:.4f}", "restarts": self.keeper.restarted_total}

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns its loss, detached."""
        args = self.args
        quantize = self.step >= args.vq_warmup
        x = None
        if quantize and self.step == args.vq_warmup and args.init is None:
            if len(self.keeper.buffer) == 0:  # no warm-up steps: seed from this batch's encoder outputs
                x = self.sampler.batch(args.batch_size).to(self.device)
                with torch.no_grad():
                    z = self.model.encode(x)
                self.keeper.observe(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]), None)
            self.keeper.seed_codebook(self.model)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, args.steps, args.lr)
        if x is None:
            x = self.sampler.batch(args.batch_size).to(self.device)
        out = forward_loss(self.model, x, quantize)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
            # the codebook is copied, not averaged: seeded and restarted codes must take effect at once
            self.shipped_model().quantize.embedding.weight.data.copy_(self.model.quantize.embedding.weight.data)
        self.keeper.observe(out.latents, out.indices)
        self.step += 1
        restarting = self.step <= args.restarts_until * args.steps
        if quantize and restarting and self.step % args.restart_every == 0:
            self.keeper.restart_dead(self.model, self.optimizer)
        return out.loss.detach()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def parameters(run: TrainingRun) -> str:
        assert isinstance(run, Run)
        return f"{sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters"

    return run_main(args, lambda: Run(args), parameters)


if __name__ == "__main__":
    raise SystemExit(main())
