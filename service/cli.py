"""`nnship serve MODEL[:VERSION]`: check the package, then run `bentoml serve` with the settings."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic.fields import FieldInfo

from nnship.contracts import Manifest
from nnship.errors import NnshipError
from nnship.package import load_package
from nnship.service.settings import (
    SERVE_TOKEN_ENV,
    SERVE_TOKEN_HEADER,
    Settings,
    allowed_range,
    allowed_text,
    api_key_env_named,
    choices,
    kind_of,
    shown_default,
    variable,
)

log = logging.getLogger(__name__)
SERVICE = "nnship.service.service:NnshipService"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # all drain
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_MARGIN_S = 10.0  # after the grace period: time for the workers' shutdown and the arbiter


OWN_FLAGS = {"model"}  # settings with no derived flag: the model is the positional argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting, derived from its field; a flag overrides NNSHIP_* only when given."""
    p.add_argument(
        "model", help="MODEL[:VERSION] in the BentoML model store (or a package directory)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    for name, info in Settings.model_fields.items():
        if name not in OWN_FLAGS:
            add_setting_flag(p, name, info)


def add_setting_flag(p: argparse.ArgumentParser, name: str, info: FieldInfo) -> None:
    """`--NAME-WITH-DASHES` typed, described and constrained as the setting's field."""
    flag = "--" + name.replace("_", "-")
    help_text = f"{info.description} ({variable(name)}; default {shown_default(info)}"
    kind = kind_of(info)
    if allowed_range(info) is not None:
        help_text += f"; {allowed_text(info)}"
    help_text = (help_text + ")").replace("%", "%%")
    if kind is bool:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif choices(info):
        p.add_argument(flag, choices=choices(info), help=help_text)
    else:
        p.add_argument(flag, type=kind, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings, with the flags that were given on top."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    return Settings.from_env().replace(**given)


def check_port_free(host: str, port: int) -> None:
    """Refuse a bad host or port, or a port another server listens on, before anything starts."""
    if not 1 <= port <= 65535:
        raise NnshipError(f"--port {port} is out of range: allowed is an integer from 1 to 65535")
    if not host or not host.isprintable():
        raise NnshipError(f"--host {host!r} is not a host name or IP address")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise NnshipError(f"port {port} is in use") from e
            raise NnshipError(f"cannot listen on {host}:{port}: {e.strerror}") from e
        except (ValueError, UnicodeError) as e:  # an over-long or undecodable name
            raise NnshipError(f"--host {host!r} is not a host name or IP address ({e})") from e


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    explicit_key = args.api_key_env is not None or api_key_env_named()
    settings.required_api_key(explicit_key)
    check_port_free(args.host, args.port)
    package = load_package(settings.model)  # one-line refusal of a missing or tampered file
    if settings.variant != "auto":
        package.variant_path(settings.variant)  # one line naming the shipped variants
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        **settings.to_env(),
        "BENTOML_DO_NOT_TRACK": "true",
        SERVE_TOKEN_ENV: token,
    }
    if not explicit_key:  # the default variable: no key means a warning, not an error
        env.pop(variable("api_key_env"))
    grace = str(math.ceil(settings.grace_s))
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host, "--port"]
    cmd += [str(args.port), "--timeout-graceful-shutdown", grace]
    url = (
        f"http://[{args.host}]:{args.port}"
        if ":" in args.host
        else f"http://{args.host}:{args.port}"
    )
    with Supervisor(cmd, env, settings.grace_s) as server:
        if server.wait_ready(url, settings.api_key(), token):
            print(
                f"\nnnship: serving {settings.model} at {url} (OpenAPI: {url}/docs.json, "
                f"metrics: {url}/metrics)"
            )
            print("try:  " + example_curl(url, package.manifest, settings), flush=True)
        return server.wait()


def die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook (Linux) that has the kernel SIGTERM the child when this process dies.

    The child runs in its own session, so a SIGKILL or a hang-up of this process would otherwise
    leave the server running. The kernel signals when the forking thread exits: the main one here.
    """
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the hook was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


class Supervisor:
    """`bentoml serve` in its own session: SIGTERM, SIGINT, SIGHUP and SIGQUIT drain it, and no
    process outlives it (if this process is killed outright, the kernel stops the server)."""

    def __init__(self, cmd: list[str], env: dict[str, str], grace_s: float) -> None:
        self.cmd, self.env, self.grace_s = cmd, env, grace_s
        self.proc: subprocess.Popen | None = None
        self.stop_by: float | None = None  # monotonic deadline once a stop was asked for
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Supervisor:
        for sig in STOP_SIGNALS:  # before the start: a signal in between must not orphan the server
            self._previous[sig] = signal.signal(sig, self._on_signal)
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, start_new_session=True, preexec_fn=die_with_parent()
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill_group()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """Ask the server to drain: it stops accepting and finishes the requests in flight."""
        if self.stop_by is None:
            log.info("%s: draining (up to %g s)", signal.Signals(signum).name, self.grace_s)
            self.stop_by = time.monotonic() + self.grace_s + STOP_MARGIN_S
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_ready(self, url: str, key: str, token: str) -> bool:
        """Poll /readyz until this process's own server answers; False if it exits or is stopped first."""
        from nnship.probe import wait_ready

        assert self.proc is not None
        proc = self.proc

        def ours(headers: Any) -> None:
            if headers.get(SERVE_TOKEN_HEADER) != token:
                raise NnshipError(f"another server answers at {url}; nnship's did not start")

        # False: the server exited (it said why) or a stop was asked for
        return wait_ready(
            f"{url}/readyz",
            timeout=math.inf,
            headers={"x-api-key": key},
            alive=lambda: proc.poll() is None and self.stop_by is None,
            check=ours,
            interval=0.5,
        )

    def wait(self) -> int:
        """The server's exit code; past the grace period (plus a margin) its processes are killed."""
        assert self.proc is not None
        while True:
            try:
                code = self.proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.stop_by is not None and time.monotonic() > self.stop_by:
                    self._kill_group()
                    raise NnshipError(
                        f"the service did not stop within {self.grace_s:g} s; killed"
                    ) from None
        self._kill_group()
        return 0 if self.stop_by is not None and code in (0, -signal.SIGTERM) else code

    def _kill_group(self) -> None:
        """Kill whatever is left of the server's session (workers whose arbiter died)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()


def example_curl(url: str, manifest: Manifest, settings: Settings) -> str:
    """A curl line, pasteable into a POSIX shell, with one typical row (each feature's
    training-split median): a record keyed by feature name for tabular models."""
    import numpy as np

    spec = manifest.input
    row = np.round([s.quantiles.q50 for s in spec.stats], 3)
    if len(spec.shape) == 1 and not manifest.takes_sequences:
        example: Any = dict(zip(spec.feature_names, row.tolist(), strict=True))
    else:
        if manifest.takes_sequences:  # stats are per feature: repeat them over the time steps
            row = np.tile(row, (spec.shape[0], 1))
        example = row.reshape(spec.shape).tolist()
    body = json.dumps({"inputs": [example]}, separators=(",", ":"))
    key = f' -H "Authorization: Bearer ${settings.api_key_env}"' if settings.api_key() else ""
    return (
        f"curl -s -X POST {shlex.quote(url + '/predict')} -H 'Content-Type: application/json'{key} "
        f"-d {shlex.quote(body)}"
    )


def main(argv: list[str] | None = None) -> int:
    from nnship.runner import run_guarded

    p = argparse.ArgumentParser(
        prog="nnship serve", description="Serve a model package with BentoML."
    )
    add_arguments(p)
    return run_guarded(run, p.parse_args(argv))
