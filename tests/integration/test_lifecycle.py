"""Start-up and shutdown as an operator meets them: `nnship serve` and `bentoml serve` subprocesses."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from nnship.service.cli import Supervisor
from tests.server import free_port

ROW = [5.1, 3.5, 1.4, 0.2]
NNSHIP_SERVE = [sys.executable, "-m", "nnship.cli", "serve"]
BENTOML_SERVE = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without NNSHIP_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNSHIP_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the server sets its own
    return {**env, "BENTOML_DO_NOT_TRACK": "true", **extra}


OWN_GROUP = {"start_new_session": True}  # whatever happens, the test can kill all it started


def kill_all(proc: subprocess.Popen, procs: list[psutil.Process]) -> None:
    """Kill what is left of a process started with OWN_GROUP and of the processes seen under it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    proc.wait()


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (zombies count as gone)."""
    running = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                running.append(p)
    return running


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_serving(proc: subprocess.Popen, out: Path, timeout: float = 90) -> None:
    """Until `nnship serve` prints its serving line."""
    deadline = time.monotonic() + timeout
    while "nnship: serving" not in out.read_text():
        assert proc.poll() is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, out.read_text()[-3000:]
        time.sleep(0.2)


def predict(url: str) -> tuple[str, int]:
    """One request on its own connection: ('ok', 200), ('refused', 0) or ('broken', 0)."""
    try:
        r = httpx.post(f"{url}/predict", json={"inputs": [ROW]}, timeout=60)
    except httpx.ConnectError:
        return "refused", 0
    except httpx.HTTPError:
        return "broken", 0  # accepted, then reset or cut short
    ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
    return ("ok" if ok else "bad"), r.status_code


def send_predict(port: int) -> socket.socket:
    """A /predict request written on a new connection; the answer is read later."""
    body = json.dumps({"inputs": [ROW]}).encode()
    head = "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return s


def read_answer(s: socket.socket) -> tuple[str, int]:
    """The complete answer's status, or ('broken', 0) for a reset or truncated one."""
    with s:
        r = http.client.HTTPResponse(s)
        try:
            r.begin()
            body = json.loads(r.read())
        except (OSError, http.client.HTTPException, ValueError):
            return "broken", 0
    return ("ok" if len(body.get("predictions", [])) == 1 else "bad"), r.status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_drains_in_flight_requests_and_leaves_no_process(iris_package, tmp_path, sig):
    """Requests in flight at the signal all get complete answers; later ones are refused; the
    wrapper exits 0 in time and no process of the server remains."""
    port, grace = free_port(), 10
    out = tmp_path / "serve.log"
    env = clean_env(NNSHIP_MAX_WAIT_MS="1500", NNSHIP_THREADS="1")  # batches held 1.5 s
    cmd = [*NNSHIP_SERVE, f"iris-served:{iris_package['version']}", "--port", str(port)]
    with out.open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "--grace-s", str(grace)], env=env, stdout=log, stderr=log, **OWN_GROUP
        )
    url = f"http://127.0.0.1:{port}"
    procs: list[psutil.Process] = []
    try:
        wait_serving(proc, out)
        procs = tree(proc.pid)
        assert len(procs) >= 3, procs  # wrapper, BentoML's arbiter, a worker
        stop = threading.Event()

        def stream() -> list[tuple[str, int]]:  # a steady client until its requests are refused
            results = []
            while not stop.is_set() and (not results or results[-1][0] != "refused"):
                results.append(predict(url))
            return results

        with ThreadPoolExecutor(48) as pool:
            streams = [pool.submit(stream) for _ in range(8)]
            time.sleep(1)  # the streams are running
            in_flight = [send_predict(port) for _ in range(40)]
            time.sleep(0.3)  # the 40 are read and held by the batcher (1.5 s)
            signalled = time.monotonic()
            proc.send_signal(sig)
            answered = list(pool.map(read_answer, in_flight))
            code = proc.wait(grace + 15)
            took = time.monotonic() - signalled
            stop.set()
            streamed = [r for f in streams for r in f.result()]
        print(
            f"{sig.name}: 40 in flight, answered {answered.count(('ok', 200))}, exit in {took:.2f} s"
        )
        assert answered == [("ok", 200)] * 40
        assert {kind for kind, _ in streamed} <= {"ok", "refused"}, streamed
        assert code == 0, out.read_text()[-3000:]
        assert took < grace + 10
        time.sleep(0.5)
        assert alive(procs) == [], alive(procs)
        assert not listening(port)
    finally:
        kill_all(proc, procs)


