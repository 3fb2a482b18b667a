"""Event-loop lag of a running server under a stream of maximum-size bad v2 bodies.

A probe times GET /v2/health/live every 10 ms while other clients stream bodies the service must
refuse (wrong element count, wrong datatype, too many rows, deep nesting, duplicate outputs), each
as large as the body limit allows. The probe's latency is the time the worker's event loop was held;
the server's CPU time per bad body is read from /proc through psutil (the serve process and its
children). Prints a table and writes it to reports/eventloop-lag.md.

    python -m nnship.loadtests.eventloop_lag --url http://127.0.0.1:3000 --pid SERVE_PID --label after
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import threading
import time
from pathlib import Path

import httpx
import psutil

from nnship.io import atomic_write

log = logging.getLogger(__name__)
PROBE_EVERY_S = 0.010
NUMBER = b"1.5,"  # one JSON value and its separator


def _tensor(shape: list[int], datatype: str = "FP32") -> bytes:
    head = {"name": "input", "datatype": datatype, "shape": shape}
    return json.dumps(head).encode()[:-1] + b', "data": '


def _filled(prefix: bytes, suffix: bytes, limit: int) -> bytes:
    """prefix + [1.5,1.5,...] + suffix, as long as `limit` allows."""
    n = (limit - len(prefix) - len(suffix) - 2) // len(NUMBER)
    return prefix + b"[" + NUMBER * (n - 1) + NUMBER[:-1] + b"]" + suffix


def bad_bodies(model: str, limit: int) -> dict[str, bytes]:
    """Each kind of bad body, as close to `limit` bytes as it gets."""
    start, end = b'{"inputs": [', b"}]}"
    depth = (limit - 2) // 2
    outputs = b'{"name": "output"},'
    n_out = (limit - 200) // len(outputs)
    return {
        "wrong element count": _filled(start + _tensor([1, 4]), end, limit),
        "wrong datatype": _filled(start + _tensor([1, 4], "FP64"), end, limit),
        "too many rows": _filled(start + _tensor([10**6, 4]), end, limit),
        "deep nesting": b"[" * depth + b"]" * depth,
        "duplicate outputs": (
            start
            + _tensor([1, 4])
            + b"[1, 2, 3, 4]}], "
            + b'"outputs": ['
            + outputs * (n_out - 1)
            + outputs[:-1]
            + b"]}"
        ),
    }


def _cpu_seconds(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def _probe(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get(f"{url}/v2/health/live")
            took = time.perf_counter() - t
            out.append(took)
            stop.wait(max(0.0, PROBE_EVERY_S - took))


def _stream(url: str, path: str, body: bytes, stop: threading.Event, statuses: list[int]) -> None:
    headers = {"content-type": "application/json"}
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            statuses.append(client.post(f"{url}{path}", content=body, headers=headers).status_code)


def measure(
    url: str, pid: int, path: str, body: bytes | None, seconds: float, senders: int
) -> dict:
    """Probe latencies and server CPU while `senders` clients stream `body` (None: no load)."""
    stop = threading.Event()
    probes: list[float] = []
    statuses: list[int] = []
    threads = [threading.Thread(target=_probe, args=(url, stop, probes))]
    if body is not None:
        threads += [
            threading.Thread(target=_stream, args=(url, path, body, stop, statuses))
            for _ in range(senders)
        ]
    cpu0 = _cpu_seconds(pid)
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    cpu = _cpu_seconds(pid) - cpu0
    ms = sorted(1000 * p for p in probes)
    return {
        "bodies": len(statuses),
        "statuses": sorted(set(statuses)),
        "bytes": len(body or b""),
        "probe_p50_ms": statistics.median(ms),
        "probe_p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "probe_max_ms": ms[-1],
        "cpu_ms_per_body": 1000 * cpu / len(statuses) if statuses else None,
        "probes": len(ms),
    }


def _row(name: str, r: dict) -> str:
    cpu = "-" if r["cpu_ms_per_body"] is None else f"{r['cpu_ms_per_body']:.1f}"
    return (
        f"| {name} | {r['bytes']:,} | {r['bodies']} | {r['statuses']} | {r['probe_p50_ms']:.1f} "
        f"| {r['probe_p99_ms']:.1f} | {r['probe_max_ms']:.1f} | {cpu} |"
    )


def report(label: str, url: str, results: dict[str, dict], seconds: float, senders: int) -> str:
    lines = [
        f"### {label}",
        "",
        f"`{url}`, {seconds:g} s per scenario, {senders} streaming client(s), probe every "
        f"{PROBE_EVERY_S * 1000:g} ms (GET /v2/health/live).",
        "",
        "| scenario | body bytes | bad bodies sent | statuses | probe p50 ms | probe p99 ms "
        "| probe max ms | server CPU ms / body |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        *(_row(name, r) for name, r in results.items()),
        "",
    ]
    return "\n".join(lines)


def write_report(path: Path, label: str, section: str) -> None:
    """Replace (or add) this label's section in the report."""
    title = "# Event-loop lag under maximum-size bad bodies\n\n"
    old = path.read_text() if path.exists() else title
    parts = old.split("\n### ")
    kept = [p for p in parts[1:] if not p.startswith(f"{label}\n")]
    text = "\n### ".join([parts[0].rstrip("\n") + "\n", *kept]).rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_text(text))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="a loopback server, e.g. http://127.0.0.1:3000")
    p.add_argument("--pid", type=int, required=True, help="the serve process (its children count)")
    p.add_argument("--model", default="iris-served")
    p.add_argument("--limit", type=int, default=4 << 20, help="NNSHIP_MAX_BODY_BYTES of the server")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--label", default="after")
    p.add_argument("--out", default="reports/eventloop-lag.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    path = f"/v2/models/{args.model}/infer"
    results = {"idle (no bad bodies)": measure(args.url, args.pid, path, None, args.seconds, 0)}
    for name, body in bad_bodies(args.model, args.limit).items():
        results[name] = measure(args.url, args.pid, path, body, args.seconds, args.senders)
        log.info("%s", _row(name, results[name]))
    section = report(args.label, args.url, results, args.seconds, args.senders)
    print(section)
    write_report(Path(args.out), args.label, section)


if __name__ == "__main__":
    main()
