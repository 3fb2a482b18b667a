"""wrk, the load generator of the serving benchmark and the load sweeps: its request script, one run,
and its printed figures parsed.

wrk is a C program (Debian: `apt-get install wrk`) that takes little CPU from the server it measures:
against the tiny iris MLP on one worker, sharing 2 cores with it, 64 wrk connections got 4,070
answers/s where 64 users of one Locust process got 2,058-2,424 (10 s each, the same run)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

INSTALL_HINT = "wrk is not installed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)"
MAX_BODIES = 64  # request bodies a script cycles through


def lua_script(
    bodies: list[str],
    path: Path,
    headers: dict[str, str] | None = None,
    route: str = "/predict",
) -> Path:
    """A wrk script POSTing `bodies` (the first MAX_BODIES, in turn) as JSON to `route`, with
    `headers` (an API key) on every request."""
    items = ",\n".join("[==[" + b + "]==]" for b in bodies[:MAX_BODIES])  # long strings: "]]"
    extra = "".join(
        f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}\n" for k, v in (headers or {}).items()
    )
    path.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"{extra}local bodies = {{\n{items}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #bodies + 1\n"
        f"  return wrk.format(nil, {_lua_str(route)}, nil, bodies[i])\nend\n"
    )
    return path


def _lua_str(text: str) -> str:
    """A Lua string literal of `text`, every byte escaped: no value can end it early."""
    return '"' + "".join(f"\\{b}" for b in text.encode()) + '"'


def wrk_ms(text: str) -> float:
    """A wrk duration ("812.00us", "1.20ms", "2.01s") in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(text: str) -> dict[str, float]:
    """`wrk --latency` output -> requests/s, p50, p90 and p99 in ms, requests sent and errors
    (non-2xx answers plus socket errors: refused, reset, timed out)."""
    # wrk pads a latency of a second or more to its column ("1.45s "): trailing blanks allowed
    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)[ \t]*$", text, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rps is None or set(lat) != {"50", "90", "99"}:
        raise ValueError("wrk printed no Requests/sec or latency distribution")
    requests = re.search(r"^\s+(\d+) requests in ", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": wrk_ms(lat["50"]),
        "p90_ms": wrk_ms(lat["90"]),
        "p99_ms": wrk_ms(lat["99"]),
        "requests": int(requests.group(1)) if requests else 0,
        "errors": (int(non2xx.group(1)) if non2xx else 0)
        + (sum(map(int, sock.groups())) if sock else 0),
    }


def run_wrk(
    url: str,
    script: Path,
    connections: int,
    seconds: int,
    timeout: float | None = None,
    request_timeout_s: float | None = None,
    parse: bool = True,
) -> dict[str, float]:
    """wrk with `connections` clients for `seconds` (at most two threads), its figures parsed;
    `request_timeout_s` raises wrk's own 2 s limit for slow requests, and `parse=False` suits a
    warm-up, which may end before any answer ({} then)."""
    limit = [] if request_timeout_s is None else ["--timeout", f"{request_timeout_s:g}s"]
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(2, connections)),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            *limit,
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    ).stdout
    return parse_wrk(out) if parse else {}
