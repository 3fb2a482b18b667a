"""Start a real `bentoml serve` of the nnship service on a free loopback port, for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nnship.probe import wait_ready


def iris_env(iris_package: dict, **extra: str) -> dict[str, str]:
    """Settings serving the tiny iris test package on one thread, plus NNSHIP_<KEY>=value extras."""
    return {
        "NNSHIP_MODEL": f"iris-served:{iris_package['version']}",
        "NNSHIP_THREADS": "1",
        **{f"NNSHIP_{k.upper()}": v for k, v in extra.items()},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    env: dict[str, str], timeout: float = 90, headers: dict[str, str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """Yields (base URL, the server's output lines so far — refreshed on each read); `headers` go
    with the readiness poll (an API key when the server protects every route)."""
    port = free_port()
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server sets its own
    with (
        tempfile.TemporaryDirectory(prefix="nnship-serve-") as tmp,
        open(Path(tmp) / "serve.log", "w+") as log,
    ):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "nnship.service.service:NnshipService",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server and its workers: one group to kill if they hang
        )
        url = f"http://127.0.0.1:{port}"
        lines: list[str] = []
        try:
            if not wait_ready(
                f"{url}/readyz", timeout=timeout, headers=headers, alive=lambda: proc.poll() is None
            ):
                why = f"exited with {proc.returncode}" if proc.poll() is not None else "not ready"
                raise RuntimeError(
                    f"server {why} in {timeout} s:\n{Path(log.name).read_text()[-3000:]}"
                )
            lines[:] = Path(log.name).read_text().splitlines()
            yield url, lines
        finally:
            proc.terminate()  # BentoML drains and stops its workers
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
            proc.wait()


def missing_tool(why: str) -> None:
    """Skip a test whose system tool is missing here; fail it where the tools are required
    (NNSHIP_TEST_TOOLS=required, as CI sets it after installing them), so CI never skips it."""
    if os.environ.get("NNSHIP_TEST_TOOLS") == "required":
        pytest.fail(f"{why}, and NNSHIP_TEST_TOOLS=required")
    pytest.skip(why)
