"""`python -m service`: flags mirroring every VQSERVE_* setting, then one uvicorn process with graceful shutdown.

uvicorn runs `middleware.BoundedHttpToolsProtocol`: open connections, the time and the size of every request's
line and headers are bounded (VQSERVE_MAX_CONNECTIONS, VQSERVE_HEADER_TIMEOUT_S, VQSERVE_MAX_HEADER_BYTES,
VQSERVE_MAX_HEADERS) before a request reaches the app.

Flags override environment variables, which override defaults. On SIGTERM/SIGINT readiness turns 503 and new
inference requests are answered 503 at once; after VQSERVE_SHUTDOWN_DELAY_S the listener closes, admitted
requests finish within VQSERVE_GRACEFUL_TIMEOUT_S, and the process exits 0. A second signal exits at once
(code 128 + signal), as uvicorn and Ray Serve do on a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import resource
import sys
import threading
import types
import typing
from typing import Any

# Before torch loads OpenMP: threads that wait for work sleep instead of spinning. On a 2-core machine where codec
# threads or a neighbour process hold a core, spinning intra-op threads made one 256x256 reconstruct 6x slower
# (bench/README.md, "Where the time goes"). An OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uvicorn  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from .app import create_app  # noqa: E402
from .engine import ModelLoadError, check_checkpoint, check_precision  # noqa: E402
from .logs import configure_logging  # noqa: E402
from .middleware import BoundedHttpToolsProtocol, ConnectionLimits  # noqa: E402
from .runtime import Services  # noqa: E402
from .settings import Settings, default_model_path  # noqa: E402

logger = logging.getLogger("vqserve")
_OWN_FILES = 256  # files the process holds besides client sockets: libraries, the listener, logs, thread pools


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting: `max_queue` -> `--max-queue`; list settings take a comma list or repeat."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve VQModel autoencoders over HTTP. Every flag is also an environment variable VQSERVE_<NAME>.",
    )
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"VQSERVE_{name.upper()}"
        default = field.get_default(call_default_factory=True)
        help_text = f"env {env}; default {default!r}"
        if name == "model_path":  # None means the shipped checkpoint, unless --models names the models
            help_text = f"env {env}; default the shipped checkpoint ({default_model_path()}) unless --models is set"
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif origin is list or (typing.get_origin(typing.get_args(annotation)[0]) is list if origin else False):
            extra = ["--model"] if name == "models" else []
            parser.add_argument(
                flag, *extra, action="append", default=argparse.SUPPRESS, help=help_text + "; comma list or repeated"
            )
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(annotation), default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=_scalar_type(annotation), default=argparse.SUPPRESS, help=help_text)
    return parser


def _scalar_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) else annotation
    return base if base in (int, float) else str


def settings_from_args(argv: list[str] | None = None) -> Settings:
    given = vars(build_parser().parse_args(argv))
    for name, value in list(given.items()):
        if isinstance(value, list):
            given[name] = ",".join(value)
    return Settings(**given)


class GracefulServer(uvicorn.Server):
    """Flips readiness on the first signal, then lets uvicorn drain; exits 0 instead of re-raising the signal."""

    def __init__(self, config: uvicorn.Config, services: Services, delay_s: float) -> None:
        super().__init__(config)
        self.services = services
        self.delay_s = delay_s
        self._signalled = False

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        if self._signalled:
            # a second signal means "now": skip the drain (admitted work is lost) and exit 128 + signal
            logger.warning("signal %d again: exiting at once without draining", sig)
            logging.shutdown()
            os._exit(128 + sig)
        self._signalled = True
        self.services.start_draining()
        logger.info("signal %d: draining", sig)
        if self.delay_s > 0:
            threading.Timer(self.delay_s, self._stop, (sig, frame)).start()
        else:
            self._stop(sig, frame)

    def _stop(self, sig: int, frame: types.FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after a graceful stop (exit 143); a drained stop is a clean exit
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """One uvicorn process serving `app` with the connection bounds of `settings` (see BoundedHttpToolsProtocol)."""
    limits = ConnectionLimits(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=BoundedHttpToolsProtocol.with_limits(limits),
        workers=1,
        log_config=None,
        access_log=False,
        # whole seconds for uvicorn: rounded up, so that 0.5 is a bound too (0 leaves in-flight requests unbounded)
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s) or None,
        lifespan="on",
    )


def fit_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit (up to the hard one) so that `max_connections` sockets fit beside the files
    the process itself holds; warn when the hard limit is lower (accept would then fail before the bound)."""
    wanted = max_connections + _OWN_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        logger.warning(
            "open-file limit %d is below VQSERVE_MAX_CONNECTIONS + %d = %d; connections beyond it fail at accept",
            raised,
            _OWN_FILES,
            wanted,
        )


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)  # noqa: T201 - before logging exists
        return 2
    configure_logging(settings.log_level)
    try:  # before uvicorn starts: a clear line and exit 2, not a lifespan traceback
        for spec in settings.model_specs():
            check_checkpoint(spec)
        check_precision(settings)  # VQSERVE_DEVICE / VQSERVE_DECODER_DTYPE that cannot run on this machine
    except ModelLoadError as exc:
        logger.error("%s", exc)
        return 2
    fit_open_files(settings.max_connections)
    app = create_app(settings)
    server = GracefulServer(uvicorn_config(app, settings), app.state.services, settings.shutdown_delay_s)
    server.run()
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
