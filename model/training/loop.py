"""What every training run here shares: the step loop, evaluation and best-checkpoint bookkeeping, the state file.

A run (`model.train.Run`, `model.train_prior.PriorRun`) subclasses `TrainingRun` and says only what is its own:
one optimisation step, one evaluation, whether an evaluation is the best so far, how to write its checkpoint, and
the tensors of its state. The loop evaluates every `--eval-every` steps, writes the best checkpoint and the full
state (atomically: a killed run never leaves half a file), stops cleanly on SIGTERM or Ctrl-C with its state saved
for `--resume`, and marks the best checkpoint's `training.json` finished when the planned steps are done.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model.device import DeviceError


class TrainingRun:
    """The shared part of a run; subclasses set `args`, `generator` and `device` and fill in the hooks below."""

    args: argparse.Namespace
    generator: torch.Generator
    device: torch.device
    progress_every_s = 60  # how often the progress bar redraws when stderr is not a terminal (a log file)

    def __init__(self) -> None:
        self.step = 0
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    # what each run fills in
    def train_step(self) -> torch.Tensor:
        """One optimisation step; its loss, detached."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, Any]:
        """The figures of the model as it is now (`step` included)."""
        raise NotImplementedError

    def is_best(self, evaluation: dict[str, Any]) -> bool:
        """Whether `evaluation` is better than `self.best` (and worth a checkpoint)."""
        raise NotImplementedError

    def history_entry(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        return evaluation

    def write_checkpoint(self, evaluation: dict[str, Any], final: bool) -> None:
        raise NotImplementedError

    def own_state(self) -> dict[str, Any]:
        """The run's own tensors for the state file (model, optimizer, ...)."""
        raise NotImplementedError

    def restore_own_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def report(self, evaluation: dict[str, Any], running_loss: float, elapsed_s: float) -> str:
        """The line printed after each evaluation."""
        raise NotImplementedError

    def postfix(self, running_loss: float) -> dict[str, Any] | None:
        """What the progress bar shows beside the step count every 50 steps (None: nothing)."""
        return None

    # the state file
    def save_state(self) -> None:
        path: Path = self.args.state
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "best_json": json.dumps({"best": self.best, "history": self.history}),
            **self.own_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load_state(self) -> None:
        state = torch.load(self.args.state, map_location=self.device, weights_only=True)
        self.restore_own_state(state)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        saved = json.loads(state["best_json"])
        self.best, self.history = saved["best"], saved["history"]

    # the loop
    def evaluate_and_save(self, final: bool = False) -> dict[str, Any]:
        evaluation = self.evaluate()
        self.history.append(self.history_entry(evaluation))
        if self.is_best(evaluation):
            self.best = evaluation
            self.write_checkpoint(evaluation, final)
        self.save_state()
        return evaluation

    def train(self) -> dict[str, Any]:
        """Train to `--steps` (or until SIGTERM / Ctrl-C, state saved); the best evaluation."""
        args = self.args
        stop = {"requested": False}

        def request_stop(signum: int, frame: object) -> None:
            stop["requested"] = True

        previous = signal.signal(signal.SIGTERM, request_stop)
        interval = 2 if sys.stderr.isatty() else self.progress_every_s
        bar = tqdm(total=args.steps, initial=self.step, mininterval=interval, smoothing=0.05)
        t0 = time.time()
        running: torch.Tensor | None = None  # smoothed loss, kept on the device: read only when shown
        try:
            while self.step < args.steps and not stop["requested"]:
                loss = self.train_step()
                running = loss if running is None else 0.98 * running + 0.02 * loss
                bar.update(1)
                if self.step % 50 == 0 and (postfix := self.postfix(float(running))) is not None:
                    bar.set_postfix(postfix, refresh=False)
                if self.step % args.eval_every == 0 or self.step == args.steps:
                    evaluation = self.evaluate_and_save(final=self.step == args.steps)
                    bar.write(self.report(evaluation, float(running), time.time() - t0), file=sys.stderr)
        except KeyboardInterrupt:
            stop["requested"] = True
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        if stop["requested"]:
            self.save_state()
            print(f"stopped at step {self.step}; state saved to {args.state}", file=sys.stderr)
        elif self.best is not None:
            # the best checkpoint is on disk; mark its record as the outcome of a finished run
            record = json.loads((args.out / "training.json").read_text())
            record["finished"], record["history"] = True, self.history
            (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        return self.best or {}


def run_main(
    args: argparse.Namespace, start: Callable[[], TrainingRun], parameters: Callable[[TrainingRun], str]
) -> int:
    """The command line of a run: build it (a bad device or option is one `error:` line, exit 2), `--resume`
    from its state file, train, print the best evaluation as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run = start()
    except (DeviceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume:
        if not args.state.is_file():
            print(f"--resume: no state file at {args.state}", file=sys.stderr)
            return 2
        run.load_state()
        print(f"resumed from {args.state} at step {run.step}", file=sys.stderr)
    print(f"training {parameters(run)} on {run.device} for {args.steps} steps", file=sys.stderr)
    best = run.train()
    print(json.dumps({"out": str(args.out), "best": best}, indent=2))
    return 0
