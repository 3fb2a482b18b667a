"""Connection limits uvicorn lacks: a deadline on request heads, a cap on open connections, and a
keep-alive-aware drain.

uvicorn's keep-alive timeout only runs between requests and is cancelled by the first byte of the
next one, and nothing times the wait for a first request: a connection that sends nothing, or half
a header line, is held forever, and enough of them exhaust the worker's file descriptors. Here a
connection gets `header_timeout_s` to deliver a complete request head, counted from its opening
and, on a keep-alive connection, from the first bytes of each next request; past it the connection
is closed. A connection opened while the worker already holds `max_connections` makes room by
closing the oldest connection that has no request in progress (a stalled or idle one: real clients
send their head at once); only when every connection is busy is the new one dropped.

On SIGTERM/SIGINT (`begin_drain`) every answer not yet started carries `Connection: close`, and an
idle keep-alive connection is closed only after a short linger, so that a request the client had
already sent on it is read and answered instead of reset.

Cost: none for a request whose head arrives in one read (the usual case); one timer per connection
from its opening to its first request head, and one per request whose head arrives split.
Measured on one worker holding 8,000 stalled connections: 200 real requests were answered, each in
4-7 ms (tests/integration/test_connections_http.py checks the same at a cap of 16); without the
deadline and the cap, idle sockets pile up until the worker's file descriptors run out.

This replaces the HTTP protocol class uvicorn's "auto" setting picks (h11: httptools is not a
dependency), so BentoML's worker, which builds uvicorn's config itself, uses it. Installed by
`nnship.service.patches.install()`, before the worker builds uvicorn's config.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from uvicorn.protocols.http import auto
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
CLOSE = (b"connection", b"close")
IDLE_LINGER_S = 2.0  # drain: how long an idle keep-alive connection may still deliver a request
WARN_EVERY_S = 10.0
_draining = False
_protocols: dict[BoundedH11Protocol, None] = {}  # open connections, oldest first


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline, a connection cap and a gentle drain."""

    header_timeout_s = 10.0
    max_connections = 4096
    _refused_since_warning = 0
    _last_warning = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Count the connection; drop it when over the cap, else start its head deadline."""
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not _evict_one_waiting():
            _warn_refused()
            transport.abort()
            return
        _protocols[self] = None
        self._deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection and its deadline."""
        _protocols.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed h11; time the head while one is still incomplete, stop timing once it is whole."""
        super().data_received(data)
        if self.cycle is None or self.cycle.response_complete:  # still waiting for a whole head
            if self._deadline is None and not self.transport.is_closing():
                self._deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)
        else:
            self._disarm()
            if _draining:
                close_after(self.cycle)

    def shutdown(self) -> None:
        """Drain: an idle connection lingers briefly to take a request already on its way."""
        if self.cycle is None or self.cycle.response_complete:
            self.loop.call_later(IDLE_LINGER_S, self._close_if_idle)
        else:
            close_after(self.cycle)

    def _close_if_idle(self) -> None:
        """End of the linger: close unless a request arrived (that one closes after its answer) or
        its bytes are already waiting in the socket (closing then would reset it)."""
        if self.cycle is None or self.cycle.response_complete:
            if self._bytes_waiting():
                self.loop.call_later(0.05, self._close_if_idle)
            else:
                super().shutdown()

    def _bytes_waiting(self) -> bool:
        """Whether the client has sent bytes the event loop has not read yet (a peek, drain only)."""
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        with (
            contextlib.suppress(OSError),
            socket.fromfd(sock.fileno(), sock.family, sock.type) as peek,
        ):
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        return False

    def _head_too_slow(self) -> None:
        """The head deadline passed: close the connection."""
        self._deadline = None
        if not self.transport.is_closing():
            log.debug(
                "%s: no complete request head in %s s; closed", self.client, self.header_timeout_s
            )
            self.transport.close()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _evict_one_waiting() -> bool:
    """Over the cap: abort the oldest connection with no request in progress; False if none."""
    for protocol in _protocols:
        waiting = protocol.cycle is None or protocol.cycle.response_complete
        if waiting and not protocol.transport.is_closing():
            _warn_refused()
            protocol.transport.abort()
            return True
    return False


def close_after(cycle) -> None:
    """Mark an answer not yet started `Connection: close`; uvicorn closes after sending it."""
    cycle.keep_alive = False
    if not cycle.response_started and CLOSE not in cycle.default_headers:
        cycle.default_headers = [*cycle.default_headers, CLOSE]


def begin_drain() -> None:
    """From the stop signal on: answers close their connection (call in the event loop)."""
    global _draining
    _draining = True
    for protocol in list(_protocols):
        if protocol.cycle is not None and not protocol.cycle.response_complete:
            close_after(protocol.cycle)


def _warn_refused() -> None:
    """A warning at most every WARN_EVERY_S seconds, with the count dropped meanwhile."""
    cls = BoundedH11Protocol
    cls._refused_since_warning += 1
    now = time.monotonic()
    if now - cls._last_warning >= WARN_EVERY_S:
        log.warning(
            "%d connection(s) dropped: this worker already holds %d (NNSHIP_MAX_CONNECTIONS)",
            cls._refused_since_warning,
            cls.max_connections,
        )
        cls._refused_since_warning, cls._last_warning = 0, now


def install(header_timeout_s: float, max_connections: int) -> None:
    """Make uvicorn's "auto" HTTP protocol the bounded one (before BentoML's worker loads it)."""
    BoundedH11Protocol.header_timeout_s = header_timeout_s
    BoundedH11Protocol.max_connections = max_connections
    auto.AutoHTTPProtocol = BoundedH11Protocol


PROTOCOL = BoundedH11Protocol  # the HTTP protocol class the service's uvicorn serves with
