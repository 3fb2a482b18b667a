"""Load sweeps: `nnship loadtest --sweep` steps the number of concurrent clients against a running
service and finds the knee (the highest throughput whose p99 stays within the SLO);
`nnship loadtest --batching-sweep MODEL` serves the model locally once per adaptive-batching setting
and sweeps each, to recommend the setting with the highest knee.

wrk drives the load (closed loop: each client sends its next request when the last is answered), so
the generator is not the bottleneck: Locust's single Python process saturates before the service
does on small models. Each step writes one row of the report; the report is a JSON file, a markdown
table and a throughput-latency chart under --out."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnship.errors import NnshipError
from nnship.io import atomic_write, atomic_write_json
from nnship.loadtests.wrk import INSTALL_HINT, MAX_BODIES, lua_script, run_wrk

log = logging.getLogger(__name__)

CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_BATCH_SIZES = (1, 8, 32, 128)
MAX_WAITS_MS = (0.0, 1.0, 2.0, 5.0)
OVER_SLO_STOP = 2  # consecutive steps over the SLO that end a sweep: the curve is past its knee
WARMUP_S = 1  # unrecorded load before the first step: lazy initialisation, first batches
REPORT_FORMAT = "nnship-sweep/1"


@dataclass
class Step:
    """One step of a sweep: wrk's figures at `concurrency` clients."""

    concurrency: int
    rps: float  # answered requests per second
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx answers and socket errors (refused, reset, timed out)

    def meets(self, slo_p99_ms: float) -> bool:
        return self.errors == 0 and self.requests > 0 and self.p99_ms <= slo_p99_ms


@dataclass
class Sweep:
    """A whole sweep of one server, its knee and its verdict."""

    model: str
    server: str
    slo_p99_ms: float
    rows_per_request: int
    step_seconds: int
    steps: list[Step] = field(default_factory=list)

    @property
    def knee(self) -> Step | None:
        """The step of highest throughput among those within the SLO (ties: the fewer clients)."""
        return max(
            (s for s in self.steps if s.meets(self.slo_p99_ms)),
            key=lambda s: (s.rps, -s.concurrency),
            default=None,
        )

    def verdict(self) -> tuple[bool, str]:
        """(passed, one line): the knee, or why there is none; any error fails the sweep."""
        slo = f"p99 <= {self.slo_p99_ms:g} ms"
        erring = [s for s in self.steps if s.errors]
        knee = self.knee
        if knee is None:
            if not self.steps:
                return False, "no step ran"
            best = min(self.steps, key=lambda s: s.p99_ms)
            why = f"lowest p99 {best.p99_ms:.1f} ms at {_clients(best.concurrency)}"
            if erring:
                why += f"; errors at {', '.join(_clients(s.concurrency) for s in erring)}"
            return False, f"FAIL: no step meets the SLO {slo} with zero errors ({why})"
        line = (
            f"knee: {_clients(knee.concurrency)}, {knee.rps:,.0f} req/s ({knee.rows_per_s:,.0f} "
            f"rows/s) at p99 {knee.p99_ms:.1f} ms (SLO {slo})"
        )
        if erring:
            first = erring[0]
            return False, (
                f"FAIL: {first.errors} errors at {_clients(first.concurrency)} "
                f"(non-2xx answers or socket errors); {line}"
            )
        return True, line

    def to_json(self) -> dict:
        passed, line = self.verdict()
        knee = self.knee
        return {
            "format": REPORT_FORMAT,
            "model": self.model,
            "server": self.server,
            "generator": "wrk",
            "slo_p99_ms": self.slo_p99_ms,
            "rows_per_request": self.rows_per_request,
            "step_seconds": self.step_seconds,
            "steps": [asdict(s) | {"meets_slo": s.meets(self.slo_p99_ms)} for s in self.steps],
            "knee": None if knee is None else asdict(knee),
            "passed": passed,
            "verdict": line,
        }


def _clients(n: int) -> str:
    return f"{n} client{'s' if n != 1 else ''}"


