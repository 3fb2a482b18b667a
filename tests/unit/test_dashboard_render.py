"""The dashboard renderer draws what deploy/grafana's JSON asks for: every panel, every expression."""

import json

import pytest

from nnship.errors import NnshipError
from nnship.loadtests import dashboard


def raw_targets() -> list[tuple[str, str]]:
    board = json.loads(dashboard.DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def test_every_panel_and_expression_comes_from_the_json():
    board = json.loads(dashboard.DASHBOARD.read_text())
    found = dashboard.panels(board)
    assert [p.title for p in found] == [p["title"] for p in board["panels"]]
    exprs = [(p.title, t.expr) for p in found for t in p.targets]
    assert exprs == [(title, dashboard.substitute(e)) for title, e in raw_targets()]
    assert all("$" not in e for _, e in exprs)


def test_a_new_panel_in_the_json_is_drawn_too():
    board = {
        "panels": [
            {
                "title": "Made up",
                "type": "timeseries",
                "gridPos": {"x": 0, "y": 0, "w": 24, "h": 4},
                "targets": [{"expr": 'sum(rate(made_up_total{job=~"$job"}[$__rate_interval]))'}],
            }
        ]
    }
    (panel,) = dashboard.panels(board)
    assert panel.targets[0].expr == 'sum(rate(made_up_total{job=~".+"}[15s]))'
    assert panel.unit == "none" and panel.grid == (0, 0, 24, 4)


def test_an_unknown_variable_is_named():
    with pytest.raises(NnshipError, match=r"unknown variable: rate\(x\[\$__range\]\)"):
        dashboard.substitute("rate(x[$__range])")


def test_legend_follows_grafanas_legend_format():
    labels = {"__name__": "m", "reason": "shape", "model": "iris"}
    assert dashboard.legend("{{reason}} ({{ model }})", labels) == "shape (iris)"
    assert dashboard.legend("", labels) == "reason=shape, model=iris"


def test_draw_queries_every_expression_of_the_json(monkeypatch, tmp_path):
    asked: list[str] = []

    def query_range(prom, expr, start, end):
        asked.append(expr)
        return [{"metric": {"model": "iris"}, "values": [[start, "1"], [end, "2"]]}]

    def query(prom, expr):
        asked.append(expr)
        return [{"metric": {"model": "iris", "version": "v1"}, "value": [0, "1"]}]

    monkeypatch.setattr(dashboard, "query_range", query_range)
    monkeypatch.setattr(dashboard, "query", query)
    out = tmp_path / "board.png"
    drawn = dashboard.draw("http://prometheus", 1000.0, 1090.0, out, "test")
    expected = [dashboard.substitute(e) for _, e in raw_targets()]
    assert sorted(asked) == sorted(expected) and drawn == len(expected)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
