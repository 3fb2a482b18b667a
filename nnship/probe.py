"""Polling a server until it answers 200: one helper for the CLI, the tests and the load tests."""

from __future__ import annotations

import http.client
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping
from email.message import Message

log = logging.getLogger(__name__)

# probes go straight to the server, never through a proxy named in the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def answer(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 2.0,
) -> tuple[int, Message] | None:
    """One GET (POST when `body` is given): its status and headers, or None when nothing answered."""
    req = urllib.request.Request(url, data=body, headers=dict(headers or {}))
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers
    except (OSError, http.client.HTTPException):
        return None


def wait_ready(
    url: str,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    alive: Callable[[], bool] | None = None,
    check: Callable[[Message], None] | None = None,
    interval: float = 0.2,
) -> bool:
    """Poll `url` until it answers 200: True then; False once `timeout` seconds pass or `alive()`
    turns False (the server exited, or a stop was asked for). `check(headers)` sees each 200 answer
    and may raise to refuse it (another server answering on the port)."""
    deadline = time.monotonic() + timeout
    while alive is None or alive():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        got = answer(url, headers=headers, body=body, timeout=min(2.0, left))
        if got is not None and got[0] == 200:
            if check is not None:
                check(got[1])
            return True
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    return False
