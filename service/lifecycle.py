"""The service's process lifecycle under `bentoml serve`: one start-up check in the main process,
a worker that cannot start stops the whole server (no restart loop), SIGTERM/SIGINT stop accepting
before the drain, and `nnship serve` recognises its own server by a start-up token."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import bentoml

from nnship.errors import NnshipError
from nnship.package import load_package
from nnship.service import connections
from nnship.service.settings import SERVE_TOKEN_HEADER, Settings, api_key_env_named

log = logging.getLogger(__name__)
ARBITER_ENV = "NNSHIP_ARBITER_PID"  # set by `bentoml serve`'s main process for its workers


def fail(e: NnshipError) -> None:
    """One line on stderr and exit 2: bad settings or a bad model are not bugs in the server."""
    print(f"nnship: error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def in_serve_main_process() -> bool:
    """True in `bentoml serve`'s main process (the arbiter, before it starts any worker)."""
    import click

    ctx = click.get_current_context(silent=True)
    return (
        ctx is not None
        and ctx.command.name == "serve"
        and bentoml.server_context.worker_index is None
    )


def preflight(settings: Settings) -> None:
    """Refuse a missing key, a bad model or variant once, before workers that would fail forever."""
    try:
        settings.required_api_key(api_key_env_named())
        package = load_package(settings.model)
        if settings.variant != "auto":
            package.variant_path(settings.variant)
    except NnshipError as e:
        fail(e)
    if not settings.api_key():
        log.warning(
            "authentication is off: %s is unset or empty, so every route answers without a key",
            settings.api_key_env,
        )
    os.environ[ARBITER_ENV] = str(os.getpid())  # the workers inherit it
    signal.signal(signal.SIGUSR2, _on_worker_failure)


def _on_worker_failure(_signum: int, _frame: Any) -> None:
    """A worker could not start: stop the whole server (circus quits on SIGTERM), then exit 2."""
    atexit.register(os._exit, 2)
    os.kill(os.getpid(), signal.SIGTERM)


def worker_failed(e: Exception) -> None:
    """A worker that cannot start: one `nnship: error:` line (no traceback), stop the server, exit 2."""
    message = str(e) if isinstance(e, NnshipError) else f"start-up failed: {type(e).__name__}: {e}"
    log.error("nnship: error: %s", " ".join(message.split()))
    log.debug("start-up failure", exc_info=e)
    stop_server()
    logging.shutdown()
    os._exit(2)  # a bad model is not a bug in the server: no traceback, no respawn


def stop_server() -> None:
    """From a worker that cannot start: ask `bentoml serve`'s main process to stop, not respawn it."""
    if os.environ.get(ARBITER_ENV) == str(os.getppid()):
        os.kill(os.getppid(), signal.SIGUSR2)


def listening_fd() -> int | None:
    """The listening socket a `bentoml serve` worker was handed (`--fd N`), if this is one."""
    if bentoml.server_context.worker_index is None or "--fd" not in sys.argv:
        return None
    return int(sys.argv[sys.argv.index("--fd") + 1])


def refuse_new_connections_on_stop(fd: int) -> None:
    """On SIGTERM/SIGINT stop the shared listening socket before draining, so that new
    connections are refused at once instead of queueing unanswered until the server exits."""
    loop = asyncio.get_running_loop()

    def stop_listening() -> None:
        loop.remove_reader(fd)  # uvicorn's accept callback on this very descriptor
        connections.begin_drain()  # answers from now on close their keep-alive connections
        # Linux: the socket, shared with the arbiter and the other workers, stops listening
        with (
            contextlib.suppress(OSError),
            socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as s,
        ):
            s.shutdown(socket.SHUT_RD)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)  # uvicorn's: starts the graceful shutdown

        def on_stop(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(stop_listening)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, on_stop)


class ServeToken:
    """Marks /readyz answers with `nnship serve`'s start-up token, so it knows its own server."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.header = app, (SERVE_TOKEN_HEADER.encode(), token.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != "/readyz":
            await self.app(scope, receive, send)
            return

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, _send)
