"""`python -m model.train_prior` end to end on the digits VQ model: real codes, real steps, files, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import VQModel
from model.prior import load_prior_for
from tests.support.constants import ROOT, WEIGHTS


def train_prior(tmp_path: Path, *extra: str, vq: Path = WEIGHTS / "digits") -> subprocess.CompletedProcess[str]:
    args = [
        "--vq", str(vq), "--out", str(tmp_path / "vq" / "prior"), "--state", str(tmp_path / "state.pt"),
        "--hidden-channels", "8", "--num-layers", "2", "--output-channels", "16", "--batch-size", "8",
        "--eval-every", "2", "--val", "40", "--threads", "1", *extra,
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "model.train_prior", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.timeout(300)
def test_trains_writes_a_loadable_prior_and_resumes(tmp_path: Path) -> None:
    first = train_prior(tmp_path, "--steps", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = train_prior(tmp_path, "--steps", "4", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert "at step 2" in resumed.stderr
    out = tmp_path / "vq" / "prior"
    assert {"config.json", "prior.safetensors", "training.json"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "training.json").read_text())
    assert record["finished"] is True
    assert [h["step"] for h in record["history"]] == [2, 4]
    assert record["label_dropout"] == 0.2
    assert record["data"]["train_grids"] == 1497 - 40
    assert 0 < record["evaluation"]["val_bits_conditional"] < 8
    # the prior sits where load_prior_for looks for it, and matches the digits codebook and grid
    vq_config = VQModel.from_pretrained(WEIGHTS / "digits").config
    prior = load_prior_for(tmp_path / "vq", vq_config)
    assert prior is not None
    assert prior.config.to_dict() == record["config"]
    assert (prior.config.num_vq_embeddings, prior.config.grid_size, prior.config.num_labels) == (128, (7, 7), 10)
    assert prior(torch.zeros(1, 7, 7, dtype=torch.long), torch.tensor([3])).shape == (1, 128, 7, 7)


def test_refuses_a_vq_model_without_labelled_training_data(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = train_prior(tmp_path, "--steps", "2", vq=tiny_checkpoint)
    assert result.returncode == 2
    assert "training.json" in result.stderr
