"""Hugging Face Hub repo ids as model paths, resolved by huggingface_hub itself from a cache the test populates.

This machine cannot reach the Hub, so every test runs offline (`HF_HUB_OFFLINE=1`) against a cache laid out as `hf
download` leaves it (`tests/support/hub.py`): `org/tiny` has the tiny checkpoint under `vqvae` at the commit
`main` points at, and a 32-code variant at the commit of the tag `v1`; `org/rootless` keeps its checkpoint at the
repo root; `org/binonly` has only a `.bin` (read with `torch.load(weights_only=True)`) under `movq`. The codebook
size served tells which snapshot's weights were loaded, and loading is strict, so a config and weights of two
different snapshots would not load at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from model.checkpoint import BIN_NAME, CONFIG_NAME, load_state_dict
from service.cli import main as cli_main
from service.engine import ModelLoadError
from service.model_source import parse_hub_id
from tests.support.checkpoints import TINY_RGB, build_checkpoint
from tests.support.constants import PNG, ROOT
from tests.support.hub import add_snapshot, copy_checkpoint, fake_commit, offline_env, offline_in_process
from tests.support.images import png
from tests.support.servers import app_client, free_port, serving

pytestmark = pytest.mark.timeout(180)

MAIN = fake_commit("main")
V1 = fake_commit("v1")
TINY_32_CODES = {**TINY_RGB, "num_vq_embeddings": 32}


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """HF_HOME whose `hub/` cache holds the three repos of the module docstring."""
    home = tmp_path_factory.mktemp("hf-home")
    cache = home / "hub"
    small = build_checkpoint(tmp_path_factory.mktemp("tiny-32"), TINY_32_CODES, seed=3)
    add_snapshot(cache, "org/tiny", MAIN, tiny_checkpoint, "vqvae", refs=["main"])
    add_snapshot(cache, "org/tiny", V1, small, "vqvae", refs=["v1"])
    add_snapshot(cache, "org/rootless", fake_commit("rootless"), small, refs=["main"])
    bin_only = tmp_path_factory.mktemp("bin-only")
    (bin_only / CONFIG_NAME).write_bytes((tiny_checkpoint / CONFIG_NAME).read_bytes())
    torch.save(load_state_dict(tiny_checkpoint), bin_only / BIN_NAME)
    add_snapshot(cache, "org/binonly", fake_commit("binonly"), bin_only, "movq", refs=["main"])
    return home


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, hf_home: Path) -> Path:
    """This process's huggingface_hub on the populated cache, offline."""
    return offline_in_process(monkeypatch, hf_home)


def hub_source(repo: str, commit: str, ref: str, subfolder: str | None) -> dict[str, str | None]:
    return {"repo": repo, "revision": commit, "ref": ref, "subfolder": subfolder}


@pytest.mark.parametrize(
    ("location", "parsed"),
    [
        ("CompVis/ldm-celebahq-256", ("CompVis/ldm-celebahq-256", None)),
        ("kandinsky-community/kandinsky-2-2-decoder@main", ("kandinsky-community/kandinsky-2-2-decoder", "main")),
        ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
        (f"org/name@{V1}", ("org/name", V1)),
        ("/models/org/name", None),  # absolute: a path
        ("./org/name", None),
        ("~/org", None),
        ("name", None),  # repo ids without an org are not taken: too easily a mistyped directory
        ("a/b/c", None),
        ("org/name@", None),
    ],
)
def test_what_counts_as_a_hub_id(location: str, parsed: tuple[str, str | None] | None) -> None:
    assert parse_hub_id(location) == parsed


def test_a_hub_id_with_a_subfolder_loads_from_the_cache(offline: Path, tiny_checkpoint: Path) -> None:
    with app_client(None, model_path="org/tiny", model_subfolder="vqvae", torch_threads=1) as client:
        info = client.get("/models/default").json()
        assert info["source"] == hub_source("org/tiny", MAIN, "main", "vqvae")
        saved = json.loads((tiny_checkpoint / CONFIG_NAME).read_text())
        shared = saved.keys() & info["config"].keys()
        assert {k: info["config"][k] for k in shared} == {k: saved[k] for k in shared}
        assert info["codebook_size"] == 64
        reply = client.post("/encode", content=png(16, 16), headers=PNG)
        assert reply.status_code == 200, reply.text
        assert reply.json()["shape"] == [8, 8]


@pytest.mark.parametrize("revision", ["v1", V1])
def test_a_revision_picks_its_snapshot(offline: Path, revision: str) -> None:
    """A tag (through `refs/v1`) or the commit itself: the 32-code snapshot, not `main`'s."""
    with app_client(None, model_path=f"org/tiny@{revision}", model_subfolder="vqvae", torch_threads=1) as client:
        info = client.get("/models/default").json()
        assert info["source"] == hub_source("org/tiny", V1, revision, "vqvae")
        assert info["codebook_size"] == 32


