"""deploy/prometheus and deploy/grafana against real tools: promtool checks and unit-tests the rules,
and a real Prometheus server scrapes a running service, evaluates the rules and answers queries."""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from nnship.probe import wait_ready
from nnship.service.validation import REASONS
from tests.server import free_port, iris_env, running_server

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = [PROM / "recording.rules.yml", PROM / "alerts.rules.yml"]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "nnship.json"
ROW = [5.1, 3.5, 1.4, 0.2]
FAR = [50.0, 3.5, 1.4, 0.2]  # sepal length far outside the training range
VALID, OUTSIDE, WRONG_SHAPE, NOT_JSON = 12, 3, 4, 2  # requests of each kind

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (.ci/run installs it)"
)


@promtool
def test_promtool_checks_the_config_and_rules():
    out = subprocess.run(
        ["promtool", "check", "config", "prometheus.yml"],
        cwd=PROM,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 2 rule files found" in out.stdout


@promtool
def test_promtool_unit_tests_cover_every_alert_firing_and_not():
    out = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for alert in alert_names():
        outcomes = {bool(c["exp_alerts"]) for c in cases if c["alertname"] == alert}
        assert outcomes == {True, False}, f"{alert}: needs a firing and a quiet test"


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULE_FILES[1].read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"]]


def rule_exprs() -> list[str]:
    return [
        r["expr"]
        for f in RULE_FILES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    ]


def dashboard_exprs() -> list[str]:
    """The dashboard's queries with Grafana's variables given values, as Grafana would send them."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    return [e.replace("$__rate_interval", "1m").replace("$job", ".+") for e in exprs]


def test_the_dashboard_is_provisioning_ready():
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    metrics = " ".join(dashboard_exprs())
    for family in (
        "bentoml_service_request_total",
        "bentoml_service_request_duration_seconds_bucket",
        "nnship_inference_seconds_bucket",
        "nnship_batch_size_bucket",
        "nnship_requests_rejected_total",
        "nnship_predictions_total",
        "nnship_out_of_range_inputs_total",
        "nnship_feature_drift_psi",
    ):
        assert family in metrics, family
    assert "id" not in dash and "uid" in dash  # provisioned dashboards carry a uid, not an id


@pytest.fixture(scope="module")
def stack(iris_package, tmp_path_factory):
    """(service URL, Prometheus URL): the iris service and Prometheus scraping it every second."""
    tmp = tmp_path_factory.mktemp("prometheus")
    with running_server(iris_env(iris_package)) as (url, _):
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(f) for f in RULE_FILES]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [url.removeprefix("http://")]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_url = f"http://127.0.0.1:{free_port()}"
        with open(tmp / "prometheus.log", "w+") as log:
            proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address={prom_url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                ready = f"{prom_url}/-/ready"
                if not wait_ready(ready, timeout=60, alive=lambda: proc.poll() is None):
                    log.seek(0)
                    raise RuntimeError(f"prometheus not ready:\n{log.read()[-3000:]}")
                yield url, prom_url
            finally:
                proc.terminate()
                proc.wait(20)


def query(prom: str, expr: str) -> list[dict]:
    """An instant query's samples; a query Prometheus refuses fails the test with its error."""
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body.get('error')}"
    return body["data"]["result"]


