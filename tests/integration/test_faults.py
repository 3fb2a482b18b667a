"""Fault test: `kill -9` of the BentoML worker under load; the server recovers and only requests in
flight at the kill may fail."""

import threading
import time
from dataclasses import dataclass

import httpx
import psutil

from nnship import probe
from tests.server import iris_env, running_server

ROW = [5.1, 3.5, 1.4, 0.2]
CLIENTS = 4  # bounded load: at most this many requests are ever in flight
READY_BOUND_S = 60.0


@dataclass
class Call:
    start: float
    end: float
    ok: bool


def serve_process(port: int) -> psutil.Process:
    """The `bentoml serve` process listening on the port."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "serve" in cmd and "--port" in cmd and cmd[cmd.index("--port") + 1] == str(port):
            return p
    raise LookupError(f"no bentoml serve process on port {port}")


def worker_of(server: psutil.Process) -> psutil.Process:
    """The one service worker that the serve process (BentoML's arbiter) started."""
    workers = [
        c
        for c in server.children(recursive=True)
        if "_bentoml_impl.worker" in " ".join(c.cmdline())
    ]
    assert len(workers) == 1, workers
    return workers[0]


def client(url: str, stop: threading.Event, calls: list[Call]) -> None:
    """Closed loop: one /predict after another until stopped, recording each outcome."""
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            start = time.monotonic()
            try:
                ok = c.post(f"{url}/predict", json={"inputs": [ROW]}).status_code == 200
            except httpx.HTTPError:
                ok = False
            calls.append(Call(start, time.monotonic(), ok))


def ready_at(url: str, bound: float) -> float:
    """Poll /readyz until it answers 200; returns when (monotonic)."""
    assert probe.wait_ready(f"{url}/readyz", timeout=bound, interval=0.05), (
        f"not ready again within {bound} s"
    )
    return time.monotonic()


def test_kill_9_worker_under_load(iris_package):
    with running_server(iris_env(iris_package, workers="1")) as (url, _):
        server = serve_process(int(url.rsplit(":", 1)[1]))
        victim = worker_of(server)
        stop, calls = threading.Event(), []
        threads = [
            threading.Thread(target=client, args=(url, stop, calls), daemon=True)
            for _ in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        time.sleep(2)
        before = len(calls)
        killed = time.monotonic()
        victim.kill()  # SIGKILL
        ready = ready_at(url, READY_BOUND_S)
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(70)
        replacement = worker_of(server)
    in_flight = [c for c in calls if c.start < killed <= c.end]
    failed = [c for c in calls if not c.ok]
    after = [c for c in calls if c.start > ready]
    print(
        f"\nkill -9 of the worker under {CLIENTS} clients: ready again after "
        f"{ready - killed:.2f} s; {len(failed)} failed of {len(calls)} requests; "
        f"{len(in_flight)} in flight at the kill; {before} answered before, {len(after)} after"
    )
    assert replacement.pid != victim.pid
    assert before > 0 and after, "the load ran before and after the kill"
    assert ready - killed < READY_BOUND_S
    # each client held one connection to the dead worker: it may lose the request in flight on it
    # (or one sent on it in the milliseconds before the client saw it close), nothing else; the
    # requests sent while the worker restarts wait in the listening socket's backlog and succeed
    assert len(in_flight) <= CLIENTS and len(failed) <= CLIENTS
    assert all(killed <= c.end < killed + 1.0 for c in failed), "a failure away from the kill"
    assert all(c.ok for c in after)
