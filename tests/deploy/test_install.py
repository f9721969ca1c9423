"""What the image would run, run without a container engine.

The build context is assembled through `.dockerignore`, the venv is built by `deploy/docker/install.sh` (the
builder stage's script) from the pinned lock, and the installed `python -m service` (the image's ENTRYPOINT)
serves a tiny checkpoint on 127.0.0.1 from a directory outside the tree, so nothing is imported from the
checkout. Then a real inference request, the metric names the dashboards need, and a SIGTERM drain.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.deploy.dockerignore import DockerIgnore
from tests.deploy.promql import all_used_names
from tests.support.checkpoints import TINY_RGB_8CH, build_checkpoint
from tests.support.constants import PNG, ROOT
from tests.support.images import png
from tests.support.servers import free_port, launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

INSTALL_TIMEOUT_S = 900
READY_TIMEOUT_S = 180


def _exposed_names(exposition: str) -> set[str]:
    """Series names a scrape can show, from the `# TYPE` lines (present even before any label is used)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in suffixes.get(kind, [""]))
    return names


def _healthcheck_command() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    match = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, flags=re.MULTILINE)
    assert match, "no exec-form HEALTHCHECK in the Dockerfile"
    return list(json.loads(match.group(1)))


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The venv the builder stage makes, from a copy of exactly the build context."""
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    copied = DockerIgnore.from_file(ROOT / ".dockerignore").copy_context(ROOT, context)
    assert "service/__main__.py" in copied
    assert "constraints.txt" in copied
    assert not any(path.startswith((".venv/", "tests/", ".git/")) for path in copied)
    venv = work / "venv"
    result = subprocess.run(
        ["sh", str(context / "deploy/docker/install.sh"), str(venv), str(context)],
        env={**os.environ, "PYTHON": sys.executable},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "vqserve installed:" in result.stdout
    return venv


def test_installed_service_serves_a_checkpoint(installed_venv: Path, tmp_path: Path) -> None:
    checkpoint = build_checkpoint(tmp_path / "ckpt", TINY_RGB_8CH)
    run_dir = tmp_path / "run"  # not the checkout: `python -m` puts the working directory on sys.path
    run_dir.mkdir()
    port = free_port()
    env = {
        "PATH": f"{installed_venv / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "VQSERVE_HOST": "127.0.0.1",
        "VQSERVE_PORT": str(port),
        "VQSERVE_MODEL_PATH": str(checkpoint),
        "VQSERVE_DEVICE": "cpu",
        "VQSERVE_GRACEFUL_TIMEOUT_S": "5",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # the image's ENTRYPOINT, with the image's PATH order and only this environment; ready (or failed with its
    # log) when launch returns
    log = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    process = launch(["python", "-m", "service"], log, base, cwd=run_dir, env=env, timeout_s=READY_TIMEOUT_S).process
    assert process is not None
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            # the image's HEALTHCHECK command, verbatim, with the image's interpreter lookup
            probe = subprocess.run(_healthcheck_command(), env=env, capture_output=True, timeout=30, check=False)
            assert probe.returncode == 0, probe.stderr
            encoded = client.post("/encode", content=png(16, 16), headers=PNG)
            assert encoded.status_code == 200, encoded.text
            assert encoded.json()["shape"] == [8, 8]

            exposition = client.get("/metrics").text
            missing = all_used_names() - _exposed_names(exposition) - {n for n in all_used_names() if "DCGM" in n}
            assert not missing, f"dashboards, alerts or autoscaling query metrics the service lacks: {missing}"

        # what `docker stop` does: SIGTERM, then the drain must finish well within stop_grace_period
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        # and the HEALTHCHECK notices a dead server (it must not pass unconditionally)
        probe = subprocess.run(_healthcheck_command(), env=env, capture_output=True, timeout=30, check=False)
        assert probe.returncode != 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        print(log.read_text()[-3000:])  # noqa: T201  (shown by pytest only when the test fails)


def test_installed_package_serves_without_training_code(installed_venv: Path, tmp_path: Path) -> None:
    """The wheel holds what serving needs: `model/training` stays in the source tree (pyproject.toml), while the
    public names (`from model import VQModel`, `python -m service`, the `vqserve` command) all install."""
    python = str(installed_venv / "bin" / "python")
    env = {"PATH": f"{installed_venv / 'bin'}:{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    code = (
        "import importlib.util, sys\n"
        "from model import VQModel\n"
        "import service.__main__, service.cli\n"
        "print(importlib.util.find_spec('model.training'), 'model.train' in sys.modules)"
    )

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        # from a directory outside the checkout, so only the installed files can be imported
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)

    found = run(python, "-c", code)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.split() == ["None", "False"]
    # the import names the wheel installs: the two the README promises, kept generic on purpose (README, "Import names")
    names = "from importlib.metadata import distribution as d; print(d('vqserve').read_text('top_level.txt'))"
    top_level = run(python, "-c", names)
    assert top_level.returncode == 0, top_level.stderr[-2000:]
    assert sorted(top_level.stdout.split()) == ["model", "service"]
    train = run(python, "-m", "model.train", "--help")
    assert train.returncode != 0
    assert "error: training runs from a checkout" in train.stderr, train.stderr[-2000:]
    assert "Traceback" not in train.stderr
    cli = run("vqserve", "--help")
    assert cli.returncode == 0, cli.stderr[-2000:]
