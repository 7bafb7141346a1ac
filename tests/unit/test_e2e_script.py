"""tests/e2e/run.sh cannot run here (no Docker, no kind): what can be checked of it is (issue 9,
item 7). It must point KUBECONFIG at a private file before kind writes a context, default to the
Kueue release and the kind node image the docs name, and the e2e queue's comment must add up.
"""

from __future__ import annotations

import re

import yaml

from app.settings import Settings
from tests.conftest import ROOT
from worker.cluster.local import quantity

SCRIPT = (ROOT / "tests" / "e2e" / "run.sh").read_text()
#: Commands that can write a kubeconfig context: nothing of kind's may run before the export.
KIND = re.compile(r"^\s*(if !\s+)?kind (create|get|export|load|delete)\b")


def _lines() -> list[str]:
    return [line for line in SCRIPT.splitlines() if not line.lstrip().startswith("#")]


def _default(variable: str) -> str:
    found = re.search(r"\$\{" + variable + r":-([^}]+)\}", SCRIPT)
    assert found, f"run.sh has no default for {variable}"
    return found.group(1)


def test_the_private_kubeconfig_is_exported_before_kind_runs() -> None:
    """`kind create cluster` writes to $KUBECONFIG: it must already be the private file."""
    lines = _lines()
    export = next(i for i, line in enumerate(lines) if line.strip() == "export KUBECONFIG")
    assigned = next(i for i, line in enumerate(lines) if line.startswith('KUBECONFIG="$(mktemp'))
    create = next(i for i, line in enumerate(lines) if "kind create cluster" in line)
    first_kind = next(i for i, line in enumerate(lines) if KIND.search(line))
    assert assigned < export < first_kind <= create
    # The cluster's context reaches the private file only: no --kubeconfig elsewhere, no merge.
    assert "~/.kube" not in "\n".join(lines) and "--kubeconfig" not in SCRIPT


def test_defaults_are_the_versions_the_docs_name() -> None:
    """Kueue v0.19.2 and kindest/node:v1.36.1, as docs/kueue.md and install-kind.md say."""
    kueue, node = _default("KUEUE_VERSION"), _default("KIND_NODE_IMAGE")
    assert re.fullmatch(r"v0\.(1[5-9]|[2-9][0-9])\.[0-9]+", kueue), "v0.15 or later"
    kueue_doc = (ROOT / "docs" / "kueue.md").read_text()
    kind_doc = (ROOT / "docs" / "install-kind.md").read_text()
    assert f"default is **{kueue}**" in kueue_doc
    assert f"`{node}`" in kueue_doc
    assert f"KUEUE_VERSION={kueue}" in kind_doc and f"--image {node}" in kind_doc
    assert '--image "$node_image"' in SCRIPT


def test_the_e2e_queue_comment_adds_up() -> None:
    """One task of 1 cpu fits the e2e ClusterQueue, two do not, by the documented accounting."""
    text = (ROOT / "tests" / "e2e" / "manifests" / "e2e-queue.yaml").read_text()
    counted = int(re.search(r"counts a task of 1 cpu as (\d+)m", text).group(1))  # type: ignore[union-attr]
    sidecar = quantity.milli(Settings.model_fields["sidecar_cpu"].default)
    assert counted == 1000 + sidecar
    queue = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "ClusterQueue")
    [flavor] = queue["spec"]["resourceGroups"][0]["flavors"]
    cpu = next(r for r in flavor["resources"] if r["name"] == "cpu")
    quota = quantity.milli(cpu["nominalQuota"])
    assert counted <= quota < 2 * counted
    assert f"two ({2 * counted}m)" in text
