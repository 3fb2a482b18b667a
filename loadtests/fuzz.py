"""Fuzz the service against its own OpenAPI document (/docs.json) with schemathesis.

    python -m nnship.loadtests.fuzz --url http://127.0.0.1:3000 [--max-examples 100] [--report reports/fuzz.md]

    python -m nnship.loadtests.fuzz [--model MODEL[:VERSION]]   # serves it (default: a tiny iris model)

Runs `schemathesis run` on every documented route with all its checks (among them: no 5xx; status
codes, content types, headers and bodies as documented; schema-valid requests accepted, invalid ones
refused with 4xx; undocumented methods refused) and prints requests, routes, statuses and failures
by check, also written to reports/fuzz.md.

This module is also schemathesis's hooks module (SCHEMATHESIS_HOOKS=nnship.loadtests.fuzz). Two rules of the
v2 request cannot be written in OpenAPI 3.0 and are stated in the document's words: `shape` is
[N, *input_shape] for the N rows in `data`, and each output is named at most once. The hook below
makes schema-valid (positive) cases follow them; negative cases are left alone. A schema-valid
/predict or v2 request may still be refused with 422 when the model's output is not finite for
values near the float32 limit (documented); the `semantic_refusal` check allows exactly that and no
other refusal.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import schemathesis

from nnship.io import atomic_write

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
CONFIG = HERE / "schemathesis.toml"
SEMANTIC_RULES = ("finite_output", "training_range")  # the 422 rules (documented)


def _dims(data: Any) -> list[int]:
    """The lengths of nested lists along their first elements."""
    dims = []
    while isinstance(data, list) and data:
        dims.append(len(data))
        data = data[0]
    return dims


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Positive v2 infer cases: `shape` as `data` is nested, each output named once."""
    meta = case.meta
    body = case.body
    if (
        meta is None
        or not meta.generation.mode.is_positive
        or not case.operation.path.endswith("/infer")
        or not isinstance(body, dict)
    ):
        return case
    tensor = body["inputs"][0]
    tensor["shape"] = _dims(tensor["data"])
    if "outputs" in body:
        seen: set[str] = set()
        body["outputs"] = [
            o for o in body["outputs"] if not (o["name"] in seen or seen.add(o["name"]))
        ]
    return case


@schemathesis.check
def semantic_refusal(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schema-valid request refused with 422 names a documented rule that JSON Schema cannot
    express (the model's output overflows; strict range mode)."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if response.status_code != 422:
        return None
    rule = (json.loads(response.content or b"{}").get("detail") or [{}])[0].get("type")
    if rule not in SEMANTIC_RULES:
        raise AssertionError(f"schema-valid request refused with 422, rule {rule!r}")
    return None


def _csv_field(value: Any) -> str:
    """A number as itself; anything else as its JSON text, which no number reads as."""
    if type(value) in (int, float):
        return repr(value)
    return json.dumps(value)


@schemathesis.serializer("text/csv")
def records_csv(ctx: Any, value: Any) -> bytes:
    """/predict records as CSV: a header of every key seen (in order), one line per record (a key a
    record lacks: an empty field); a value that is not a list of records: its JSON text."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        return json.dumps(value).encode()
    header = list(dict.fromkeys(k for r in value for k in r))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_field(r[k]) if k in r else "" for k in header] for r in value)
    return out.getvalue().encode()


_LOCK = threading.Lock()


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """One JSON line per request into $NNSHIP_FUZZ_LOG: route, status, generation mode."""
    path = os.environ.get("NNSHIP_FUZZ_LOG")
    if not path:
        return
    call = {
        "route": case.operation.label,
        "status": response.status_code,
        "positive": bool(case.meta and case.meta.generation.mode.is_positive),
    }
    with _LOCK, open(path, "a") as f:
        f.write(json.dumps(call) + "\n")


CHECKS = "all"  # schemathesis's own checks and `semantic_refusal`


def run(url: str, max_examples: int, seed: int, workers: int, out: Path) -> int:
    """`schemathesis run` against the server's /docs.json; returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/docs.json",
        "--url",
        url,
        "--checks",
        CHECKS,
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--report",
        "json",
        "--report-json-path",
        str(out / "report.json"),
    ]
    calls = str(out / "calls.ndjson")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "nnship.loadtests.fuzz", "NNSHIP_FUZZ_LOG": calls}
    return subprocess.run(cmd, env=env, check=False).returncode


def summarize(out: Path) -> dict[str, Any]:
    """Requests, routes, statuses and the statuses of schema-valid requests (from the lines
    `after_call` wrote), failures by check and errors (from schemathesis's JSON report)."""
    routes: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    positive: Counter[int] = Counter()
    calls = out / "calls.ndjson"
    lines = calls.read_text().splitlines() if calls.exists() else []
    for line in lines:
        call = json.loads(line)
        routes[call["route"]] += 1
        statuses[call["status"]] += 1
        if call["positive"]:
            positive[call["status"]] += 1
    report = json.loads((out / "report.json").read_text())
    return {
        "requests": len(lines),
        "routes": dict(sorted(routes.items())),
        "statuses": dict(sorted(statuses.items())),
        "positive": dict(sorted(positive.items())),
        "failures": {f["title"]: f["count"] for f in report["failures"]},
        "errors": len(report["errors"]),
        "generated": report["test_cases"]["generated"],
    }


def markdown(summary: dict[str, Any], max_examples: int, seed: int, rc: int) -> str:
    lines = [
        "# Fuzzing the service against its OpenAPI document",
        "",
        f"`python -m nnship.loadtests.fuzz --max-examples {max_examples} --seed {seed}` "
        f"(schemathesis {schemathesis.__version__}; exit status {rc}).",
        "",
        f"- requests: {summary['requests']} over {len(summary['routes'])} routes "
        f"({summary['generated']} test cases generated)",
        f"- statuses: {summary['statuses']}",
        f"- statuses of schema-valid (positive) requests: {summary['positive']}",
        f"- failures by check: {summary['failures'] or 'none'}; errors: {summary['errors']}",
        "",
        "| route | requests |",
        "| --- | ---: |",
        *(f"| {route} | {n} |" for route, n in summary["routes"].items()),
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _serving(model: str | None) -> Iterator[str]:
    """A `bentoml serve` of `model` (default: a tiny iris model in a temporary store) on loopback."""
    from nnship.loadtests.benchmark import _free_port, _server, tiny_iris_model

    with tempfile.TemporaryDirectory(prefix="nnship-fuzz-home-") as home:
        tag = model or tiny_iris_model(Path(home), "iris-fuzz")
        url = f"http://127.0.0.1:{_free_port()}"
        cmd = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
        cmd += ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
        env = {"NNSHIP_MODEL": tag, "NNSHIP_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true"}
        with _server(cmd, env, url, "/readyz"):
            yield url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server on loopback")
    where.add_argument("--model", help="serve MODEL[:VERSION] from the store (default: tiny iris)")
    p.add_argument("--max-examples", type=int, default=100, help="generated cases per route")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="1: hypothesis is not thread-safe here")
    p.add_argument("--report", default="reports/fuzz.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(_serving(args.model))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nnship-fuzz-")))
        rc = run(url, args.max_examples, args.seed, args.workers, tmp)
        summary = summarize(tmp)
    text = markdown(summary, args.max_examples, args.seed, rc)
    print(text)
    atomic_write(args.report, lambda p: p.write_text(text))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
