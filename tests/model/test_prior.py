"""The PixelCNN prior on small random-init networks: causality, receptive field, sampling, files and configs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model import CheckpointError, ConfigError, VQModelConfig
from model.prior import (
    PixelCNNPrior,
    PriorConfig,
    generator_for,
    load_prior_for,
    nll_bits,
    sample,
    sample_cell,
)
from tests.model.test_imports import TRAINING_AND_DEV_ONLY, loaded_after
from tests.support.priors import build_prior, tiny_prior

H, W, K = 5, 6, 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks: a second thread only adds synchronisation (10x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_codes(count: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (count, H, W), generator=torch.Generator().manual_seed(seed))


def influence(prior: PixelCNNPrior, codes: torch.Tensor, labels: torch.Tensor | None, cell: int) -> torch.Tensor:
    """(H * W,) bool: which cells' logits change when the code at raster position `cell` changes."""
    i, j = divmod(cell, W)
    changed = codes.clone()
    changed[0, i, j] = (changed[0, i, j] + 1) % K
    with torch.no_grad():
        delta = (prior(changed, labels) - prior(codes, labels)).abs().amax(dim=1)[0]  # (H, W)
    return (delta > 0).flatten()


@pytest.mark.parametrize("labels", [None, torch.tensor([2]), torch.tensor([-1])])
def test_no_cell_depends_on_itself_or_a_later_cell(labels: torch.Tensor | None) -> None:
    prior = tiny_prior(K, (H, W), num_labels=3)
    codes = random_codes()
    for cell in range(H * W):
        changed = influence(prior, codes, labels, cell)
        assert not changed[: cell + 1].any(), f"perturbing cell {cell} changed {changed[: cell + 1].nonzero()}"


def test_every_cell_sees_every_earlier_cell_including_up_right() -> None:
    """No blind spot: (i - 1, j + 1), and any cell before, reaches (i, j) through the vertical stack."""
    prior = tiny_prior(K, (H, W), num_labels=0)
    codes = random_codes()
    for cell in range(H * W):
        changed = influence(prior, codes, None, cell)
        assert changed[cell + 1 :].all(), f"cell {cell} does not reach {(~changed[cell + 1 :]).nonzero() + cell + 1}"
    i, j = 2, 3
    assert influence(prior, codes, None, (i - 1) * W + j + 1)[i * W + j]


def test_larger_grid_than_trained_is_causal_too() -> None:
    prior = tiny_prior(K, (H, W), num_labels=0)
    codes = torch.randint(0, K, (1, 9, 11), generator=torch.Generator().manual_seed(1))
    changed = codes.clone()
    changed[0, 4, 5] += 1
    with torch.no_grad():
        delta = (prior(changed) - prior(codes)).abs().amax(dim=1)[0].flatten()
    assert not delta[: 4 * 11 + 5 + 1].any()
    assert delta[4 * 11 + 6 :].any()


def test_label_conditions_the_logits_and_minus_one_means_no_label() -> None:
    prior = tiny_prior(K, (H, W), num_labels=3)
    torch.nn.init.normal_(prior.layers[0].label_bias.weight)  # type: ignore[union-attr]
    codes = random_codes(2)
    with torch.no_grad():
        none = prior(codes, None)
        assert torch.equal(prior(codes, torch.tensor([-1, -1])), none)
        assert torch.equal(prior(codes, torch.tensor([3, 3])), none)  # index num_labels: the dropped label
        assert not torch.equal(prior(codes, torch.tensor([0, 1])), none)
    with pytest.raises(ValueError, match="labels must be in"):
        prior(codes, torch.tensor([4, 0]))
    unconditional = tiny_prior(K, (H, W), num_labels=0)
    with pytest.raises(ValueError, match="unconditional"):
        unconditional(codes, torch.tensor([1, 1]))
    assert torch.equal(unconditional(codes, torch.tensor([-1, -1])), unconditional(codes))


def test_nll_bits_is_the_mean_cross_entropy_in_bits() -> None:
    prior = tiny_prior(K, (H, W), num_labels=3)
    codes = random_codes(3)
    bits = nll_bits(prior, codes, torch.tensor([0, -1, 2]))
    assert bits.shape == (3,)
    logp = torch.log_softmax(prior(codes, torch.tensor([0, -1, 2])), dim=1)
    expected = -logp.gather(1, codes[:, None]).squeeze(1).mean(dim=(1, 2)) / torch.log(torch.tensor(2.0))
    assert torch.allclose(bits, expected.detach(), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        nll_bits(prior, codes + K)


def test_sample_cell_respects_top_k_and_temperature() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    draws = {sample_cell(logits, 1.0, 2, generator_for(0, b)) for b in range(200)}
    assert draws == {1, 3}
    assert {sample_cell(logits, 1.0, 1, generator_for(0, b)) for b in range(20)} == {1}
    # a low temperature concentrates on the mode, a high one spreads over every code
    assert {sample_cell(logits, 0.01, None, generator_for(0, b)) for b in range(50)} == {1}
    assert {sample_cell(logits, 100.0, None, generator_for(0, b)) for b in range(200)} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="temperature"):
        sample_cell(logits, 0.0, None, generator_for(0, 0))
    with pytest.raises(ValueError, match="top_k"):
        sample_cell(logits, 1.0, 0, generator_for(0, 0))


