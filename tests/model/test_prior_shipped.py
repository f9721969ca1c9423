"""The shipped digits prior: it loads for its VQ model, is small, and has learnt the codes' structure."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch

from model import VQModel
from model.prior import PixelCNNPrior, load_prior_for, nll_bits
from model.training import codes as code_data
from model.training.prior_card import shuffled_cells, unigram_bits
from tests.support.constants import WEIGHTS

DIGITS = WEIGHTS / "digits"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded() -> tuple[PixelCNNPrior, code_data.CodeSplits]:
    vq = VQModel.from_pretrained(DIGITS)
    prior = load_prior_for(DIGITS, vq.config)
    assert prior is not None
    return prior, code_data.digits_codes(vq)


def test_shipped_prior_is_small_conditional_and_fits_its_vq_model(loaded: tuple) -> None:
    prior, _ = loaded
    assert (DIGITS / "prior" / "prior.safetensors").stat().st_size < 2 * 2**20
    assert prior.config.num_vq_embeddings == 128
    assert prior.config.grid_size == (7, 7)
    assert prior.config.num_labels == 10
    assert (DIGITS / "prior" / "samples.png").is_file()
    assert (DIGITS / "prior" / "README.md").is_file()


def test_real_held_out_codes_are_likelier_than_shuffled_ones_and_than_baselines(loaded: tuple) -> None:
    prior, splits = loaded
    real = nll_bits(prior, splits.held_out)
    shuffled = nll_bits(prior, shuffled_cells(splits.held_out))
    labelled = nll_bits(prior, splits.held_out, splits.held_out_labels)
    assert real.mean() < shuffled.mean() - 1.0
    assert (real < shuffled).float().mean() > 0.9
    assert labelled.mean() < real.mean()  # the label tells the prior something
    unigram = unigram_bits(splits.train, splits.held_out, 128)
    assert labelled.mean() < real.mean() < unigram - 1.0 < math.log2(128)
    # the card's figures come from this evaluation, which is deterministic
    recorded = json.loads((DIGITS / "prior" / "evaluation.json").read_text())["nll_bits_per_code"]
    assert float(real.mean()) == pytest.approx(recorded["prior_unconditional"], abs=1e-3)
    assert float(labelled.mean()) == pytest.approx(recorded["prior_conditional"], abs=1e-3)
    assert unigram == pytest.approx(recorded["unigram_of_train_codes"], abs=1e-3)