def int_list(text: str) -> list[int]:
    """ "1,2,4" -> [1, 2, 4]: positive integers, for argparse."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of integers") from e
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: integers of at least 1, comma-separated")
    return values


def float_list(text: str) -> list[float]:
    """ "0,1,2.5" -> [0.0, 1.0, 2.5]: non-negative numbers, for argparse."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of numbers") from e
    if not values or min(values) < 0 or not np.isfinite(values).all():
        raise argparse.ArgumentTypeError(f"{text!r}: finite numbers of at least 0, comma-separated")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweeps (wrk)")
    g.add_argument(
        "--sweep",
        action="store_true",
        help="step the concurrent clients against --host and report the knee: the highest "
        "throughput whose p99 stays within --slo-p99-ms",
    )
    g.add_argument(
        "--batching-sweep",
        metavar="MODEL",
        help="serve MODEL[:VERSION] (or a package directory) here once per --max-batch-size and "
        "--max-wait-ms pair, sweep each, and recommend the pair with the highest knee",
    )
    g.add_argument(
        "--concurrency",
        type=int_list,
        default=list(CONCURRENCY),
        help="concurrent clients of each step (default 1,2,4,...,256)",
    )
    g.add_argument("--step-duration", type=int, default=10, help="seconds per step (default 10)")
    g.add_argument(
        "--rows-per-request", type=int, default=1, help="rows in each request body (default 1)"
    )
    g.add_argument(
        "--max-batch-size",
        type=int_list,
        default=list(MAX_BATCH_SIZES),
        help="--batching-sweep: adaptive batching's batch limits (default 1,8,32,128)",
    )
    g.add_argument(
        "--max-wait-ms",
        type=float_list,
        default=list(MAX_WAITS_MS),
        help="--batching-sweep: adaptive batching's waits for a fuller batch (default 0,1,2,5)",
    )
    g.add_argument(
        "--out",
        default="reports/loadtest-sweep",
        help="folder of the sweep's JSON, table and chart",
    )
    g.add_argument(
        "--server-label",
        metavar="TEXT",
        help="--sweep: how the report and chart name the server (default: the --host URL)",
    )


