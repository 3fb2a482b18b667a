"""The Grafana dashboard's panels drawn with matplotlib from a real Prometheus scraping real traffic.

    python -m nnship.loadtests.dashboard [--out docs/images/grafana-dashboard.png] [--seconds 90]

Serves a tiny iris model (trained into a temporary store), starts Debian's `prometheus` scraping it
every second, and sends traffic in three phases: valid rows, then also refused requests (wrong
shape, malformed JSON) and rows outside the training range, then rows shifted by two standard
deviations (drift). Every panel of deploy/grafana/dashboards/nnship.json is then drawn where its
gridPos puts it: each target's PromQL expression (Grafana's variables given values) evaluated over
the traffic with /api/v1/query_range, its legend from legendFormat, a table panel from an instant
query. It is the dashboard's queries drawn by matplotlib, not a Grafana screenshot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import yaml

from nnship.errors import NnshipError
from nnship.io import atomic_write

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "nnship.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
STEP_S = 2
# Grafana's $__rate_interval for a 1 s scrape and a 2 s step is 4 s; a longer window draws the
# same rates smoother over this short run
VARIABLES = {"$__rate_interval": "15s", "$job": ".+"}
UNITS = {"s": "seconds", "reqps": "per second", "percentunit": "share", "none": ""}


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str
    unit: str
    grid: tuple[int, int, int, int]  # x, y, w, h in Grafana's 24-column grid
    targets: tuple[Target, ...]


def panels(dashboard: dict) -> list[Panel]:
    """Every panel of a dashboard with its targets' expressions, variables given values."""
    found = []
    for p in dashboard["panels"]:
        g = p["gridPos"]
        targets = tuple(
            Target(expr=substitute(t["expr"]), legend=t.get("legendFormat", ""))
            for t in p.get("targets", [])
        )
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "none")
        found.append(Panel(p["title"], p["type"], unit, (g["x"], g["y"], g["w"], g["h"]), targets))
    return found


def substitute(expr: str) -> str:
    """An expression as Grafana sends it, its variables replaced by VARIABLES."""
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        raise NnshipError(f"dashboard expression with an unknown variable: {expr}")
    return expr


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' label value; empty: all labels."""
    named = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    return named or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict]:
    r = httpx.get(
        f"{prom}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": STEP_S},
        timeout=30,
    )
    body = r.json()
    if body.get("status") != "success":
        raise NnshipError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


def query(prom: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=30).json()
    if body.get("status") != "success":
        raise NnshipError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


def draw(prom: str, start: float, end: float, out: Path, title: str) -> int:
    """Every panel's queries evaluated over [start, end] and drawn into `out`; returns the number
    of series drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(DASHBOARD.read_text())
    all_panels = panels(board)
    rows = max(p.grid[1] + p.grid[3] for p in all_panels)
    fig = plt.figure(figsize=(18, rows * 0.62))
    grid = fig.add_gridspec(rows, 24, hspace=1.6, wspace=1.2, top=0.95, bottom=0.03)
    drawn = 0
    for panel in all_panels:
        x, y, w, h = panel.grid
        ax = fig.add_subplot(grid[y : y + h - 1, x : x + w])
        ax.set_title(panel.title, fontsize=10, loc="left")
        if panel.kind == "table":
            drawn += table(ax, prom, panel)
            continue
        for target in panel.targets:
            for series in query_range(prom, target.expr, start, end):
                t, v = np.array(series["values"], dtype=float).T
                ax.plot(t - start, v, label=legend(target.legend, series["metric"]), lw=1.4)
                drawn += 1
        ax.set_xlim(0, end - start)
        ax.set_xlabel("seconds into the traffic", fontsize=8)
        ax.set_ylabel(UNITS.get(panel.unit, panel.unit), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=13, y=0.975)
    atomic_write(out, lambda path: fig.savefig(path, format="png", dpi=80, bbox_inches="tight"))
    plt.close(fig)
    return drawn


def table(ax, prom: str, panel: Panel) -> int:
    """A table panel: one row per series of its instant queries, one column per label."""
    ax.axis("off")
    series = [s["metric"] for t in panel.targets for s in query(prom, t.expr)]
    if not series:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return 0
    columns = sorted({k for s in series for k in s})
    cells = [[s.get(c, "") for c in columns] for s in series]
    ax.table(cellText=cells, colLabels=columns, loc="upper left", cellLoc="left").scale(1, 1.4)
    return len(series)


@contextlib.contextmanager
def stack(home: Path, model: str) -> Iterator[tuple[str, str]]:
    """(service URL, Prometheus URL): the model served and Prometheus scraping it every second."""
    from nnship.loadtests.benchmark import _free_port, _server

    if shutil.which("prometheus") is None:
        raise NnshipError("prometheus is not installed (Debian: apt-get install prometheus)")
    url = f"http://127.0.0.1:{_free_port()}"
    serve = [sys.executable, "-m", "bentoml", "serve", "nnship.service.service:NnshipService"]
    serve += ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    env = {
        "NNSHIP_MODEL": model,
        "NNSHIP_THREADS": "1",
        "NNSHIP_DRIFT_WINDOW": "200",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS / f) for f in config.get("rule_files", [])]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [url.removeprefix("http://")]}]
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = f"127.0.0.1:{_free_port()}"
    prometheus = [
        "prometheus",
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'tsdb'}",
        f"--web.listen-address={prom}",
    ]
    with _server(serve, env, url, "/readyz"), _server(prometheus, {}, f"http://{prom}", "/-/ready"):
        yield url, f"http://{prom}"


def traffic(url: str, seconds: float, rows: np.ndarray) -> None:
    """Three phases of `seconds` / 3: valid rows at a varying rate; also refusals and rows outside
    the training range; rows shifted by two standard deviations."""
    rng = np.random.default_rng(0)
    shifted = rows + 2 * rows.std(0)
    far = rows[:1].copy()
    far[0, 0] = 50.0
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=30) as client:
        while (elapsed := time.monotonic() - start) < seconds:
            phase = int(3 * elapsed / seconds)
            pick = rng.choice(len(rows), size=int(rng.integers(1, 9)))
            batch = (shifted if phase == 2 else rows)[pick]
            client.post("/predict", json={"inputs": batch.tolist()})
            if phase >= 1:  # each kind at its own rate, so that their lines part
                if rng.random() < 0.3:
                    client.post("/predict", json={"inputs": far.tolist()})
                if rng.random() < 0.25:
                    client.post("/predict", json={"inputs": [batch[0, :2].tolist()]})  # shape
                if rng.random() < 0.1:
                    client.post(
                        "/predict", content=b"{", headers={"content-type": "application/json"}
                    )
            time.sleep(0.05 + 0.05 * np.sin(elapsed / 5) ** 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images/grafana-dashboard.png")
    p.add_argument("--seconds", type=float, default=90, help="traffic duration")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from nnship.loadtests.benchmark import tiny_iris_model
    from nnship.training.data import load_dataset, split

    rows = split(load_dataset("iris")).x_train
    with tempfile.TemporaryDirectory(prefix="nnship-dashboard-") as tmp:
        home = Path(tmp)
        model = tiny_iris_model(home, "iris")
        with stack(home, model) as (url, prom):
            start = time.time()
            traffic(url, args.seconds, rows)
            time.sleep(3)  # the last scrape and rule evaluation
            end = time.time()
            drawn = draw(prom, start, end, Path(args.out), f"nnship dashboard: {model}")
    log.info("%s: %d series drawn", args.out, drawn)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