def start_serving(iris_package, tmp_path) -> tuple[subprocess.Popen, int, Path]:
    """`nnship serve` of the iris model, once it says it serves."""
    port, out = free_port(), tmp_path / "serve.log"
    cmd = [*NNSHIP_SERVE, f"iris-served:{iris_package['version']}", "--port", str(port)]
    with out.open("w") as log:
        env = clean_env(NNSHIP_THREADS="1")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, **OWN_GROUP)
    try:
        wait_serving(proc, out)
    except BaseException:
        kill_all(proc, tree(proc.pid))
        raise
    return proc, port, out


def gone_within(procs: list[psutil.Process], port: int, seconds: float) -> bool:
    """Whether all these processes exit and the port stops listening within `seconds`."""
    deadline = time.monotonic() + seconds
    while alive(procs) or listening(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_killing_the_wrapper_stops_the_server(iris_package, tmp_path):
    """SIGKILL to `nnship serve` (no handler runs): the kernel stops its server, workers included."""
    proc, port, _ = start_serving(iris_package, tmp_path)
    procs = tree(proc.pid)
    try:
        assert len(procs) >= 3, procs  # wrapper, BentoML's arbiter, a worker
        proc.kill()
        proc.wait()
        assert gone_within(procs, port, 15), alive(procs)
    finally:
        for p in alive(procs):
            p.kill()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT], ids=["SIGHUP", "SIGQUIT"])
def test_hang_up_and_quit_drain_like_sigterm(iris_package, tmp_path, sig):
    """A closed terminal (SIGHUP) or SIGQUIT: the server drains and the wrapper exits 0."""
    proc, port, out = start_serving(iris_package, tmp_path)
    procs = tree(proc.pid)
    try:
        proc.send_signal(sig)
        assert proc.wait(30) == 0, out.read_text()[-3000:]
        assert "draining" in out.read_text()
        assert gone_within(procs, port, 5), alive(procs)
    finally:
        for p in alive(procs):
            p.kill()


