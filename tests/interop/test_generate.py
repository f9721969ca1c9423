"""`Client.generate` / `Client.complete` (sync and async) and `vqserve generate` (against a server and in-process)
on a real `python -m service` serving the tiny checkpoint with a random prior: what they draw is what
`model.prior.sample` draws for the seed, the images are the grids decoded, and a model without a prior is a clear
error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import VQModel
from model.prior import PixelCNNPrior, sample
from service.cli import main
from service.client import Client, VQServeError
from tests.support.reference import model_output
from tests.support.servers import Server, stop_server

from .conftest import start_server
from .test_client import KINDS, open_client


@pytest.fixture(scope="module")
def prior_server(tiny_prior_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tiny_prior_checkpoint, tmp_path_factory.mktemp("prior-logs") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def prior(tiny_prior_checkpoint: Path) -> PixelCNNPrior:
    torch.set_num_threads(1)
    return PixelCNNPrior.from_pretrained(tiny_prior_checkpoint / "prior")


@pytest.fixture(scope="module")
def vq(tiny_prior_checkpoint: Path) -> VQModel:
    return VQModel.from_pretrained(tiny_prior_checkpoint).eval()


def decoded(vq: VQModel, grids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model_output(vq.decode_indices(torch.from_numpy(grids).long()))


@pytest.fixture(params=KINDS)
def client(request: pytest.FixtureRequest, prior_server: Server) -> Iterator[Client]:
    with open_client(request.param, prior_server.url, timeout=60) as c:
        yield c


def test_generate_draws_what_the_prior_draws(client: Client, prior: PixelCNNPrior, vq: VQModel) -> None:
    drawn = client.generate(3, label=2, temperature=0.9, seed=21)
    assert drawn.seed == 21
    assert drawn.indices.dtype == np.int32
    expected = sample(prior, 3, label=2, temperature=0.9, seed=21).numpy()
    np.testing.assert_array_equal(drawn.indices, expected)
    assert drawn.images.shape == (3, 8, 8, 3)
    assert np.abs(drawn.images.astype(int) - decoded(vq, expected).astype(int)).max() <= 1
    tail = client.generate(2, label=2, temperature=0.9, seed=21, first_sample=1)
    np.testing.assert_array_equal(tail.indices, expected[1:])
    chosen = client.generate()  # no seed: the server picks one and says which
    np.testing.assert_array_equal(client.generate(seed=chosen.seed).indices, chosen.indices)


def test_complete_keeps_the_unmasked_cells(client: Client, prior: PixelCNNPrior) -> None:
    indices = np.arange(16).reshape(4, 4) * 3
    mask = np.zeros((4, 4), dtype=bool)
    mask[2:, :] = True
    drawn = client.complete(indices, mask, 2, top_k=8, seed=4)
    assert drawn.indices.shape == (2, 4, 4)
    for grid in drawn.indices:
        np.testing.assert_array_equal(grid[~mask], indices[~mask])
    expected = sample(prior, 2, top_k=8, seed=4, indices=torch.from_numpy(indices), mask=torch.from_numpy(mask))
    np.testing.assert_array_equal(drawn.indices, expected.numpy())


def test_without_a_prior_the_client_raises_no_prior(server: Server) -> None:
    with Client(server.url, timeout=30) as plain:
        with pytest.raises(VQServeError) as info:
            plain.generate(2)
        assert (info.value.status, info.value.code) == (422, "no_prior")


def test_cli_generate_remote_and_in_process(
    prior_server: Server, tiny_prior_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    args = ["generate", "--label", "1", "-n", "5", "--seed", "9", "--top-k", "16"]
    assert main([*args, "-o", str(remote), "--url", prior_server.url, "--concurrency", "3"]) == 0
    assert "generated 5 sample(s) (label 1, seed 9)" in capsys.readouterr().out
    assert main([*args, "-o", str(local), "--model-path", str(tiny_prior_checkpoint)]) == 0
    names = sorted(p.name for p in remote.iterdir())
    assert names == [f"{b:05d}.png" for b in range(5)] + ["indices.npy"]
    grids = np.load(remote / "indices.npy")
    # five requests of one sample each (batched on the server), the same five one request of five draws
    with Client(prior_server.url, timeout=60) as client:
        together = client.generate(5, label=1, seed=9, top_k=16)
    np.testing.assert_array_equal(grids, together.indices)
    np.testing.assert_array_equal(np.load(local / "indices.npy"), grids)
    for b in range(5):
        pixels = np.asarray(Image.open(remote / f"{b:05d}.png"))
        np.testing.assert_array_equal(pixels, together.images[b])
        np.testing.assert_array_equal(np.asarray(Image.open(local / f"{b:05d}.png")), pixels)


def test_cli_generate_without_a_prior_is_a_clear_error(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "-n", "2", "-o", str(tmp_path / "a"), "--url", server.url]) == 1
    assert "no_prior" in capsys.readouterr().err
    assert main(["generate", "-n", "2", "-o", str(tmp_path / "b"), "--model-path", str(server.checkpoint)]) == 1
    assert "no_prior" in capsys.readouterr().err
