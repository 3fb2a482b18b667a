"""Build the CPU and the GPU serving image of one model and check them side by side.

    python deploy/container/gpu_image_check.py [--model MODEL[:VERSION]] [--report reports/gpu-image.md]

Without --model a 3-epoch iris MLP is trained and exported into a temporary model store. Each image
is run as production runs it (read-only root filesystem, uid 10001, loopback port); the report
records its size, uid, whether torch imports, the provider the service chose, /predict's answer on
the iris test split (the GPU image's must equal the CPU image's), and, in the GPU image, the
providers ONNX Runtime offers once it has preloaded the CUDA and cuDNN libraries of the nvidia-*
wheels and each of those libraries loaded with dlopen. On a host without an NVIDIA device the GPU
image serves on the CPU provider; the CUDA libraries still load, except those that link the driver
itself (libcuda.so.1, mounted from the host by the container toolkit), which the report names. Building the GPU image downloads several GB of wheels into the wheelhouse cache once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from nnship.io import atomic_write
from nnship.probe import wait_ready
from nnship.service.containerize import containerize

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)

# run inside the GPU image: ONNX Runtime's providers after preloading the wheels' libraries, and
# every shared library of the nvidia-* wheels loaded with dlopen (each one's error if it fails)
INSIDE = """
import ctypes, glob, json, os, onnxruntime as ort
ort.preload_dlls()
libs = sorted(glob.glob("/opt/nnship/lib/python3*/site-packages/nvidia/**/lib/*.so*", recursive=True))
loaded, failed = [], {}
for lib in libs:
    try:
        ctypes.CDLL(lib)
        loaded.append(os.path.basename(lib))
    except OSError as e:
        failed[os.path.basename(lib)] = str(e)
print(json.dumps({"onnxruntime": ort.__version__, "device": ort.get_device(),
    "providers": ort.get_available_providers(), "loaded": loaded, "failed": failed}))
"""


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {args[0]}: {done.stderr.strip()[-1000:]}")
    return done


@contextlib.contextmanager
def running(image: str) -> Iterator[tuple[str, str]]:
    """(container name, URL) of `image` run read-only as uid 10001 on a loopback port."""
    from nnship.loadtests.benchmark import _free_port

    port, name = _free_port(), f"nnship-check-{os.getpid()}-{int(time.time())}"
    podman("run", "-d", "--name", name, "--read-only", "--user", "10001",
           "-p", f"127.0.0.1:{port}:3000", "-e", "NNSHIP_THREADS=1", image)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_ready(f"{url}/readyz", timeout=180):
            raise RuntimeError(f"{image} not ready: {podman('logs', name, check=False).stderr}")
        yield name, url
    finally:
        podman("rm", "-f", name, check=False)


def check(image: str, rows: list[list[float]], gpu: bool) -> dict:
    """What the running image answers and holds."""
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    with running(image) as (name, url):
        answer = httpx.post(f"{url}/predict", json={"inputs": rows}, timeout=60).json()
        model = httpx.get(f"{url}/v2/models/{answer['model']}", timeout=30).json()
        torch = podman("exec", name, "python3", "-c", "import torch", check=False)
        found = {
            "size": size,
            "uid": podman("exec", name, "id", "-u").stdout.strip(),
            "torch": "importable"
            if torch.returncode == 0
            else torch.stderr.strip().splitlines()[-1],
            "provider": model["parameters"]["provider"],
            "answer": answer,
        }
        if gpu:
            found["inside"] = json.loads(podman("exec", name, "python3", "-c", INSIDE).stdout)
    return found


def same_answer(cpu: dict, gpu: dict) -> bool:
    """Whether both images predicted the same labels with the same probabilities."""
    keys = ("predictions", "probabilities")
    return all(cpu["answer"].get(k) == gpu["answer"].get(k) for k in keys)


def driver_failures(inside: dict) -> tuple[dict, dict]:
    """The libraries that failed to load for want of the driver (absent without a device), and the
    others."""
    driver = {k: v for k, v in inside["failed"].items() if "libcuda.so" in v}
    return driver, {k: v for k, v in inside["failed"].items() if k not in driver}


def markdown(cpu: dict, gpu: dict, model: str) -> str:
    inside = gpu["inside"]
    same = same_answer(cpu, gpu)
    driver, other = driver_failures(inside)
    needs_driver = (
        "; not loaded, as they link the driver's libcuda.so.1 (mounted from the host by the "
        "container toolkit): " + ", ".join(sorted(driver))
        if driver
        else ""
    )
    failed = f"; FAILED: {json.dumps(other)}" if other else ""
    mb = 1_000_000
    lines = [
        "# The CPU and the GPU serving image",
        "",
        f"`python deploy/container/gpu_image_check.py` (`make gpu-image-check`) built both images of "
        f"`{model}` with `nnship containerize` and ran each with `--read-only --user 10001` on a "
        "host without an NVIDIA device.",
        "",
        "| | CPU image | GPU image (`--gpu`) |",
        "| --- | --- | --- |",
        f"| size (`podman image inspect --format {{{{.Size}}}}`) | {cpu['size'] / mb:.0f} MB | "
        f"{gpu['size'] / mb:.0f} MB |",
        f"| uid of the server | {cpu['uid']} | {gpu['uid']} |",
        f"| `import torch` | {cpu['torch']} | {gpu['torch']} |",
        f"| provider serving (no device here) | {cpu['provider']} | {gpu['provider']} |",
        f"| /predict on the {len(cpu['answer']['predictions'])} iris test rows | reference | "
        f"{'identical predictions and probabilities' if same else 'DIFFERENT'} |",
        "",
        f"Inside the GPU image: onnxruntime {inside['onnxruntime']} (device {inside['device']}); "
        f"after `onnxruntime.preload_dlls()` it offers {', '.join(inside['providers'])}. "
        f"{len(inside['loaded'])} shared libraries of the nvidia-* wheels loaded with dlopen"
        f"{needs_driver}{failed}. Loaded:",
        "",
        "```text",
        *inside["loaded"],
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="MODEL[:VERSION] in the store (default: a tiny iris model)")
    p.add_argument("--report", default="reports/gpu-image.md")
    p.add_argument("--keep", action="store_true", help="keep both images (default: removed)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy/container/containers.conf"))
    from nnship.loadtests.benchmark import tiny_iris_model
    from nnship.training.data import load_dataset, split

    rows = split(load_dataset("iris")).x_test.tolist()
    with tempfile.TemporaryDirectory(prefix="nnship-gpu-check-") as home:
        model = args.model or tiny_iris_model(Path(home), "iris-image")
        tags = {}
        for gpu in (False, True):
            tag = f"localhost/nnship-check:{'gpu' if gpu else 'cpu'}"
            log.info("building %s", tag)
            tags[gpu] = containerize(model, gpu=gpu, tag=tag)
    try:
        cpu, gpu = check(tags[False], rows, False), check(tags[True], rows, True)
    finally:
        if not args.keep:
            podman("rmi", "-f", *tags.values(), check=False)
    text = markdown(cpu, gpu, model)
    print(text)
    atomic_write(args.report, lambda path: path.write_text(text))
    return 0 if same_answer(cpu, gpu) and not driver_failures(gpu["inside"])[1] else 1


if __name__ == "__main__":
    sys.exit(main())
