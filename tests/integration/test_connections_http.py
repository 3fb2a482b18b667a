"""Connection-level limits over real HTTP: stalled request heads, the connection cap, keep-alive
connections during the stop drain."""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import subprocess
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.integration.test_lifecycle import NNSHIP_SERVE, clean_env, kill_all, tree, wait_serving
from tests.server import free_port, running_server

ROW = [5.1, 3.5, 1.4, 0.2]


def open_sockets(url: str, n: int, send: bytes = b"") -> list[socket.socket]:
    """n connections to the server, each having sent `send` (possibly nothing)."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        if send:
            s.sendall(send)
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket], within: float) -> int:
    """How many of the sockets the server closed (EOF or reset) within `within` seconds."""
    open_ = set(socks)
    deadline = time.monotonic() + within
    while open_ and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(list(open_), [], [], left)
        for s in readable:
            try:
                if s.recv(4096) == b"":
                    open_.discard(s)
            except OSError:
                open_.discard(s)
    return len(socks) - len(open_)


def ok(url: str) -> int:
    return httpx.post(f"{url}/predict", json={"inputs": [ROW]}, timeout=10).status_code


@pytest.fixture(scope="module")
def impatient(iris_package):
    env = {"NNSHIP_MODEL": "iris-served:latest", "NNSHIP_THREADS": "1"}
    with running_server({**env, "NNSHIP_HEADER_TIMEOUT_S": "1"}) as (url, _):
        yield url


def test_stalled_heads_are_closed_while_requests_are_answered(impatient):
    """50 silent connections and 50 with half a header line are closed by the server within ~2 s
    (header timeout 1 s); a normal request is answered meanwhile."""
    socks = open_sockets(impatient, 50) + open_sockets(
        impatient, 50, b"POST /predict HTTP/1.1\r\nHo"
    )
    try:
        assert ok(impatient) == 200
        started = time.monotonic()
        closed = closed_by_server(socks, within=3)
        took = time.monotonic() - started
        print(f"closed {closed}/100 stalled connections in {took:.2f} s")
        assert closed == 100
        assert took < 2.5
        assert ok(impatient) == 200
    finally:
        for s in socks:
            s.close()


def test_a_stalled_next_head_on_a_keep_alive_connection_is_closed(impatient):
    """After a complete exchange, the first bytes of a next request that never completes do not
    hold the connection (uvicorn's keep-alive timer stops at those bytes)."""
    host, port = impatient.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"inputs": [ROW]})
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    assert conn.getresponse().read() and conn.sock is not None
    conn.sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x")
    assert closed_by_server([conn.sock], within=3) == 1
    conn.close()


def test_connections_past_the_cap_make_room_for_real_requests(iris_package):
    """With a cap of 16 per worker, 40 silent connections: the oldest silent ones are closed to make
    room, and a real request arriving while the cap is full of silent connections is answered at
    once (it evicts one instead of being dropped)."""
    env = {"NNSHIP_MODEL": "iris-served:latest", "NNSHIP_THREADS": "1"}
    with running_server({**env, "NNSHIP_MAX_CONNECTIONS": "16"}) as (url, _):
        time.sleep(0.5)  # the readiness poll's connections are gone
        socks = open_sockets(url, 40)
        try:
            assert closed_by_server(socks, within=1) >= 40 - 16
            for _ in range(3):  # the cap is full of silent connections, still within their deadline
                assert ok(url) == 200
        finally:
            for s in socks:
                s.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed an idle keep-alive connection (EOF waiting to be read)."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""


def test_keep_alive_clients_are_not_reset_by_the_stop_drain(iris_package, tmp_path):
    """16 clients reusing keep-alive connections through SIGTERM: every request sent on a connection
    the worker accepted is answered, none reset (a new connection is refused, or reset unread if
    the kernel queued it after the worker stopped accepting); answers after the signal say Connection: close, and an
    idle connection is closed cleanly (EOF, as pooled clients check before reuse), not reset."""
    port = free_port()
    out = tmp_path / "serve.log"
    cmd = [*NNSHIP_SERVE, f"iris-served:{iris_package['version']}", "--port", str(port)]
    with out.open("w") as log:
        proc = subprocess.Popen(
            [*cmd, "--grace-s", "10"],
            env=clean_env(NNSHIP_THREADS="1"),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    procs = []
    try:
        wait_serving(proc, out)
        procs = tree(proc.pid)
        stop, stop_sent, results = threading.Event(), threading.Event(), []
        body = json.dumps({"inputs": [ROW] * 32})

        def client() -> None:
            while not stop.is_set():
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    c.connect()
                except OSError:
                    results.append(("refused", None))
                    time.sleep(0.05)
                    continue
                try:
                    for i in range(20):
                        if i and closed_by_peer(c.sock):  # what pooled clients check before reuse
                            results.append(("closed", None))
                            break
                        c.request("POST", "/predict", body, {"Content-Type": "application/json"})
                        r = c.getresponse()
                        r.read()
                        results.append((r.status, r.getheader("connection")))
                        if r.getheader("connection") == "close" or stop.is_set():
                            break
                except (OSError, http.client.HTTPException) as e:
                    if i == 0 and isinstance(e, ConnectionResetError) and stop_sent.is_set():
                        # a connection the kernel queued on the listening socket after the worker
                        # stopped accepting (the arbiter holds the socket until it exits): reset
                        # unread when the socket closes, no request on it reached the server
                        results.append(("refused", "reset before accept"))
                    else:
                        results.append(("broken", f"{type(e).__name__} on request {i}"))
                c.close()

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(2)
        before = len(results)
        stop_sent.set()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        stop.set()
        for t in threads:
            t.join(30)
        after = Counter(results[before:])
        print(f"before the signal {before} answers; after it: {after.most_common()}")
        assert code == 0
        assert before > 0 and all(r == (200, None) for r in results[: before // 2])
        assert not [r for r in after if r[0] == "broken"], after
        assert (200, "close") in after
    finally:
        kill_all(proc, procs)