def value(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def wait_for(prom: str, expr: str, expected: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := value(prom, expr)) != expected:
        assert time.monotonic() < deadline, f"{expr} = {got}, waited for {expected}"
        time.sleep(0.5)


def send(client: httpx.Client, valid: int, outside: int, wrong_shape: int, not_json: int) -> None:
    for _ in range(valid):
        assert client.post("/predict", json={"inputs": [ROW, ROW]}).status_code == 200
    for _ in range(outside):
        assert client.post("/predict", json={"inputs": [FAR]}).status_code == 200
    for _ in range(wrong_shape):
        assert client.post("/predict", json={"inputs": [ROW[:2]]}).status_code == 400
    for _ in range(not_json):
        r = client.post("/predict", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400


@pytest.fixture(scope="module")
def traffic(stack):
    """Valid, out-of-range and refused requests, all scraped: (service URL, Prometheus URL). One of
    each kind goes first and is scraped, so that every series exists before the rest (rate() counts
    no increase into a series' first sample)."""
    url, prom = stack
    requests = 'sum(bentoml_service_request_total{job="nnship",endpoint="/predict"})'
    with httpx.Client(base_url=url, timeout=30) as client:
        send(client, 1, 1, 1, 1)
        wait_for(prom, requests, 4)
        send(client, VALID - 1, OUTSIDE - 1, WRONG_SHAPE - 1, NOT_JSON - 1)
    wait_for(prom, requests, VALID + OUTSIDE + WRONG_SHAPE + NOT_JSON)
    return stack


@needs_prometheus
def test_the_nnship_series_arrive_with_their_labels(traffic, iris_package):
    url, prom = traffic
    instance = url.removeprefix("http://")
    (info,) = query(prom, "nnship_model_info")
    assert info["metric"] | {"onnx_sha256": "-"} == {
        "__name__": "nnship_model_info",
        "job": "nnship",
        "instance": instance,
        "model": "iris-served",
        "version": iris_package["version"],
        "variant": "fp32",
        "provider": "CPUExecutionProvider",
        "onnx_sha256": "-",
    }
    assert re.fullmatch(r"[0-9a-f]{64}", info["metric"]["onnx_sha256"])
    rejected = {
        s["metric"]["reason"]: float(s["value"][1])
        for s in query(prom, "nnship_requests_rejected_total")
    }
    assert set(rejected) == set(REASONS)
    assert rejected["shape"] == WRONG_SHAPE and rejected["malformed"] == NOT_JSON
    assert sum(rejected.values()) == WRONG_SHAPE + NOT_JSON
    predicted = query(prom, 'sum by (model) (nnship_predictions_total{job="nnship"})')
    assert [(s["metric"], float(s["value"][1])) for s in predicted] == [
        ({"model": "iris-served"}, 2 * VALID + OUTSIDE)
    ]
    labels = {s["metric"]["label"] for s in query(prom, "nnship_predictions_total")}
    assert labels == set(iris_package["output"]["labels"])
    outside = {
        s["metric"]["feature"]: float(s["value"][1])
        for s in query(prom, "nnship_out_of_range_inputs_total")
    }
    assert outside == {
        f: (OUTSIDE if f == "sepal length (cm)" else 0)
        for f in iris_package["input"]["feature_names"]
    }
    buckets = query(prom, 'nnship_inference_seconds_bucket{le="+Inf"}')
    assert {frozenset(s["metric"]) for s in buckets} == {
        frozenset({"__name__", "job", "instance", "model", "variant", "provider", "le"})
    }
    rows = value(prom, 'sum(nnship_batch_size_sum{job="nnship"})')
    assert rows == 2 * VALID + OUTSIDE + value(
        prom, "sum(nnship_batch_size_sum) - sum(nnship_batch_size_sum)"
    )
    codes = {
        s["metric"]["http_response_code"]: float(s["value"][1])
        for s in query(prom, 'bentoml_service_request_total{endpoint="/predict"}')
    }
    assert codes["200"] == VALID + OUTSIDE and codes["400"] == WRONG_SHAPE + NOT_JSON


@needs_prometheus
def test_rates_and_recording_rules_follow_the_traffic(traffic):
    _, prom = traffic
    wait_for(prom, 'count(rate(bentoml_service_request_total{endpoint="/predict"}[1m]) > 0)', 2)
    wait_for(prom, "count(nnship:requests:rate5m > 0)", 1)
    wait_for(prom, 'count(nnship:requests_rejected:rate5m{reason="shape"} > 0)', 1)
    # the SLO group evaluates on its own schedule: its ratios appear up to an interval later
    wait_for(prom, "nnship:request_errors:ratio_rate5m", 0)
    wait_for(prom, "nnship:requests_shed:ratio_rate5m", 0)  # 0 with no 503 series, not absent
    wait_for(prom, "nnship:request_slow:ratio_rate5m", 0)  # iris answers in milliseconds
    assert 0 < value(prom, "nnship:request_duration_seconds:p99_rate5m") <= 0.25


@needs_prometheus
def test_every_rule_and_dashboard_expression_evaluates(traffic):
    _, prom = traffic
    for expr in rule_exprs() + dashboard_exprs():
        query(prom, expr)
    deadline = time.monotonic() + 30
    while True:  # each rule evaluated at least once on the scraped data, without an error
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if all(r["health"] == "ok" for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(rules) == len(rule_exprs())
    assert [r["name"] for r in rules if r["health"] != "ok"] == [], [
        r.get("lastError") for r in rules
    ]


@needs_prometheus
def test_alerts_see_the_live_service(traffic):
    _, prom = traffic
    # the bad requests are a large share of this small traffic: the rejection alert starts pending
    wait_for(prom, 'count(ALERTS{alertname="NnshipRequestsRejected",reason="shape"})', 1)
    assert query(prom, 'ALERTS{alertname="NnshipModelNotReady"}') == []
    assert query(prom, 'ALERTS{alertname=~"Nnship(Error|Latency)Budget.*"}') == []
