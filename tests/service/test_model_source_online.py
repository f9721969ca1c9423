"""Hub repo ids online: huggingface_hub downloading from a local server that speaks the Hub's protocol.

This machine cannot reach the Hub; `LocalHub` (tests/support/hub.py) answers on 127.0.0.1 what the Hub answers to
`hf_hub_download` and `hf download`, and the processes find it through `HF_ENDPOINT`, as they would find a mirror.
The pipeline repo `org/pipeline` holds more than the VQModel (a `model_index.json`, a `unet`, and the VQModel's
weights both as safetensors and as `.bin`), so that what is downloaded shows what the service asks for.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from model.checkpoint import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME, load_state_dict
from service.engine import ModelLoadError
from tests.support.constants import ROOT
from tests.support.hub import LocalHub, checkpoint_files, fake_commit, offline_env, offline_in_process
from tests.support.servers import app_client, free_port, serving

pytestmark = pytest.mark.timeout(240)

PIPELINE = fake_commit("pipeline")
LEGACY = fake_commit("legacy")
TOKEN = "hf_test_token"


def bin_bytes(checkpoint: Path, tmp: Path) -> bytes:
    torch.save(load_state_dict(checkpoint), tmp / BIN_NAME)
    return (tmp / BIN_NAME).read_bytes()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[LocalHub]:
    legacy_bin = bin_bytes(tiny_checkpoint, tmp_path_factory.mktemp("bin"))
    pipeline = {
        "model_index.json": b'{"_class_name": "LDMPipeline"}',
        "unet/diffusion_pytorch_model.safetensors": b"\0" * 4096,
        f"vqvae/{BIN_NAME}": legacy_bin,
        **checkpoint_files(tiny_checkpoint, "vqvae"),
    }
    legacy = {f"movq/{CONFIG_NAME}": (tiny_checkpoint / CONFIG_NAME).read_bytes(), f"movq/{BIN_NAME}": legacy_bin}
    repos = {"org/pipeline": {PIPELINE: pipeline}, "org/legacy": {LEGACY: legacy}, "org/private": {LEGACY: legacy}}
    refs = {"org/pipeline": {"main": PIPELINE}, "org/legacy": {"main": LEGACY}, "org/private": {"main": LEGACY}}
    with LocalHub(repos, refs, private={"org/private": TOKEN}) as running:
        yield running


def online_env(hf_home: Path, hub: LocalHub, token: str = "") -> dict[str, str]:
    """The cache under `hf_home`, the local Hub as the endpoint, and `token` as HF_TOKEN (none by default)."""
    return {**offline_env(hf_home), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": token}


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_only_the_config_and_the_safetensors_are_downloaded_then_served_offline(hub: LocalHub, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    args = ["--model-path", "org/pipeline", "--model-subfolder", "vqvae", "--torch-threads", "1", "--no-warmup"]
    hub.downloads.clear()
    with serving(args, tmp_path / "online.log", env=online_env(hf_home, hub)) as server:
        info = httpx.get(f"{server.url}/models/default", timeout=10).json()
    assert info["source"] == {"repo": "org/pipeline", "revision": PIPELINE, "ref": "main", "subfolder": "vqvae"}
    assert hub.downloads == [
        f"org/pipeline@{PIPELINE}:vqvae/{CONFIG_NAME}",
        f"org/pipeline@{PIPELINE}:vqvae/{SAFETENSORS_NAME}",
    ]
    snapshot = hf_home / "hub" / "models--org--pipeline" / "snapshots" / PIPELINE
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == [
        f"vqvae/{CONFIG_NAME}",
        f"vqvae/{SAFETENSORS_NAME}",
    ]

    # the same HF_HOME offline: served from the cache, nothing asked of the Hub
    with serving(args, tmp_path / "offline.log", env=offline_env(hf_home)) as server:
        assert httpx.get(f"{server.url}/models/default", timeout=10).json()["source"] == info["source"]
    assert len(hub.downloads) == 2


def test_a_repo_without_safetensors_gets_its_bin(hub: LocalHub, tmp_path: Path) -> None:
    hub.downloads.clear()
    result = cli(
        ["info", "--device", "cpu", "--model-path", "org/legacy", "--model-subfolder", "movq"],
        online_env(tmp_path, hub),
    )
    assert result.returncode == 0, result.stderr
    (info,) = json.loads(result.stdout)
    assert info["source"] == {"repo": "org/legacy", "revision": LEGACY, "ref": "main", "subfolder": "movq"}
    assert hub.downloads == [f"org/legacy@{LEGACY}:movq/{CONFIG_NAME}", f"org/legacy@{LEGACY}:movq/{BIN_NAME}"]


@pytest.mark.parametrize(
    ("location", "subfolder", "says"),
    [
        (
            "org/unknown",
            "vqvae",
            "there is no local directory org/unknown, and no Hub repo org/unknown at http://127.0.0.1:",
        ),
        ("org/pipeline@v9", "vqvae", "the Hub repo org/pipeline has no revision 'v9'"),
        ("org/pipeline", "movq", f"org/pipeline@main has no movq/{CONFIG_NAME}"),
        ("org/pipeline", None, f"org/pipeline@main has no {CONFIG_NAME} (is the VQModel in a subfolder?"),
    ],
    ids=["unknown-repo", "unknown-revision", "missing-subfolder", "no-subfolder"],
)
def test_what_the_hub_refuses_is_one_line_and_exit_2(
    hub: LocalHub, tmp_path: Path, location: str, subfolder: str | None, says: str
) -> None:
    args = [
        "info",
        "--device",
        "cpu",
        "--model-path",
        location,
        *(["--model-subfolder", subfolder] if subfolder else []),
    ]
    result = cli(args, online_env(tmp_path, hub))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "Traceback" not in result.stderr


def test_the_command_the_offline_failure_gives_fills_the_cache(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline with an empty cache: the one line names an `hf download` command; run as given (against the local
    Hub), it fetches what the service then serves offline."""
    hf_home = tmp_path / "hf"
    offline_in_process(monkeypatch, hf_home)
    with pytest.raises(ModelLoadError) as failure, app_client(None, model_path="org/pipeline", model_subfolder="vqvae"):
        pass
    command = shlex.split(str(failure.value).rsplit("`", 2)[-2])
    assert command[:2] == ["hf", "download"]
    fetched = subprocess.run(
        [str(Path(sys.executable).parent / "hf"), *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **online_env(hf_home, hub)},
    )
    assert fetched.returncode == 0, fetched.stderr
    with app_client(None, model_path="org/pipeline", model_subfolder="vqvae", torch_threads=1) as client:
        info = client.get("/models/default").json()
    assert info["source"] == {"repo": "org/pipeline", "revision": PIPELINE, "ref": "main", "subfolder": "vqvae"}


def test_a_private_repo_needs_hf_token(hub: LocalHub, tmp_path: Path) -> None:
    args = ["info", "--device", "cpu", "--model-path", "org/private", "--model-subfolder", "movq"]
    refused = cli(args, online_env(tmp_path / "without", hub))
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "no Hub repo org/private" in line
    assert "(or it is private: set HF_TOKEN to a token that may read it)" in line
    allowed = cli(args, online_env(tmp_path / "with", hub, token=TOKEN))
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)[0]["source"]["repo"] == "org/private"


@pytest.mark.slow  # huggingface_hub's own retries: about 25 s per file before it gives up
def test_an_unreachable_hub_with_nothing_cached_is_one_line(tmp_path: Path) -> None:
    """Connection refused (nothing listens at HF_ENDPOINT): huggingface_hub retries, warning each time; the service
    holds those warnings back and prints only its one line, with the command that fetches the files."""
    env = {**offline_env(tmp_path), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    result = cli(["info", "--device", "cpu", "--model-path", "org/pipeline", "--model-subfolder", "vqvae"], env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot be reached; fetch it where the Hub is reachable" in line
    assert "hf download org/pipeline --include 'vqvae/config.json'" in line