def test_sampling_is_deterministic_per_seed_and_sample_whatever_the_batch() -> None:
    prior = tiny_prior(K, (H, W), num_labels=3)
    first = sample(prior, 3, label=1, seed=7)
    assert first.shape == (3, H, W)
    assert first.dtype == torch.long
    assert torch.equal(first, sample(prior, 3, label=1, seed=7))
    assert not torch.equal(first, sample(prior, 3, label=1, seed=8))
    # sample b is drawn with generator_for(seed, b): stepping each request alone, as the service may, gives the same
    for b in range(3):
        grid = torch.zeros(1, H, W, dtype=torch.long)
        generator = generator_for(7, b)
        for cell in range(H * W):
            i, j = divmod(cell, W)
            with torch.no_grad():
                logits = prior(grid, torch.tensor([1]))[0, :, i, j]
            grid[0, i, j] = sample_cell(logits, 1.0, None, generator)
        assert torch.equal(grid[0], first[b])


def test_sample_with_a_mask_keeps_the_unmasked_cells_exactly() -> None:
    prior = tiny_prior(K, (H, W), num_labels=3)
    codes = random_codes(4, seed=3)
    mask = torch.zeros(H, W, dtype=torch.long)
    mask[2:4, 1:5] = 1
    out = sample(prior, 4, label=None, seed=1, indices=codes, mask=mask)
    keep = mask == 0
    assert torch.equal(out[:, keep], codes[:, keep])
    assert not torch.equal(out[:, ~keep], codes[:, ~keep])  # resampled: 32 cells of 16 codes all unchanged is ~0
    # one (H, W) grid for every sample, and a mask per sample
    per_sample = torch.zeros(2, H, W, dtype=torch.long)
    per_sample[1, 0, 0] = 1
    out = sample(prior, 2, seed=0, indices=codes[0], mask=per_sample)
    assert torch.equal(out[0], codes[0])
    assert torch.equal(out[1].flatten()[1:], codes[0].flatten()[1:])
    with pytest.raises(ValueError, match="mask needs the indices"):
        sample(prior, 1, mask=mask)
    with pytest.raises(ValueError, match="mask shape"):
        sample(prior, 1, indices=codes[0], mask=torch.ones(H, W + 1))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    prior = tiny_prior(K, (H, W), num_labels=3)
    prior.save_pretrained(tmp_path / "p")
    stored = json.loads((tmp_path / "p" / "config.json").read_text())
    assert stored["_class_name"] == "PixelCNNPrior"
    assert stored["grid_size"] == [H, W]
    assert PriorConfig.from_dict(stored) == prior.config == PriorConfig.from_dict(prior.config.to_dict())
    loaded = PixelCNNPrior.from_pretrained(tmp_path / "p")
    assert not loaded.training
    codes = random_codes(2)
    assert torch.equal(loaded(codes, torch.tensor([0, 1])), prior(codes, torch.tensor([0, 1])))
    # the VQ model's weight file name is accepted too
    (tmp_path / "p" / "prior.safetensors").rename(tmp_path / "p" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(PixelCNNPrior.from_pretrained(tmp_path / "p")(codes), prior(codes))


def test_config_refuses_unknown_and_bad_fields() -> None:
    good = tiny_prior(K, (H, W)).config.to_dict()
    with pytest.raises(ConfigError, match="'hidden_chanels'"):
        PriorConfig.from_dict({**good, "hidden_chanels": 8})
    with pytest.raises(ConfigError, match="not a 'PixelCNNPrior'"):
        PriorConfig.from_dict({**good, "_class_name": "VQModel"})
    with pytest.raises(ConfigError, match="'grid_size' is required"):
        PriorConfig.from_dict({k: v for k, v in good.items() if k != "grid_size"})
    with pytest.raises(ConfigError, match="kernel_size"):
        PriorConfig.from_dict({**good, "kernel_size": 4})
    with pytest.raises(ConfigError, match="num_labels"):
        PriorConfig.from_dict({**good, "num_labels": -1})


def test_load_prior_for_finds_checks_and_refuses(tmp_path: Path) -> None:
    vq_config = VQModelConfig(num_vq_embeddings=K)
    assert load_prior_for(tmp_path, vq_config) is None
    build_prior(tmp_path, num_vq_embeddings=K)
    loaded = load_prior_for(tmp_path, vq_config)
    assert loaded is not None
    assert loaded.config.num_vq_embeddings == K
    with pytest.raises(CheckpointError, match=r"codebook of 16 codes.*num_vq_embeddings=32"):
        load_prior_for(tmp_path, VQModelConfig(num_vq_embeddings=32))
    (tmp_path / "prior" / "prior.safetensors").unlink()
    with pytest.raises(CheckpointError, match="prior.safetensors"):
        load_prior_for(tmp_path, vq_config)


def test_the_prior_package_loads_no_training_code() -> None:
    """The service imports model.prior: like the VQ model's serving modules, it must not pull in training."""
    loaded = loaded_after("model.prior")
    banned = (*TRAINING_AND_DEV_ONLY, "model.train_prior")
    assert not sorted(name for name in loaded if any(name == b or name.startswith(b + ".") for b in banned))
