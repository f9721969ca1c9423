"""Where a model's checkpoint comes from: a local directory, or a Hugging Face Hub repo id fetched into its cache.

`--model-path` (and each `VQSERVE_MODELS` entry) names a directory. A value that is no existing path but has the
shape of a Hub repo id, `org/name` or `org/name@revision` (a branch, tag or commit), is resolved through
`huggingface_hub`, so that the checkpoints users name the way diffusers' `from_pretrained("org/name")` does are
served as they are. Only `config.json` and the weights of the subfolder are fetched (the safetensors file, else the
`.bin`, which `model.checkpoint` reads with `torch.load(weights_only=True)`), into huggingface_hub's standard cache
(`HF_HOME`, `HF_HUB_CACHE`), pinned to the commit the revision resolved to. huggingface_hub itself reads
`HF_HUB_OFFLINE`, `HF_TOKEN` and `HF_ENDPOINT`: the service passes none of them, so every Hub tool on the machine
(`hf download`, diffusers) shares one cache and one configuration.

Every failure is one line naming the model, the repo and what to do (`ModelSourceError`); offline with nothing
cached, that is the `hf download` command that fills the cache.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from model.checkpoint import BIN_NAME, CONFIG_NAME, SAFETENSORS_NAME

from .facts import HubSource, LocalSource, ModelSource
from .settings import ModelSpec

logger = logging.getLogger("vqserve.model_source")

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_ID_RE = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[^@\s]+))?$")
DEFAULT_REVISION = "main"


class ModelSourceError(RuntimeError):
    """A model location that names no local checkpoint and no Hub snapshot that can be had; one line."""


def parse_hub_id(location: str) -> tuple[str, str | None] | None:
    """`(repo, revision)` when `location` has the shape `org/name[@revision]`, else None (a local path)."""
    match = _HUB_ID_RE.match(location)
    return (match["repo"], match["revision"]) if match else None


def resolve(spec: ModelSpec) -> tuple[ModelSpec, ModelSource]:
    """The local checkpoint directory of `spec` and where it came from.

    An existing path wins over a repo id of the same name; a path that exists nowhere and does not look like a repo
    id is returned as it is, so that the checkpoint check names it. A repo id is fetched, or found in the cache.
    """
    hub_id = None if spec.path.exists() else parse_hub_id(str(spec.path))
    if hub_id is None:
        source: ModelSource = LocalSource(str(spec.path.absolute()), spec.subfolder)
        logger.debug("model %s: checkpoint %s", spec.name, source.describe(), extra={"source": source})
        return spec, source
    repo, revision = hub_id
    snapshot, commit = fetch(spec.name, repo, revision, spec.subfolder)
    hub = HubSource(repo, commit, revision or DEFAULT_REVISION, spec.subfolder)
    logger.info("model %s: checkpoint %s, cached at %s", spec.name, hub.describe(), snapshot, extra={"source": hub})
    return ModelSpec(spec.name, snapshot, spec.subfolder), hub


def fetch(name: str, repo: str, revision: str | None, subfolder: str | None) -> tuple[Path, str]:
    """`(snapshot directory, commit)` of `repo` at `revision` holding `subfolder`'s config and weights.

    The config is asked for first: its path in the cache (`snapshots/<commit>/...`) names the commit the revision
    resolved to, and the weights are then asked for at that commit, so that a branch that moves meanwhile cannot
    mix two commits. The safetensors file is preferred; the `.bin` is fetched only when the repo (or, offline, the
    cache) has no safetensors file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    wanted = f"{prefix}{CONFIG_NAME}"
    with _held_hub_logs() as held:
        try:
            config = Path(hf_hub_download(repo, wanted, revision=revision))
            snapshot = config.parents[len(PurePosixPath(prefix).parts)]
            wanted = f"{prefix}{SAFETENSORS_NAME} or {BIN_NAME}"
            try:
                hf_hub_download(repo, prefix + SAFETENSORS_NAME, revision=snapshot.name)
            except EntryNotFoundError:  # not in the repo, or (offline) not in the cache: the .bin then
                hf_hub_download(repo, prefix + BIN_NAME, revision=snapshot.name)
        except Exception as exc:
            message = hub_error_message(exc, repo, revision, subfolder, wanted)
            if message is None:
                raise
            held.clear()  # the retries that led here: the one line says what they found
            raise ModelSourceError(f"model {name!r}: {message}") from exc
    return snapshot, snapshot.name