def check_arguments(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise NnshipError(INSTALL_HINT)
    if args.step_duration < 1:
        raise NnshipError(f"--step-duration {args.step_duration}: at least 1 second")
    if args.rows_per_request < 1:
        raise NnshipError(f"--rows-per-request {args.rows_per_request}: at least 1")


def sweep(
    host: str,
    bodies: list[str],
    headers: dict[str, str],
    concurrency: list[int],
    seconds: int,
    into: Sweep,
    work: Path,
) -> Sweep:
    """Run the steps in order into `into`, stopping after OVER_SLO_STOP steps in a row over the
    SLO; each step's row is logged as it lands."""
    script = lua_script(bodies, work / "sweep.lua", headers)
    _wrk(host, script, min(4, max(concurrency)), WARMUP_S)
    over = 0
    for c in concurrency:
        r = _wrk(host, script, c, seconds)
        step = Step(
            concurrency=c,
            rps=r["rps"],
            rows_per_s=r["rps"] * into.rows_per_request,
            p50_ms=r["p50_ms"],
            p90_ms=r["p90_ms"],
            p99_ms=r["p99_ms"],
            requests=int(r["requests"]),
            errors=int(r["errors"]),
        )
        into.steps.append(step)
        log.info(
            "%4d clients: %8.0f req/s  p50 %7.2f ms  p90 %7.2f ms  p99 %7.2f ms  %d errors",
            c,
            step.rps,
            step.p50_ms,
            step.p90_ms,
            step.p99_ms,
            step.errors,
        )
        over = 0 if step.p99_ms <= into.slo_p99_ms else over + 1
        if over == OVER_SLO_STOP:
            log.info("two steps in a row over the SLO: the sweep stops here")
            break
    return into


def _wrk(host: str, script: Path, clients: int, seconds: int) -> dict[str, float]:
    try:
        return run_wrk(host, script, clients, seconds, timeout=seconds + 60)
    except subprocess.CalledProcessError as e:
        said = " ".join((e.stderr or e.stdout or "").split())[:300]
        raise NnshipError(f"wrk failed against {host} (exit {e.returncode}): {said}") from e
    except subprocess.TimeoutExpired as e:
        raise NnshipError(f"wrk did not finish a {seconds} s step against {host}") from e
    except ValueError as e:
        raise NnshipError(f"wrk against {host}: {e}") from e


def bodies_of(rows: np.ndarray, per_request: int) -> list[str]:
    """JSON /predict bodies of `per_request` consecutive rows each (rows reused in a cycle)."""
    count = min(MAX_BODIES, -(-len(rows) // per_request))  # every row used, up to MAX_BODIES
    picked = rows[np.arange(count * per_request) % len(rows)]
    return [
        json.dumps({"inputs": picked[i * per_request : (i + 1) * per_request].tolist()})
        for i in range(count)
    ]


def run_sweep(args: argparse.Namespace, host: str, served, rows: np.ndarray) -> int:
    """`nnship loadtest --host URL --sweep`: sweep, write the report, print the table and knee."""
    from nnship.loadtests.rows import auth_headers

    result = Sweep(
        model=served.name,
        server=args.server_label or host,
        slo_p99_ms=args.slo_p99_ms,
        rows_per_request=args.rows_per_request,
        step_seconds=args.step_duration,
    )
    with tempfile.TemporaryDirectory(prefix="nnship-sweep-") as tmp:
        sweep(
            host,
            bodies_of(rows, args.rows_per_request),
            auth_headers(os.environ.get("NNSHIP_API_KEY")),
            args.concurrency,
            args.step_duration,
            result,
            Path(tmp),
        )
    paths = write_sweep(result, Path(args.out))
    print_table(result)
    passed, line = result.verdict()
    print(f"report: {', '.join(str(p) for p in paths)}")
    print(line)
    return 0 if passed else 1


def markdown(result: Sweep) -> str:
    knee = result.knee
    lines = [
        f"# Load sweep: {result.model} at {result.server}",
        "",
        f"wrk, {result.step_seconds} s per step, {result.rows_per_request} row(s) per POST /predict "
        f"request; SLO: p99 <= {result.slo_p99_ms:g} ms with zero errors.",
        "",
        "| clients | req/s | rows/s | p50 ms | p90 ms | p99 ms | errors | within SLO |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in result.steps:
        mark = "yes" if s.meets(result.slo_p99_ms) else "no"
        if s is knee:
            mark += " (knee)"
        lines.append(
            f"| {s.concurrency} | {s.rps:,.0f} | {s.rows_per_s:,.0f} | {s.p50_ms:.2f} "
            f"| {s.p90_ms:.2f} | {s.p99_ms:.2f} | {s.errors} | {mark} |"
        )
    return "\n".join([*lines, "", result.verdict()[1], ""])


def write_sweep(result: Sweep, out: Path) -> list[Path]:
    """sweep.json, sweep.md and sweep.png under `out`, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    return [
        atomic_write_json(out / "sweep.json", result.to_json()),
        atomic_write(out / "sweep.md", lambda p: p.write_text(text)),
        draw_sweep(result, out / "sweep.png"),
    ]


def print_table(result: Sweep) -> None:
    from rich.console import Console
    from rich.table import Table

    knee = result.knee
    table = Table(title=f"{result.model} at {result.server}", title_justify="left")
    for name in ("clients", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms", "errors"):
        table.add_column(name, justify="right")
    table.add_column("")
    for s in result.steps:
        within = s.meets(result.slo_p99_ms)
        table.add_row(
            str(s.concurrency),
            f"{s.rps:,.0f}",
            f"{s.rows_per_s:,.0f}",
            f"{s.p50_ms:.2f}",
            f"{s.p90_ms:.2f}",
            f"{s.p99_ms:.2f}",
            str(s.errors),
            "knee" if s is knee else ("" if within else "over SLO"),
            style="bold green" if s is knee else (None if within else "dim"),
        )
    Console(width=100).print(table)


def draw_sweep(result: Sweep, path: Path) -> Path:
    """p50 and p99 against throughput, each point labelled with its clients; the SLO line; the
    knee circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rps = [s.rps for s in result.steps]
    ax.plot(rps, [s.p50_ms for s in result.steps], "o-", color="tab:blue", label="p50")
    ax.plot(rps, [s.p99_ms for s in result.steps], "s-", color="tab:orange", label="p99")
    for s in result.steps:
        ax.annotate(str(s.concurrency), (s.rps, s.p99_ms), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)  # fmt: skip
    _slo_and_knee(ax, result)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    _log_ms(ax)
    ax.margins(x=0.08, y=0.1)
    ax.legend(loc="upper left", framealpha=0.9)
    ax.set_title(
        f"{result.model} at {result.server}\nSLO p99 ≤ {result.slo_p99_ms:g} ms "
        "(numbers: concurrent clients)",
        fontsize=11,
    )
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def _log_ms(ax) -> None:
    """A log latency axis labelled in plain milliseconds (2, 5, 10, 20 rather than 2×10⁰)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.grid(True, which="both", alpha=0.3)


def _slo_and_knee(ax, result: Sweep) -> None:
    """The SLO as a dashed line; the knee circled, named in the legend."""
    ax.axhline(result.slo_p99_ms, color="tab:red", linestyle="--", label="SLO (p99)")
    knee = result.knee
    if knee is not None:
        ax.plot(
            [knee.rps],
            [knee.p99_ms],
            "o",
            markersize=16,
            fillstyle="none",
            markeredgewidth=2,
            color="tab:green",
            label=f"knee: {_clients(knee.concurrency)}, {knee.rps:,.0f} req/s, "
            f"p99 {knee.p99_ms:.1f} ms",
        )


# --- the batching sweep --------------------------------------------------------------------------


@dataclass
class Setting:
    max_batch_size: int
    max_wait_ms: float

    @property
    def label(self) -> str:
        return f"batch {self.max_batch_size}, wait {self.max_wait_ms:g} ms"


def recommend(results: list[tuple[Setting, Sweep]]) -> tuple[Setting, Sweep] | None:
    """The setting with the highest knee throughput (ties: the lower p99 at the knee)."""
    scored = [(s, r) for s, r in results if r.knee is not None]
    return max(scored, key=lambda sr: (sr[1].knee.rps, -sr[1].knee.p99_ms), default=None)


def batching_verdict(results: list[tuple[Setting, Sweep]], slo_p99_ms: float) -> tuple[bool, str]:
    best = recommend(results)
    if best is None:
        return False, (
            f"FAIL: no batching setting has a step within the SLO p99 <= {slo_p99_ms:g} ms with "
            "zero errors"
        )
    setting, result = best
    knee = result.knee
    return True, (
        f"recommended: --max-batch-size {setting.max_batch_size} --max-wait-ms "
        f"{setting.max_wait_ms:g} (knee {knee.rps:,.0f} req/s at {_clients(knee.concurrency)}, "
        f"p99 {knee.p99_ms:.1f} ms; SLO p99 <= {slo_p99_ms:g} ms)"
    )


def run_batching_sweep(args: argparse.Namespace) -> int:
    """`nnship loadtest --batching-sweep MODEL`: one local `nnship serve` (one worker, a free port)
    per setting, each swept as --sweep does, then the report and the recommended setting."""
    from nnship.loadtests.benchmark import _free_port, _server
    from nnship.loadtests.rows import auth_headers, served_model
    from nnship.loadtests.slo import request_rows
    from nnship.package import load_package

    check_arguments(args)
    load_package(args.batching_sweep)  # a missing or tampered package: one line, before any start
    headers = auth_headers(os.environ.get("NNSHIP_API_KEY"))
    settings = [Setting(b, w) for b, w in itertools.product(args.max_batch_size, args.max_wait_ms)]
    results: list[tuple[Setting, Sweep]] = []
    with tempfile.TemporaryDirectory(prefix="nnship-sweep-") as tmp:
        for setting in settings:
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "nnship.cli", "serve", args.batching_sweep]
            cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            cmd += ["--max-batch-size", str(setting.max_batch_size)]
            cmd += ["--max-wait-ms", str(setting.max_wait_ms)]
            print(f"serving {args.batching_sweep} with {setting.label} at {url}", flush=True)
            try:
                with _server(cmd, {"BENTOML_DO_NOT_TRACK": "true"}, url, "/readyz"):
                    served = served_model(url, args.model, headers)
                    rows, _ = request_rows(args, served)
                    result = Sweep(
                        model=served.name,
                        server=f"nnship serve, 1 worker, {setting.label}",
                        slo_p99_ms=args.slo_p99_ms,
                        rows_per_request=args.rows_per_request,
                        step_seconds=args.step_duration,
                    )
                    sweep(
                        url,
                        bodies_of(rows, args.rows_per_request),
                        headers,
                        args.concurrency,
                        args.step_duration,
                        result,
                        Path(tmp),
                    )
            except RuntimeError as e:  # the server exited or never became ready
                raise NnshipError(
                    f"nnship serve {args.batching_sweep} with {setting.label}: {e} (run it by "
                    "hand to see why)"
                ) from e
            results.append((setting, result))
            print(f"  {result.verdict()[1]}", flush=True)
    passed, line = batching_verdict(results, args.slo_p99_ms)
    paths = write_batching(results, args, Path(args.out), line)
    print_batching(results)
    print(f"report: {', '.join(str(p) for p in paths)}")
    print(line)
    return 0 if passed else 1


def batching_json(results: list[tuple[Setting, Sweep]], model: str, slo: float, line: str) -> dict:
    best = recommend(results)
    return {
        "format": REPORT_FORMAT,
        "model": model,
        "generator": "wrk",
        "slo_p99_ms": slo,
        "settings": [
            {"max_batch_size": s.max_batch_size, "max_wait_ms": s.max_wait_ms, **r.to_json()}
            for s, r in results
        ],
        "recommended": None
        if best is None
        else {"max_batch_size": best[0].max_batch_size, "max_wait_ms": best[0].max_wait_ms},
        "passed": best is not None,
        "verdict": line,
    }


def write_batching(
    results: list[tuple[Setting, Sweep]], args: argparse.Namespace, out: Path, line: str
) -> list[Path]:
    """batching-sweep.json, .md and .png under `out`, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    model = results[0][1].model
    rows = [
        "| max batch size | max wait ms | knee req/s | knee clients | knee p99 ms | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, r in results:
        k = r.knee
        cells = (
            ("-", "-", "-") if k is None else (f"{k.rps:,.0f}", k.concurrency, f"{k.p99_ms:.2f}")
        )
        errors = sum(step.errors for step in r.steps)
        rows.append(
            f"| {s.max_batch_size} | {s.max_wait_ms:g} | {' | '.join(map(str, cells))} | {errors} |"
        )
    text = "\n".join(
        [
            f"# Batching sweep: {model}",
            "",
            f"`nnship serve {args.batching_sweep}` with one worker per setting; wrk, "
            f"{args.step_duration} s per step, clients {','.join(map(str, args.concurrency))}, "
            f"{args.rows_per_request} row(s) per request; SLO p99 <= {args.slo_p99_ms:g} ms.",
            "",
            *rows,
            "",
            line,
            "",
        ]
    )
    return [
        atomic_write_json(
            out / "batching-sweep.json", batching_json(results, model, args.slo_p99_ms, line)
        ),
        atomic_write(out / "batching-sweep.md", lambda p: p.write_text(text)),
        draw_batching(results, out / "batching-sweep.png", args.slo_p99_ms),
    ]


def print_batching(results: list[tuple[Setting, Sweep]]) -> None:
    from rich.console import Console
    from rich.table import Table

    best = recommend(results)
    table = Table(title="knee per batching setting", title_justify="left")
    for name in ("max batch", "max wait ms", "knee req/s", "clients", "p99 ms", "errors"):
        table.add_column(name, justify="right")
    for s, r in results:
        k = r.knee
        table.add_row(
            str(s.max_batch_size),
            f"{s.max_wait_ms:g}",
            *(
                ("-", "-", "-")
                if k is None
                else (f"{k.rps:,.0f}", str(k.concurrency), f"{k.p99_ms:.2f}")
            ),
            str(sum(step.errors for step in r.steps)),
            style="bold green" if best is not None and s is best[0] else None,
        )
    Console(width=100).print(table)


def draw_batching(results: list[tuple[Setting, Sweep]], path: Path, slo: float) -> Path:
    """Left: p99 against throughput, one line per setting. Right: the knee throughput of each
    (max batch size, max wait) pair as a heatmap, the recommended one outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, heat) = plt.subplots(1, 2, figsize=(13, 5.2))
    for s, r in results:
        curves.plot([x.rps for x in r.steps], [x.p99_ms for x in r.steps], "o-", label=s.label)
    curves.axhline(slo, color="tab:red", linestyle="--", label="SLO (p99)")
    curves.set_xlabel("throughput (requests/s)")
    curves.set_ylabel("p99 latency (ms)")
    _log_ms(curves)
    curves.legend(fontsize=7)
    curves.set_title("p99 against throughput, per setting", fontsize=10)

    best = recommend(results)
    batches = sorted({s.max_batch_size for s, _ in results})
    waits = sorted({s.max_wait_ms for s, _ in results})
    grid = np.full((len(batches), len(waits)), np.nan)
    for s, r in results:
        grid[batches.index(s.max_batch_size), waits.index(s.max_wait_ms)] = (
            r.knee.rps if r.knee is not None else np.nan
        )
    image = heat.imshow(np.nan_to_num(grid), cmap="viridis", aspect="auto", origin="lower")
    fig.colorbar(image, ax=heat, label="knee throughput (requests/s)")
    heat.set_xticks(range(len(waits)), [f"{w:g}" for w in waits])
    heat.set_yticks(range(len(batches)), [str(b) for b in batches])
    heat.set_xlabel("max wait (ms)")
    heat.set_ylabel("max batch size")
    light = np.nanmin(grid) + 0.6 * (np.nanmax(grid) - np.nanmin(grid)) if best else np.inf
    for (i, j), v in np.ndenumerate(grid):
        heat.text(j, i, "none" if np.isnan(v) else f"{v:,.0f}", ha="center", va="center",
                  color="black" if v >= light else "white", fontsize=9)  # fmt: skip
    if best is not None:
        i, j = batches.index(best[0].max_batch_size), waits.index(best[0].max_wait_ms)
        heat.add_patch(
            plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=3)
        )
    heat.set_title("knee throughput within the SLO (outlined: recommended)", fontsize=10)
    fig.suptitle(
        f"{results[0][1].model}: nnship serve, 1 worker, per batching setting; SLO p99 ≤ {slo:g} ms",
        fontsize=12,
    )
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


# --- the picture in the README -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Sweep the default model (`make demo`'s cnn on digits) served by `nnship serve` with one
    worker, in a throwaway model store: the report under --report, its chart copied to --out."""
    from nnship.export.package import ExportOptions, export_run
    from nnship.loadtests import slo
    from nnship.loadtests.benchmark import _free_port, _server
    from nnship.runner import setup_logging
    from nnship.training.train import TrainConfig, train

    p = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images/loadtest-sweep.png")
    p.add_argument("--report", default="reports/loadtest-sweep")
    p.add_argument("--step-duration", type=int, default=5)
    p.add_argument("--slo-p99-ms", type=float, default=50.0)
    args = p.parse_args(argv)
    setup_logging()
    with tempfile.TemporaryDirectory(prefix="nnship-sweep-") as tmp:
        os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
        run = str(Path(tmp) / "runs" / "digits-cnn")
        train(TrainConfig(model="cnn", dataset="digits", out=run))
        export_run(ExportOptions(run, name="digits-cnn"))
        url = f"http://127.0.0.1:{_free_port()}"
        cmd = [sys.executable, "-m", "nnship.cli", "serve", "digits-cnn:latest", "--workers", "1"]
        cmd += ["--port", url.rsplit(":", 1)[1]]
        with _server(cmd, {"BENTOML_DO_NOT_TRACK": "true"}, url, "/readyz"):
            parser = argparse.ArgumentParser()
            slo.add_arguments(parser)
            flags = ["--host", url, "--sweep", "--out", args.report, "--step-duration"]
            flags += [str(args.step_duration), "--slo-p99-ms", str(args.slo_p99_ms)]
            flags += ["--server-label", f"nnship serve, 1 worker, {os.cpu_count()} cores"]
            code = slo.run(parser.parse_args(flags))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, lambda p: shutil.copyfile(Path(args.report) / "sweep.png", p))
    print(f"{args.out}: the chart of {args.report}/sweep.md")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
