"""Train a PixelCNN prior over a VQ model's codes: `python -m model.train_prior --vq model/weights/digits`.

The VQ model's training images are encoded to code grids once; the prior then trains on those grids alone (CPU,
minutes for the digits model). Labels are dropped (replaced by "no label") with probability --label-dropout, so
one prior samples both class-conditionally and unconditionally. The last --val grids of the VQ model's training
split choose the checkpoint (mean of conditional and unconditional bits per code); the VQ model's own held-out
images are never used for that, so the card's held-out figures are unbiased. At each improvement the prior is
written to --out (default VQ_DIR/prior: config.json, prior.safetensors, training.json); the full state (optimizer
included) goes to --state for --resume.

The defaults are the settings of the shipped digits prior (`make train-prior`). Training-only: runs from a checkout,
as `model.train`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from model import VQModel
from model.device import resolve_device
from model.prior import PRIOR_SUBFOLDER, PixelCNNPrior, PriorConfig, bits_per_code
from model.train import learning_rate

try:
    from model.training import codes as code_data
    from model.training.data import TensorSampler
    from model.training.loop import TrainingRun, run_main
except ModuleNotFoundError as exc:  # the installed wheel leaves model/training out (pyproject.toml)
    if exc.name != "model.training":
        raise
    raise SystemExit(
        "error: training runs from a checkout of the repository (python -m model.train_prior in its root); "
        "the installed vqserve package does not include model/training"
    ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m model.train_prior", description=__doc__.splitlines()[0])
    parser.add_argument("--vq", type=Path, required=True, help="the VQ checkpoint directory whose codes to model")
    parser.add_argument("--out", type=Path, help=f"where to write the prior (default VQ/{PRIOR_SUBFOLDER})")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warm-up, cosine decay)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    parser.add_argument("--label-dropout", type=float, default=0.2, help="probability of training without label")
    parser.add_argument("--val", type=int, default=150, help="grids of the training split kept for selection")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--hidden-channels", type=int, default=48)
    parser.add_argument("--num-layers", type=int, default=6)
    parser.add_argument("--kernel-size", type=int, default=3)
    parser.add_argument("--output-channels", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--unconditional", action="store_true", help="train without labels (num_labels 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    parser.add_argument("--state", type=Path, help="resumable training state file (default runs/prior/state.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from --state")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = args.vq / PRIOR_SUBFOLDER
    if args.state is None:
        args.state = Path("runs") / "prior" / "state.pt"
    if min(args.steps, args.batch_size, args.eval_every, args.val) <= 0:
        parser.error("--steps, --batch-size, --eval-every and --val must be positive")
    if not 0.0 <= args.label_dropout <= 1.0:
        parser.error("--label-dropout must be in [0, 1]")
    return args


class PriorRun(TrainingRun):
    """One training run: the codes, the prior, its optimizer, selection on the validation grids, the files (the
    loop: TrainingRun)."""

    progress_every_s = 30

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        torch.manual_seed(args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.device = resolve_device(args.device)
        code_data.training_data_of(args.vq)  # refuses data a prior cannot train on, before any loading
        vq = VQModel.from_pretrained(args.vq)
        splits = code_data.digits_codes(vq)
        if args.val >= len(splits.train):
            raise ValueError(f"--val {args.val} leaves no training grids (the split has {len(splits.train)})")
        self.codes, self.labels = splits.train[: -args.val], splits.train_labels[: -args.val]
        self.val_codes, self.val_labels = splits.train[-args.val :], splits.train_labels[-args.val :]
        self.config = PriorConfig(
            num_vq_embeddings=vq.config.num_vq_embeddings,
            grid_size=(int(splits.train.shape[1]), int(splits.train.shape[2])),
            num_labels=0 if args.unconditional else splits.num_labels,
            hidden_channels=args.hidden_channels,
            num_layers=args.num_layers,
            kernel_size=args.kernel_size,
            output_channels=args.output_channels,
            dropout=args.dropout,
        )
        self.prior = PixelCNNPrior(self.config).to(self.device).train()
        self.optimizer = torch.optim.AdamW(
            self.prior.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay
        )
        self.sampler = TensorSampler(torch.arange(len(self.codes)), self.generator)
        self.data_description = {
            "source": "the VQ model's training split (sklearn.datasets.load_digits, first 1,497), encoded once",
            "train_grids": len(self.codes),
            "val_grids": f"the last {args.val} grids of that split (checkpoint selection)",
            "held_out": "the VQ model's 300 held-out digits: never used in training or selection",
            "grid": list(self.config.grid_size),
        }

    # state
    def own_state(self) -> dict[str, Any]:
        return {
            "prior": self.prior.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "order": self.sampler._order,
            "config_json": json.dumps(self.config.to_dict()),
        }

    def restore_own_state(self, state: dict[str, Any]) -> None:
        if json.loads(state["config_json"]) != self.config.to_dict():
            raise ValueError(f"{self.args.state} holds a run of another prior config; pass the same options")
        self.prior.load_state_dict(state["prior"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler._order = state["order"].cpu()

    # evaluation and files
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        self.prior.eval()
        codes = self.val_codes.to(self.device)
        out: dict[str, Any] = {"step": self.step}
        out["val_bits_unconditional"] = round(float(bits_per_code(self.prior(codes, None), codes).mean()), 4)
        if self.config.conditional:
            labelled = bits_per_code(self.prior(codes, self.val_labels.to(self.device)), codes)
            out["val_bits_conditional"] = round(float(labelled.mean()), 4)
        out["val_bits"] = round(
            (out["val_bits_unconditional"] + out.get("val_bits_conditional", out["val_bits_unconditional"])) / 2, 4
        )
        self.prior.train()
        return out

    def write_checkpoint(self, evaluation: dict[str, Any], final: bool) -> None:
        args = self.args
        self.prior.save_pretrained(args.out)
        record = {
            "vq": str(args.vq),
            "config": self.config.to_dict(),
            "data": self.data_description,
            "seed": args.seed,
            "steps": self.step,
            "steps_planned": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "label_dropout": args.label_dropout,
            "loss": "cross-entropy of each code given the codes before it (and the label, dropped at random)",
            "selection": "lowest val_bits (mean of conditional and unconditional bits per code on the val grids)",
            "parameters": sum(p.numel() for p in self.prior.parameters()),
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "command": "python -m model.train_prior " + " ".join(sys.argv[1:]),
            "finished": final,
            "evaluation": evaluation,
            "history": self.history,
        }
        (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")

    def is_best(self, evaluation: dict[str, Any]) -> bool:
        return self.best is None or evaluation["val_bits"] < self.best["val_bits"]

    def report(self, evaluation: dict[str, Any], running_loss: float, elapsed_s: float) -> str:
        return f"step {self.step}: val bits {evaluation['val_bits']:.4f} (train {running_loss:.4f}, {elapsed_s:.0f}s)"

    # the loop
    def train_step(self) -> torch.Tensor:
        args = self.args
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.step, args.steps, args.lr)
        rows = self.sampler.batch(args.batch_size)
        codes = self.codes[rows].to(self.device)  # (B, H, W)
        labels: torch.Tensor | None = None
        if self.config.conditional:
            dropped = torch.rand(len(rows), generator=self.generator) < args.label_dropout
            labels = torch.where(dropped, -1, self.labels[rows]).to(self.device)  # (B,)
        loss = bits_per_code(self.prior(codes, labels), codes).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def parameters(run: TrainingRun) -> str:
        assert isinstance(run, PriorRun)
        return f"a {sum(p.numel() for p in run.prior.parameters()) / 1e6:.2f}M-parameter prior"

    return run_main(args, lambda: PriorRun(args), parameters)


if __name__ == "__main__":
    raise SystemExit(main())
