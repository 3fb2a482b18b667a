"""deploy/k8s: both overlays render with `kubectl kustomize`, every core object is valid against the
pinned Kubernetes API schemas, and probes, ports, paths and rules match what the service serves."""

import argparse
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from nnship.service.cli import STOP_MARGIN_S, add_arguments
from nnship.service.security import ALWAYS_OPEN, OPEN
from nnship.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
JOBS_MOUNT = "/var/lib/nnship"  # the batch jobs' volume
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.31.0"  # the release validated against (the preStop `sleep` action is on from 1.30)
CUSTOM = {"ServiceMonitor", "PrometheusRule"}  # Prometheus Operator kinds: no schema in the API
KINDS = {
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
} | CUSTOM

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl not installed (.ci/run installs it)"
)


def render(overlay: str) -> dict[str, dict]:
    """The overlay's objects by kind."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    by_kind = {o["kind"]: o for o in objects}
    assert len(by_kind) == len(objects), "one object per kind"
    return by_kind


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def overlay(request):
    return request.param, render(request.param)


def container(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def env(c) -> dict:
    return {e["name"]: e for e in c["env"]}


def test_every_core_object_is_valid_for_the_pinned_kubernetes(overlay):
    _, objs = overlay
    assert set(objs) == KINDS
    for kind, obj in objs.items():
        if kind not in CUSTOM:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_validator_refuses_a_broken_object(overlay):
    _, objs = overlay
    deployment = yaml.safe_load(yaml.safe_dump(objs["Deployment"]))
    container(deployment)["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
    container(deployment)["ports"][0] = {"containerPort": 3000, "hostPorts": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_probes_and_ports_are_what_the_service_serves(overlay):
    _, objs = overlay
    c = container(objs["Deployment"])
    (port,) = c["ports"]
    serve = argparse.ArgumentParser()
    add_arguments(serve)
    default_port = serve.parse_args(["m"]).port
    assert port["containerPort"] == default_port == 3000 and port["name"] == "http"
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz" and "/readyz" in OPEN
    assert probes["livenessProbe"]["path"] == "/livez" and "/livez" in ALWAYS_OPEN
    assert probes["startupProbe"]["path"] in ALWAYS_OPEN
    assert all(p["port"] == "http" for p in probes.values())
    (svc_port,) = objs["Service"]["spec"]["ports"]
    assert svc_port["targetPort"] == "http"
    (monitor,) = objs["ServiceMonitor"]["spec"]["endpoints"]
    assert monitor["port"] == svc_port["name"] and monitor["path"] == "/metrics" in OPEN
    (rule,) = objs["NetworkPolicy"]["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_selectors_reach_the_pods(overlay):
    _, objs = overlay
    pod_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        objs["Deployment"]["spec"]["selector"]["matchLabels"],
        objs["Service"]["spec"]["selector"],
        objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        objs["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items()
    monitor = objs["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= objs["Service"]["metadata"]["labels"].items()
    target = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        objs["Deployment"]["metadata"]["name"],
    )


def test_runs_locked_down_with_the_key_from_a_secret(overlay):
    _, objs = overlay
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = container(objs["Deployment"])
    assert (
        pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    )
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert env(c)[Settings().api_key_env]["valueFrom"]["secretKeyRef"]["name"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    # the serving image writes only to /tmp (HOME, BENTOML_HOME) and to the batch jobs' volume
    assert mounts == {"/tmp", JOBS_MOUNT}
    containerfile = (ROOT / "deploy" / "container" / "Containerfile").read_text()
    assert "HOME=/tmp" in containerfile and "BENTOML_HOME=/tmp/" in containerfile
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in c["volumeMounts"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])


def _quantity(text: str) -> int:
    """A Kubernetes binary quantity ("64Mi", "2Gi") in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def test_batch_jobs_have_room_on_a_disk_volume(overlay):
    """Each job holds its upload in BentoML's task store, as its input and beside its result: the
    jobs folder and the task store sit on a disk-backed volume sized for every running and queued
    job at the upload limit, not on the small memory-backed /tmp."""
    _, objs = overlay
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = container(objs["Deployment"])
    e = env(c)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == JOBS_MOUNT)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert "medium" not in volume["emptyDir"]  # on the node's disk, not in the pod's memory
    assert e["NNSHIP_JOBS_DIR"]["value"].startswith(JOBS_MOUNT + "/")
    assert e["BENTOML_RESULT_STORE"]["value"].startswith(JOBS_MOUNT + "/")
    s = Settings(**{k: int(v["value"]) for k, v in _settings_env(e).items()})
    held = 3 * (s.max_jobs + s.max_queued_jobs) * s.max_job_bytes
    assert _quantity(volume["emptyDir"]["sizeLimit"]) >= held
    assert _quantity(c["resources"]["limits"]["ephemeral-storage"]) >= held


def _settings_env(e: dict) -> dict:
    """The manifest's plain-valued NNSHIP_* job settings, by Settings field name."""
    names = ("max_jobs", "max_queued_jobs", "max_job_bytes")
    return {
        n: e[f"NNSHIP_{n.upper()}"] for n in names if "value" in e.get(f"NNSHIP_{n.upper()}", {})
    }


def test_termination_grace_covers_the_drain(overlay):
    _, objs = overlay
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = container(objs["Deployment"])
    grace = float(env(c).get("NNSHIP_GRACE_S", {}).get("value", Settings().grace_s))
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + STOP_MARGIN_S


def test_the_gpu_overlay_asks_for_a_gpu_and_the_gpu_image(overlay):
    name, objs = overlay
    c = container(objs["Deployment"])
    image_tag = c["image"].rsplit(":", 1)[1]
    gpus = {k: c["resources"][k].get("nvidia.com/gpu") for k in ("requests", "limits")}
    if name == "gpu":
        assert image_tag == "gpu" and gpus == {"requests": "1", "limits": "1"}
        assert env(c)["NNSHIP_REQUIRE_GPU"]["value"] == "true"
    else:
        assert image_tag == "cpu" and gpus == {"requests": None, "limits": None}


def test_the_prometheus_rule_carries_the_rules_of_deploy_prometheus(overlay):
    _, objs = overlay
    generator = runpy.run_path(str(K8S / "prometheusrule.py"))
    assert objs["PrometheusRule"]["spec"]["groups"] == generator["groups"](), (
        "deploy/k8s/base/prometheusrule.yaml is out of date: run `make k8s-rules`"
    )
    assert (K8S / "base" / "prometheusrule.yaml").read_text() == generator["render"]()


def test_every_setting_named_in_the_manifests_exists():
    names = set()
    for f in K8S.rglob("*.yaml"):
        names |= set(re.findall(r"name: (NNSHIP_[A-Z_]+)", f.read_text()))
    known = {f"NNSHIP_{n.upper()}" for n in Settings.model_fields} | {Settings().api_key_env}
    assert names and names <= known
