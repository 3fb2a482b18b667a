"""The serving image from `nnship containerize`, run as production runs it: Podman, a read-only root
filesystem, a non-root user, default capabilities; answers, metrics, health and a graceful stop."""

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from nnship.numeric import softmax
from nnship.probe import wait_ready
from nnship.service.runtime import load_runtime
from nnship.service.settings import Settings
from nnship.training.data import load_dataset, split
from tests.server import free_port, missing_tool

ROOT = Path(__file__).resolve().parents[2]
GRACE = 20


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert not check or out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def image(iris_package):
    """The CPU image of the iris test model (the base image and wheelhouse are reused if cached)."""
    if shutil.which("podman") is None:
        missing_tool("podman is not installed (CI installs it: .ci/run)")
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy/container/containers.conf"))
    if podman("info", check=False).returncode != 0:
        missing_tool("podman is installed but cannot run here")
    tag = "localhost/nnship-test:iris"
    model = f"iris-served:{iris_package['version']}"
    built = subprocess.run(
        [sys.executable, "-m", "nnship.cli", "containerize", model, "--tag", tag],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert built.stdout.strip().splitlines()[-1] == tag
    yield tag
    podman("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def container(image):
    port, name = free_port(), f"nnship-test-{os.getpid()}"
    podman(
        "run", "-d", "--name", name, "--read-only", "--user", "10001",
        "-p", f"127.0.0.1:{port}:3000",
        "-e", "NNSHIP_THREADS=1", "-e", "NNSHIP_MAX_WAIT_MS=1500", "-e", f"NNSHIP_GRACE_S={GRACE}",
        image,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(f"{url}/readyz", timeout=120):
            pytest.fail("not ready in 120 s:\n" + podman("logs", name, check=False).stderr[-3000:])
        yield name, url
    finally:
        podman("rm", "-f", name, check=False)


def test_predict_matches_the_in_process_runtime(container, iris_package):
    _, url = container
    x = split(load_dataset("iris")).x_test
    body = httpx.post(f"{url}/predict", json={"inputs": x.tolist()}, timeout=30).json()
    model = f"iris-served:{iris_package['version']}"
    runtime = load_runtime(Settings(model=model, threads=1, variant=body["variant"]))
    p = softmax(runtime.run(x))
    labels = iris_package["output"]["labels"]
    assert body["predictions"] == [labels[i] for i in p.argmax(1)]
    np.testing.assert_allclose(body["probabilities"], p.round(6), atol=1e-6)


def test_metrics_user_torch_and_health(container):
    name, url = container
    text = httpx.get(f"{url}/metrics", timeout=30).text
    assert "nnship_model_info" in text and "nnship_inference_seconds" in text
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    no_torch = podman("exec", name, "python3", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    tools = "for t in gcc cc make pip pip3 apt-get; do command -v $t; done; true"
    found = podman("exec", name, "sh", "-c", tools).stdout.split()
    assert found == ["/usr/bin/apt-get"], found  # Debian's own tool only: no compiler, no pip
    touch = podman("exec", name, "touch", "/opt/nnship/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    assert podman("healthcheck", "run", name, check=False).returncode == 0


def test_sigterm_drains_in_flight_requests(container):
    """Requests held by the batcher when SIGTERM arrives are answered; the stop takes < grace."""
    name, url = container
    row = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    with ThreadPoolExecutor(4) as pool:
        answers = [
            pool.submit(httpx.post, f"{url}/predict", json=row, timeout=30) for _ in range(4)
        ]
        time.sleep(0.5)  # in flight: each waits up to NNSHIP_MAX_WAIT_MS for batch-mates
        start = time.monotonic()
        podman("stop", "-t", str(GRACE), name, timeout=GRACE + 30)
        took = time.monotonic() - start
        statuses = [a.result().status_code for a in answers]
    assert statuses == [200] * 4
    assert took < GRACE
    state = podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
    assert state == "0", podman("logs", name, check=False).stderr[-2000:]


def test_a_cpu_limit_sizes_the_threads_that_all_cores_would_mean(image):
    """`--cpus 1` leaves the host's cores visible; the service's default threads follow the
    container's CPU quota, not the host."""
    probe = (
        "from nnship.cpus import usable_cores; from nnship.service.settings import Settings; "
        "print(usable_cores(), Settings(model='m').intra_op_threads)"
    )
    run = ("run", "--rm", "--read-only", "--user", "10001", "--entrypoint", "python3")
    limited = podman(*run, "--cpus", "1", image, "-c", probe).stdout.split()
    assert limited == ["1", "1"]
    host = str(len(os.sched_getaffinity(0)))
    assert podman(*run, image, "-c", probe).stdout.split() == [host, host]
