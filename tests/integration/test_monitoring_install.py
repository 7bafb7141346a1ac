"""Monitoring in the install: scrape annotations and ports in the base, the Prometheus Operator
component, the Grafana dashboard, and docs/operations.md naming every metric once."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app import metrics
from app.settings import Settings
from tests.conftest import ROOT
from tests.integration.test_install import (
    KUBECTL,
    NO_KUBECTL,
    OVERLAYS,
    containers,
    named,
    of_kind,
    render,
)

#: Every metric the processes export, by the name Prometheus shows.
METRICS = {
    "kueue_tes_tasks",
    "kueue_tes_watcher_lag_seconds",
    *(
        m._name + ("_total" if m._type == "counter" else "")
        for m in vars(metrics).values()
        if isinstance(m, metrics.Counter | metrics.Histogram)
    ),
}
PORTS = {"api": "http", "worker": "metrics", "watcher": "metrics"}


def test_the_metrics_are_the_documented_ones() -> None:
    assert len(METRICS) == 9
    text = (ROOT / "docs" / "operations.md").read_text()
    for name in METRICS:
        rows = re.findall(rf"^\| `{name}` \|", text, re.MULTILINE)
        assert len(rows) == 1, f"docs/operations.md must describe {name} once in its table"
        assert name.startswith("kueue_tes_")


@pytest.mark.parametrize("directory", OVERLAYS)
def test_control_plane_pods_carry_scrape_annotations_for_a_real_port(directory: str) -> None:
    objects = render(directory)
    for component, port_name in PORTS.items():
        deployment = named(objects, "Deployment", f"kueue-tes-{component}", "kueue-tes")
        template = deployment["spec"]["template"]
        notes = template["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
        [container] = containers(template["spec"])
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", ())}
        assert int(notes["prometheus.io/port"]) == ports[port_name], (directory, component)
        if port_name == "metrics":
            assert ports["metrics"] == Settings.model_fields["metrics_port"].default
    policy = named(objects, "NetworkPolicy", "allow-metrics", "kueue-tes")
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    [selector] = policy["spec"]["podSelector"]["matchExpressions"]
    assert sorted(selector["values"]) == ["watcher", "worker"]
    assert not [o for o in objects if o["apiVersion"].startswith("monitoring.coreos.com")]


def test_prometheus_operator_component_selects_the_api_and_the_metrics_ports(
    tmp_path: Path,
) -> None:
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    shutil.copytree(ROOT / "kustomize", tmp_path / "kustomize")
    overlay = tmp_path / "kustomize" / "overlays" / "with-monitors"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "resources: [../../base]\ncomponents: [../../components/prometheus-operator]\n"
    )
    done = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    objects = tuple(o for o in yaml.safe_load_all(done.stdout) if o)
    [monitor] = of_kind(objects, "ServiceMonitor")
    service = named(objects, "Service", "kueue-tes-api", "kueue-tes")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert "http" in {p["name"] for p in service["spec"]["ports"]}
    [pods] = of_kind(objects, "PodMonitor")
    [expression] = pods["spec"]["selector"]["matchExpressions"]
    for component in expression["values"]:
        template = named(objects, "Deployment", f"kueue-tes-{component}")["spec"]["template"]
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == component
        [container] = containers(template["spec"])
        assert "metrics" in {p["name"] for p in container["ports"]}
    assert [e["port"] for e in pods["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_grafana_dashboard_queries_only_our_metrics() -> None:
    board = json.loads((ROOT / "manifests" / "grafana" / "kueue-tes.json").read_text())
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bkueue_tes_[a-z_]+", expr)
    }
    assert used <= METRICS, used - METRICS
    for needed in (
        "kueue_tes_task_queue_wait_seconds",
        "kueue_tes_tasks",
        "kueue_tes_api_request_duration_seconds",
    ):
        assert needed in used
    titles = [panel["title"] for panel in board["panels"]]
    assert len(titles) == len(set(titles)) and board["uid"] == "kueue-tes"
