"""The e2e suite's cluster: the dev overlay and the Kueue samples applied, the API forwarded.

Skipped unless KUBECONFIG names a kind cluster with Kueue installed (tests/e2e/run.sh makes one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e import cluster
from tests.e2e.cluster import CONTROL_NS, S3_NS, TERMINAL, Tes, kubectl, retry

SKIP = cluster.skip_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this directory e2e, and skip them all where no cluster is given."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.e2e)
            if SKIP:
                item.add_marker(pytest.mark.skip(reason=SKIP))


def _install() -> None:
    if kubectl("get", "crd", "clusterqueues.kueue.x-k8s.io", check=False).returncode != 0:
        pytest.fail(
            "Kueue is not installed in this cluster: install it first (docs/install-kind.md, "
            "step 2) or run tests/e2e/run.sh"
        )
    kubectl("apply", "-k", str(cluster.ROOT / "kustomize/overlays/dev"))
    if os.environ.get("KUEUE_TES_E2E_RESTART") == "1":
        # run.sh rebuilt kueue-tes:dev under the same tag: start pods on the new image.
        kubectl("-n", CONTROL_NS, "rollout", "restart", "deployment")
    for target in (
        "statefulset/kueue-tes-redis",
        "statefulset/kueue-tes-mongodb",
        "deployment/kueue-tes-api",
        "deployment/kueue-tes-worker",
        "deployment/kueue-tes-watcher",
    ):
        kubectl("-n", CONTROL_NS, "rollout", "status", target, "--timeout=300s")
    kubectl("-n", S3_NS, "rollout", "status", "deployment/s3", "--timeout=300s")
    # Kueue's webhook may still be starting: retry until it accepts the samples.
    for directory in ("manifests/kueue", "tests/e2e/manifests"):
        retry(
            f"kubectl apply -k {directory}",
            lambda d=directory: kubectl("apply", "-k", str(cluster.ROOT / d)),
            timeout=180,
        )
    kubectl("wait", "clusterqueue/e2e", "--for=condition=Active", "--timeout=120s")


@pytest.fixture(scope="session")
def tes() -> Iterator[Tes]:
    """A TES client on the installed API, through a port-forward."""
    if os.environ.get("KUEUE_TES_E2E_SKIP_APPLY") != "1":
        _install()
    forward = cluster.PortForward(CONTROL_NS, "service/kueue-tes-api", 8000)
    port = forward.start()
    client = Tes(f"http://127.0.0.1:{port}/ga4gh/tes/v1")
    try:
        retry("GET service-info", client.service_info, timeout=120)
        yield client
    finally:
        forward.stop()


@pytest.fixture
def tasks(tes: Tes) -> Iterator[Tes]:
    """The TES client; at the end every task the test left running is canceled and waited for,
    so that the next test starts on an empty queue."""
    before = len(tes.created)
    yield tes
    for task_id in tes.created[before:]:
        if tes.get(task_id, "MINIMAL")["state"] not in TERMINAL:
            tes.cancel(task_id)
    for task_id in tes.created[before:]:
        tes.finish(task_id)
