"""`python -m service`: flags mirroring every VQSERVE_* setting, then one uvicorn process with graceful shutdown.

uvicorn runs `middleware.BoundedHttpToolsProtocol`: open connections, the time and the size of every request's
line and headers are bounded (VQSERVE_MAX_CONNECTIONS, VQSERVE_HEADER_TIMEOUT_S, VQSERVE_MAX_HEADER_BYTES,
VQSERVE_MAX_HEADERS) before a request reaches the app.

Startup, in this order: the settings are checked (a bad one is one `error:` line naming the flag and the variable),
the port is bound, every model is loaded and warmed, then uvicorn listens on that socket and "ready" is logged. A
failure the user can fix (STARTUP_ERRORS: a port in use, a missing or damaged checkpoint, weights that do not fit the
config, a device that is not there) is one line on stderr and exit 2; anything else exits 3 with its traceback.

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
import socket
import sys
import threading
import types
import typing
from typing import TYPE_CHECKING, Any

# Before torch loads OpenMP: threads that wait for work sleep instead of spinning. On a 2-core machine where codec
# threads or a neighbour process hold a core, spinning intra-op threads made one 256x256 reconstruct 6x slower
# (bench/README.md, "Where the time goes"). An OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uvicorn  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from .engine import check_precision  # noqa: E402
from .errors import ModelLoadError, one_line  # noqa: E402
from .logs import configure_logging  # noqa: E402
from .middleware import BoundedHttpToolsProtocol, ConnectionLimits  # noqa: E402
from .settings import Settings, describe_invalid, setting_docs, setting_names  # noqa: E402

if TYPE_CHECKING:  # torch loads with the models, after the settings are checked: a bad flag fails in a second
    from .runtime import Services

logger = logging.getLogger("vqserve")
_OWN_FILES = 256  # files the process holds besides client sockets: libraries, the listener, logs, thread pools


class StartupError(RuntimeError):
    """A startup failure the user can fix (a port in use, ...): its message names the cause and the setting."""


# What `main` reports as one line and exit 2; anything else is a bug: exit 3 with its traceback in the log.
STARTUP_ERRORS: tuple[type[Exception], ...] = (StartupError, ModelLoadError)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, whose errors are one `error:` line (no usage block), as every other startup failure is."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting: `max_queue` -> `--max-queue`; list settings take a comma list or repeat.

    Each flag's help is the setting's description, the text of README's settings table (`setting_docs`). Values
    stay strings here: the settings check them, so a bad flag and a bad variable get the same message."""
    parser = _OneLineParser(
        prog="python -m service",
        description="Serve VQModel autoencoders over HTTP. Every flag is also an environment variable VQSERVE_<NAME>.",
    )
    for doc in setting_docs():
        field = Settings.model_fields[doc.name]
        help_text = _plain(f"{doc.description} (env {doc.env}; default {doc.default})")
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        flag, *aliases = [f for f in doc.flags if not f.startswith("--no-")]
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif origin is list or (typing.get_origin(typing.get_args(annotation)[0]) is list if origin else False):
            parser.add_argument(
                flag, *aliases, action="append", default=argparse.SUPPRESS, help=help_text + "; comma list or repeated"
            )
        elif origin is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(annotation), default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, help=help_text, metavar=doc.name.upper())
    return parser


def _plain(markdown: str) -> str:
    """README's markdown as terminal text: no backticks; `%` escaped for argparse."""
    return markdown.replace("`", "").replace("%", "%%")


def settings_from_args(argv: list[str] | None = None) -> Settings:
    given = vars(build_parser().parse_args(argv))
    for name, value in list(given.items()):
        if isinstance(value, list):
            given[name] = ",".join(value)
    return Settings(**given)


def bind_listener(host: str, port: int) -> socket.socket:
    """The server's socket, bound before any model loads: a port in use fails at once, not after the load, and
    nothing logs "ready" before the address is the server's (uvicorn starts listening on this socket)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT does not block
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"cannot listen on {host}:{port}: {reason}; stop what holds the port or choose another with "
            f"{setting_names('port')} (the address: {setting_names('host')})"
        ) from exc
    return sock


def load_models(services: Services) -> None:
    """Load and warm every model before the server starts (the lifespan then finds them loaded), so that a load
    failure is a `ModelLoadError` here, reported as one line, not a traceback inside uvicorn's lifespan."""
    from .engine import check_checkpoint

    for engine in services.engines.values():
        check_checkpoint(engine.spec)  # every path first: a missing one fails before the others load
    for engine in services.engines.values():
        engine.load()


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

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # listening: what "ready" promises (the lifespan has loaded and warmed every model)
            address = self.servers[0].sockets[0].getsockname() if self.servers else None
            logger.info(
                "ready", extra={"models": list(self.services.engines), "address": list(address) if address else None}
            )

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
    """Start the service. Every startup failure a user can fix is one line on stderr and exit 2 (a bad setting
    before logging exists as `error: ...`, the others as one error log line); an unexpected one exits 3."""
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        print(f"error: {describe_invalid(exc)}", file=sys.stderr)  # noqa: T201 - before logging exists
        return 2
    configure_logging(settings.log_level)
    from .app import create_app

    try:
        check_precision(settings)  # VQSERVE_DEVICE / VQSERVE_DECODER_DTYPE that cannot run on this machine
        listener = bind_listener(settings.host, settings.port)
        fit_open_files(settings.max_connections)
        app = create_app(settings)
        load_models(app.state.services)
    except STARTUP_ERRORS as exc:
        logger.error("%s", one_line(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        logger.exception("startup failed unexpectedly")
        return 3
    server = GracefulServer(uvicorn_config(app, settings), app.state.services, settings.shutdown_delay_s)
    server.run(sockets=[listener])
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
