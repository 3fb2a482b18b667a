"""Write base/prometheusrule.yaml: the Prometheus Operator's PrometheusRule holding the groups of
deploy/prometheus/*.rules.yml, so both deployments alert alike (checked by tests/integration/test_k8s.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from nnship.io import atomic_write

DEPLOY = Path(__file__).resolve().parents[1]
RULE_FILES = ("recording.rules.yml", "alerts.rules.yml")
TARGET = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# Generated from deploy/prometheus/*.rules.yml by `make k8s-rules`; edit those, not this.\n"
)


def groups() -> list[dict]:
    """The rule groups of deploy/prometheus, in file order."""
    return [
        g
        for f in RULE_FILES
        for g in yaml.safe_load((DEPLOY / "prometheus" / f).read_text())["groups"]
    ]


def block_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """Multi-line expressions as literal blocks, as they are written in the rule files."""
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def render() -> str:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "nnship"},
        "spec": {"groups": groups()},
    }
    dumper = type("Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(str, block_text)
    return HEADER + yaml.dump(rule, Dumper=dumper, sort_keys=False, allow_unicode=True, width=1000)


if __name__ == "__main__":
    text = render()
    atomic_write(TARGET, lambda p: p.write_text(text))