@contextmanager
def _held_hub_logs() -> Iterator[list[logging.LogRecord]]:
    """Hold huggingface_hub's log records (its retry warnings) while fetching, and log what is left in the list
    afterwards through the service's handlers. Its own plain stderr handler is removed: the service writes JSON
    lines only, and a failure is one line (`fetch` clears the list first)."""
    hub_logger = logging.getLogger("huggingface_hub")
    for handler in list(hub_logger.handlers):
        hub_logger.removeHandler(handler)
    held: list[logging.LogRecord] = []
    keep = _Keep(held)
    hub_logger.addHandler(keep)
    hub_logger.propagate = False
    try:
        yield held
    finally:
        hub_logger.removeHandler(keep)
        hub_logger.propagate = True
        for record in held:
            hub_logger.handle(record)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fetch_command(repo: str, revision: str | None, subfolder: str | None) -> str:
    """The `hf download` command that puts what `fetch` needs into the cache."""
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    at = f" --revision {revision}" if revision else ""
    return f"hf download {repo}{at} --include '{prefix}{CONFIG_NAME}' --include '{prefix}diffusion_pytorch_model.*'"


def hub_error_message(
    exc: Exception, repo: str, revision: str | None, subfolder: str | None, wanted: str
) -> str | None:
    """One line for one of huggingface_hub's exceptions (theirs span lines, with request ids); None for others."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo}@{revision or DEFAULT_REVISION}"
    no_directory = f"there is no local directory {repo}{f'@{revision}' if revision else ''}, and"
    if isinstance(exc, GatedRepoError):
        return f"the Hub repo {repo} is gated: accept its terms on the Hub and set HF_TOKEN to a token of that account"
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{no_directory} no Hub repo {repo} at {constants.ENDPOINT} "
            "(or it is private: set HF_TOKEN to a token that may read it)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"the Hub repo {repo} has no revision {revision or DEFAULT_REVISION!r}"
    if isinstance(exc, RemoteEntryNotFoundError):
        hint = "" if subfolder else " (is the VQModel in a subfolder? set VQSERVE_MODEL_SUBFOLDER / --model-subfolder)"
        return f"{at} has no {wanted}{hint}"
    if isinstance(exc, LocalEntryNotFoundError):
        why = (
            "HF_HUB_OFFLINE is set"
            if constants.is_offline_mode()
            else f"the Hub at {constants.ENDPOINT} cannot be reached"
        )
        return (
            f"{no_directory} {at} has no {wanted} in the Hugging Face cache {constants.HF_HUB_CACHE} and {why}; "
            f"fetch it where the Hub is reachable, into the same HF_HOME, with "
            f"`{fetch_command(repo, revision, subfolder)}`"
        )
    if isinstance(exc, HFValidationError):
        return f"{repo} is not a valid Hub repo id: {_first_line(exc)}"
    if isinstance(exc, ValueError):  # e.g. a subfolder that leaves the repo (`../x`)
        return f"cannot fetch {wanted} of {at}: {_first_line(exc)}"
    if isinstance(exc, HfHubHTTPError):
        return f"the Hub at {constants.ENDPOINT} refused {at}: {_first_line(exc)}"
    if isinstance(exc, OSError):
        return f"cannot fetch {at} into the Hugging Face cache {constants.HF_HUB_CACHE}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