def test_models_entries_take_hub_ids(offline: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    copy_checkpoint(tiny_checkpoint, local / "vqvae")  # the subfolder setting applies to every entry
    models = f"latest=org/tiny,tagged=org/tiny@v1,local={local}"
    with app_client(None, model_path=None, models=models, model_subfolder="vqvae", torch_threads=1) as client:
        listed = {info["name"]: info for info in client.get("/models").json()["models"]}
    assert listed["latest"]["source"] == hub_source("org/tiny", MAIN, "main", "vqvae")
    assert listed["tagged"]["source"] == hub_source("org/tiny", V1, "v1", "vqvae")
    assert listed["local"]["source"] == {"path": str(local), "subfolder": "vqvae"}
    assert [listed[name]["codebook_size"] for name in ("latest", "tagged", "local")] == [64, 32, 64]


def test_a_repo_without_subfolder_and_a_bin_only_repo_load(offline: Path) -> None:
    with app_client(None, model_path="org/rootless", torch_threads=1) as client:
        info = client.get("/models/default").json()
    assert info["source"] == hub_source("org/rootless", fake_commit("rootless"), "main", None)
    assert info["codebook_size"] == 32
    with app_client(None, model_path="org/binonly", model_subfolder="movq", torch_threads=1) as client:
        info = client.get("/models/default").json()
        assert client.post("/reconstruct", content=png(16, 16), headers=PNG).status_code == 200
    assert info["source"] == hub_source("org/binonly", fake_commit("binonly"), "main", "movq")


def test_a_local_directory_of_the_same_name_wins(
    offline: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hf_home: Path
) -> None:
    """`org/tiny/vqvae` relative to the working directory holds the 32-code model; the cache's `main` has 64."""
    small = hf_home / "hub" / "models--org--tiny" / "snapshots" / V1 / "vqvae"
    copy_checkpoint(small, tmp_path / "org" / "tiny" / "vqvae")
    monkeypatch.chdir(tmp_path)
    with app_client(None, model_path="org/tiny", model_subfolder="vqvae", torch_threads=1) as client:
        info = client.get("/models/default").json()
    assert info["source"] == {"path": str(tmp_path / "org" / "tiny"), "subfolder": "vqvae"}
    assert info["codebook_size"] == 32


@pytest.mark.parametrize(
    ("location", "subfolder", "fetch"),
    [
        ("org/unknown", None, "hf download org/unknown --include 'config.json'"),
        ("org/tiny@v9", "vqvae", "hf download org/tiny --revision v9 --include 'vqvae/config.json'"),
        ("org/tiny", "movq", "hf download org/tiny --include 'movq/config.json'"),
    ],
)
def test_offline_without_the_files_fails_in_one_line(
    offline: Path, location: str, subfolder: str | None, fetch: str
) -> None:
    """An unknown id, a revision or a subfolder the cache lacks: one line that says so and how to fetch it."""
    with pytest.raises(ModelLoadError) as info, app_client(None, model_path=location, model_subfolder=subfolder):
        pass
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model 'default': there is no local directory")
    assert "HF_HUB_OFFLINE is set" in message
    assert str(offline) in message
    assert fetch in message


def test_the_cli_takes_a_hub_id(offline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["info", "--model-path", "org/tiny@v1", "--model-subfolder", "vqvae", "--device", "cpu"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["source"] == hub_source("org/tiny", V1, "v1", "vqvae")


def test_the_service_process_serves_a_hub_id_and_logs_its_source(hf_home: Path, tmp_path: Path) -> None:
    args = ["--model-path", "org/tiny@v1", "--model-subfolder", "vqvae", "--torch-threads", "1", "--no-warmup"]
    with serving(args, tmp_path / "server.log", env=offline_env(hf_home)) as server:
        info = httpx.get(f"{server.url}/models/default", timeout=10).json()
        assert info["source"] == hub_source("org/tiny", V1, "v1", "vqvae")
        logged = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    (line,) = [entry for entry in logged if entry["logger"] == "vqserve.model_source"]
    assert line["msg"].startswith(f"model default: checkpoint Hub repo org/tiny at v1 (commit {V1}), subfolder vqvae")


@pytest.mark.parametrize(
    "command",
    [
        ["service", "--host", "127.0.0.1", "--port", str(free_port())],
        ["service.cli", "info", "--device", "cpu"],
    ],
    ids=["service", "cli"],
)
def test_an_unknown_id_offline_exits_2_with_one_line(hf_home: Path, command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command, "--model-path", "org/unknown"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **offline_env(hf_home)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "there is no local directory org/unknown" in lines[0]
    assert "HF_HUB_OFFLINE is set" in lines[0]
    assert "hf download org/unknown --include 'config.json'" in lines[0]