def test_port_in_use_is_one_line(iris_package):
    """Another server on the port: one line, exit 2, before any start-up output."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run(
            [*NNSHIP_SERVE, f"iris-served:{iris_package['version']}", "--port", str(port)],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"nnship: error: port {port} is in use"
    assert proc.stdout == ""


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "1")
        self.end_headers()
        self.wfile.write(b"1")

    def log_message(self, *args: object) -> None:
        pass


def test_readiness_is_confirmed_for_this_server_only():
    """A foreign server answering /readyz 200 is not taken for ours."""
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{other.server_address[1]}"
    try:
        with Supervisor([sys.executable, "-c", "import time; time.sleep(30)"], {}, 1.0) as server:
            with pytest.raises(Exception, match="another server answers at"):
                server.wait_ready(url, "", "token-of-this-start")
            assert server.proc is not None and server.proc.poll() is None
        assert server.proc.poll() is not None  # leaving the block killed the server's session
    finally:
        other.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NNSHIP_API_KEY_ENV": "NNSHIP_TEST_KEY"}, "API key variable NNSHIP_TEST_KEY"),
        ({"NNSHIP_TIMEOUT_S": "nan"}, "NNSHIP_TIMEOUT_S=nan is out of range"),
        ({"NNSHIP_MAX_CONCURRENCY": "0"}, "NNSHIP_MAX_CONCURRENCY=0 is out of range"),
        ({"NNSHIP_VARIANT": "fp16"}, "no shipped variant 'fp16'"),
        ({"NNSHIP_RATE_LIMIT": "1e-320"}, "NNSHIP_RATE_LIMIT=1e-320 is out of range"),
        ({"NNSHIP_TRUSTED_PROXIES": "*"}, "NNSHIP_TRUSTED_PROXIES='*'"),
        ({"NNSHIP_API_KEY": "ключ"}, "the API key in NNSHIP_API_KEY holds characters other"),
    ],
    ids=[
        "key-variable-unset",
        "timeout-nan",
        "concurrency-0",
        "bad-variant",
        "rate-tiny",
        "proxies-star",
        "key-not-ascii",
    ],
)
@pytest.mark.parametrize("command", ["nnship", "bentoml"])
def test_bad_start_up_settings_fail_once_in_one_line(iris_package, env, message, command):
    """Both entry points refuse bad settings at start-up: one line, non-zero, nothing left running."""
    model = f"iris-served:{iris_package['version']}"
    port = str(free_port())
    if command == "nnship":
        cmd = [*NNSHIP_SERVE, model, "--port", port]
    else:
        cmd = [*BENTOML_SERVE, "--port", port]
    full_env = clean_env(NNSHIP_MODEL=model, **env)
    full_env.pop("NNSHIP_TEST_KEY", None)
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("nnship: error: "), proc.stderr[-3000:]
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert not listening(int(port))


def test_no_key_configured_warns_once(iris_package, tmp_path):
    """No key at all: the server starts, and says once that authentication is off."""
    port = free_port()
    out = tmp_path / "serve.log"
    cmd = [*NNSHIP_SERVE, f"iris-served:{iris_package['version']}", "--port", str(port)]
    with out.open("w") as log:
        proc = subprocess.Popen(cmd, env=clean_env(), stdout=log, stderr=log, **OWN_GROUP)
    procs: list[psutil.Process] = []
    try:
        wait_serving(proc, out)
        procs = tree(proc.pid)
        warnings = [
            line for line in out.read_text().splitlines() if "authentication is off" in line
        ]
        assert len(warnings) == 1 and "NNSHIP_API_KEY is unset or empty" in warnings[0]
        assert (
            httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": [ROW]}).status_code
            == 200
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    finally:
        kill_all(proc, procs)


@pytest.fixture
def tampered(iris_package, tmp_path) -> Path:
    """A copy of the iris package whose fp32 file was changed after export."""
    from nnship.package import load_package

    package = tmp_path / "pkg"
    shutil.copytree(load_package(f"iris-served:{iris_package['version']}").path, package)
    with (package / "fp32.onnx").open("ab") as f:
        f.write(b"\0")
    return package


@pytest.mark.parametrize("model", ["tampered", "missing"])
def test_bentoml_serve_of_a_bad_model_fails_once(tampered, model):
    """`bentoml serve` of a bad model exits non-zero in seconds, not a worker restart loop."""
    ref = str(tampered) if model == "tampered" else "iris-served:no-such-version"
    port = free_port()
    started = time.monotonic()
    proc = subprocess.run(
        [*BENTOML_SERVE, "--port", str(port)],
        env=clean_env(NNSHIP_MODEL=ref),
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    errors = [line for line in proc.stderr.splitlines() if "nnship: error:" in line]
    assert proc.returncode != 0 and took < 15, (took, proc.stderr[-3000:])
    assert len(errors) == 1, proc.stderr[-3000:]
    assert (
        "sha256 mismatch" if model == "tampered" else "not in the BentoML model store"
    ) in errors[0]
    assert not listening(port)


def test_worker_start_up_failure_stops_the_server(iris_package):
    """A failure only a worker sees (no GPU for --require-gpu here) stops the server, exit 2."""
    if Path("/dev/nvidiactl").exists():
        pytest.skip("a GPU is present: --require-gpu would start")
    port = free_port()
    started = time.monotonic()
    proc = subprocess.run(
        [*BENTOML_SERVE, "--port", str(port)],
        env=clean_env(
            NNSHIP_MODEL=f"iris-served:{iris_package['version']}", NNSHIP_REQUIRE_GPU="1"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    output = proc.stdout + proc.stderr  # the worker logs through BentoML's handlers
    assert proc.returncode == 2 and took < 30, (took, output[-3000:])
    assert sum("nnship: error: --require-gpu" in line for line in output.splitlines()) == 1
    assert not listening(port)
