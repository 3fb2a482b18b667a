"""The readiness poll: 200 ends it, a dead server or a deadline stops it, a foreign answer is refused."""

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nnship.probe import answer, wait_ready


@contextlib.contextmanager
def answering(statuses: list[int], token: str = "ours") -> Iterator[tuple[str, list]]:
    """A loopback server answering GET and POST with the next status (the last one repeats)."""
    seen: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append((self.command, body))
            self.send_response(statuses.pop(0) if len(statuses) > 1 else statuses[0])
            self.send_header("x-token", token)
            self.send_header("content-length", "0")
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/readyz", seen
    finally:
        server.shutdown()
        server.server_close()


def test_polls_until_200():
    with answering([503, 503, 200]) as (url, seen):
        assert wait_ready(url, timeout=10, interval=0.01)
    assert [m for m, _ in seen] == ["GET"] * 3


def test_posts_the_body_when_given():
    with answering([200]) as (url, seen):
        assert wait_ready(url, timeout=10, body=b'{"inputs": []}')
    assert seen == [("POST", b'{"inputs": []}')]


def test_deadline_and_a_dead_server_end_it_with_false():
    with answering([503]) as (url, _):
        t0 = time.monotonic()
        assert not wait_ready(url, timeout=0.3, interval=0.05)
        assert time.monotonic() - t0 < 2
        assert not wait_ready(url, timeout=10, alive=lambda: False)


def test_nothing_listening_is_no_answer():
    with answering([200]) as (url, _):
        pass  # closed: nothing listens on the port any more
    assert answer(url, timeout=0.5) is None
    assert not wait_ready(url, timeout=0.3, interval=0.05)


def test_check_refuses_a_foreign_answer():
    def ours(headers) -> None:
        if headers.get("x-token") != "ours":
            raise RuntimeError("another server")

    with answering([200], token="theirs") as (url, _), pytest.raises(RuntimeError):
        wait_ready(url, timeout=10, check=ours)
    with answering([200]) as (url, _):
        assert wait_ready(url, timeout=10, check=ours)
