"""Every shell and Python example of README.md runs as written against a real server (`tests/support/readme.py`).

One `python -m service` with the shipped default model on 127.0.0.1 and a free port; the examples run in README
order in one scratch directory (the first make `cat.png`, later ones read it), each bounded in time, and each must
exit 0. A block the suite cannot run carries a `<!-- not run: why -->` marker; the count of those is checked, so a
marker is a visible decision, not a way for an example to drift. Examples added to README.md are picked up here
without any change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.constants import WEIGHTS
from tests.support.readme import Example, examples, for_server, prepare_workdir, run_example
from tests.support.servers import Server, serving

EXAMPLES = examples()
RUN = [example for example in EXAMPLES if example.not_run is None]
NOT_RUN = [example for example in EXAMPLES if example.not_run is not None]
# Blocks that start servers (`make serve`, `python -m service`, `vqserve serve`) or need what the suite has not (a
# downloaded third-party checkpoint, the Hugging Face Hub): raise this only for such a block.
MAX_NOT_RUN = 7
TIMEOUT_S = 240  # one example; the longest (the endpoints block: ~20 requests on the default model) takes ~30 s


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shipped models as README's examples ask for them (`VQSERVE_MODELS=default=...,digits=... make serve`),
    on a free port, CPU, no warm-up."""
    log = tmp_path_factory.mktemp("readme-server") / "server.log"
    models = f"default={WEIGHTS / 'default'},digits={WEIGHTS / 'digits'}"
    with serving(["--device", "cpu", "--no-warmup", "--models", models], log, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("readme-examples")
    prepare_workdir(directory)
    return directory


def test_the_readme_has_examples_and_few_are_not_run() -> None:
    assert len(RUN) >= 8, [example.name for example in EXAMPLES]
    assert {example.language for example in RUN} == {"bash", "python"}
    assert len(NOT_RUN) <= MAX_NOT_RUN, [(example.name, example.not_run) for example in NOT_RUN]
    for example in NOT_RUN:
        assert len(example.not_run or "") > 3, example.name  # a reason, not a bare marker


def test_markers_and_rewrites_are_what_the_docs_say() -> None:
    """The parser and the port rewrite the test relies on, on a README-shaped text."""
    text = (
        "intro\n\n<!-- not run: starts a server -->\n```bash\nmake serve\n```\n\n"
        "```python\nprint(1)\n```\n\n```json\n{}\n```\n"
    )
    found = examples(text)
    assert [(e.language, e.not_run, e.line) for e in found] == [("bash", "starts a server", 4), ("python", None, 8)]
    assert for_server("curl localhost:8000/x http://127.0.0.1:8000 localhost:80001", 5555) == (
        "curl localhost:5555/x http://127.0.0.1:5555 localhost:80001"
    )


@pytest.mark.parametrize("example", RUN, ids=[example.name for example in RUN])
def test_readme_example_runs_as_written(example: Example, readme_server: Server, workdir: Path) -> None:
    result = run_example(example, workdir, readme_server.url, TIMEOUT_S)
    assert result.returncode == 0, (
        f"{example.name} exited {result.returncode}\n--- stdout (end)\n{result.stdout[-3000:]}\n"
        f"--- stderr (end)\n{result.stderr[-3000:]}\n--- server log (end)\n{readme_server.log_text()[-2000:]}"
    )
