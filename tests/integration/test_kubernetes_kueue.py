"""The worker checks a task's WorkloadPriorityClass on the wire (issue 9, item 3), and reads
the log of the pod the watcher names (item 5): KubernetesCluster against kmock over HTTP.

Kueue v0.15 to v0.19 create no Workload, and record no Event, for a Job whose
WorkloadPriorityClass does not exist (``pkg/controller/jobframework/reconciler.go``: the error
of ``GetPriorityFromWorkloadPriorityClass`` is only returned and logged). So the worker reads
the class (a cluster-scoped GET) before it creates the Job. The Status bodies are the API
server's: a missing object, a resource the cluster does not serve, and RBAC's refusal of a
cluster-scoped read ("... at the cluster scope").
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from app.models import State
from app.store.base import TaskRecord
from app.store.sqlite import SqliteStore
from tests.integration.test_kubernetes_cluster import (
    JOBS,
    PODS,
    SETTINGS,
    TASK,
    MockApi,
    api,
    cluster,
    pod,
    status_body,
)
from worker import admission, context, jobs
from worker.cluster.base import PermanentError, PriorityClasses
from worker.cluster.k8s_errors import NotFound
from worker.cluster.kubernetes import KubernetesCluster

__all__ = ["api", "cluster"]  # the fixtures
CLASSES = "/apis/kueue.x-k8s.io/v1beta2/workloadpriorityclasses"
Json = dict[str, Any]


def wpc(name: str, value: int) -> Json:
    """A WorkloadPriorityClass as the API server returns it."""
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
            "metadata": {"name": name, "uid": "3f1e", "resourceVersion": "812"},
            "value": value, "description": "Batch work that may wait."}  # fmt: skip


def not_found(name: str) -> Json:
    """The API server's 404 for a missing WorkloadPriorityClass."""
    body = status_body(404, f'workloadpriorityclasses.kueue.x-k8s.io "{name}" not found')
    details = {"name": name, "group": "kueue.x-k8s.io", "kind": "workloadpriorityclasses"}
    body.update(reason="NotFound", details=details)
    return body


FORBIDDEN = (
    'workloadpriorityclasses.kueue.x-k8s.io "urgent" is forbidden: User '
    '"system:serviceaccount:kueue-tes:kueue-tes-worker" cannot get resource '
    '"workloadpriorityclasses" in API group "kueue.x-k8s.io" at the cluster scope'
)


def test_priority_class_exists_reads_the_cluster_scoped_class(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    """One GET of the named class, no namespace in the path; 404 on the object is 'no'."""
    api.k[f"get {CLASSES}/tes-low"] << wpc("tes-low", 100)
    api.k[f"get {CLASSES}/urgent"] << 404 << not_found("urgent")
    assert isinstance(cluster, PriorityClasses)
    assert cluster.priority_class_exists("tes-low") is True
    assert cluster.priority_class_exists("urgent") is False
    assert [r.url.path for r in api.requests("GET")] == [f"{CLASSES}/tes-low", f"{CLASSES}/urgent"]


def test_a_cluster_without_the_resource_or_the_rbac_says_what_to_change(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    """An unserved resource and a refused read are errors that name the fix, not a 'no'."""
    unserved = status_body(404, "the server could not find the requested resource")
    api.k[f"get {CLASSES}/tes-low"] << 404 << unserved
    with pytest.raises(NotFound, match=r"install Kueue v0\.15 or newer"):
        cluster.priority_class_exists("tes-low")
    api.k[f"get {CLASSES}/urgent"] << 403 << status_body(403, FORBIDDEN)
    with pytest.raises(PermanentError) as caught:
        cluster.priority_class_exists("urgent")
    assert "get workloadpriorityclasses.kueue.x-k8s.io (cluster-scoped)" in str(caught.value)
    assert "grant it with a ClusterRole and ClusterRoleBinding" in str(caught.value)
    assert FORBIDDEN in str(caught.value)


# -- the worker's submit --------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    found = SqliteStore(tmp_path / "tasks.db")
    yield found
    found.close()


def queued(store: SqliteStore, priority_class: str | None, preemptible: bool = False) -> str:
    """Store the kmock suite's task, QUEUED, asking for ``priority_class``."""
    doc = copy.deepcopy(TASK)
    resources = doc["resources"]
    if priority_class is not None:
        resources["backend_parameters"] = {"priority_class": priority_class}
    resources["preemptible"] = preemptible
    store.create(TaskRecord(doc["id"], State.QUEUED, "anonymous", doc))
    return str(doc["id"])


def submit(store: SqliteStore, cluster: KubernetesCluster, **settings: str) -> str:
    context.install(context.Context(SETTINGS.model_copy(update=settings), store, cluster))
    return jobs.submit(str(TASK["id"]))


def created_jobs(api: MockApi) -> list[Json]:
    return [r.data for r in api.requests("POST", JOBS)]


def test_a_missing_class_fails_the_task_before_any_job_exists(
    api: MockApi, cluster: KubernetesCluster, store: SqliteStore
) -> None:
    """The task ends in SYSTEM_ERROR naming the class; nothing is created, no quota is held."""
    task = queued(store, "urgent")
    api.k[f"get {CLASSES}/urgent"] << 404 << not_found("urgent")
    assert submit(store, cluster) == "failed"
    record = store.get(task)
    assert record is not None and record.state is State.SYSTEM_ERROR
    assert record.doc["logs"][-1]["system_logs"] == [
        "WorkloadPriorityClass urgent does not exist, so Kueue would never queue the task; ask "
        "for an existing one (backend_parameters.priority_class) or for it to be created"
    ]
    assert created_jobs(api) == []


def test_a_missing_preemptible_class_is_the_operators_to_create(
    api: MockApi, cluster: KubernetesCluster, store: SqliteStore
) -> None:
    """The class came from KUEUE_TES_PREEMPTIBLE_PRIORITY_CLASS: the message says so."""
    task = queued(store, None, preemptible=True)
    api.k[f"get {CLASSES}/spot-low"] << 404 << not_found("spot-low")
    assert submit(store, cluster, preemptible_priority_class="spot-low") == "failed"
    record = store.get(task)
    assert record is not None and record.state is State.SYSTEM_ERROR
    assert record.doc["logs"][-1]["system_logs"][-1].endswith(
        "it is the class of preemptible tasks (KUEUE_TES_PREEMPTIBLE_PRIORITY_CLASS): the "
        "operator must create it"
    )


def test_a_class_that_exists_is_marked_on_the_job(
    api: MockApi, cluster: KubernetesCluster, store: SqliteStore
) -> None:
    """The Job carries the class's label and the worker's mark that it found the class."""
    queued(store, "tes-low")
    api.k[f"get {CLASSES}/tes-low"] << wpc("tes-low", 100)
    api.k[f"post {JOBS}"] << (lambda r: {**r.data, "metadata": {**r.data["metadata"], "uid": "u1"}})
    assert submit(store, cluster) == "submitted"
    [created] = created_jobs(api)
    meta = created["metadata"]
    assert meta["labels"][admission.PRIORITY_CLASS] == "tes-low"
    assert meta["annotations"][admission.PRIORITY_CHECKED] == "tes-low"


def test_without_rbac_for_the_read_the_task_is_submitted_unmarked(
    api: MockApi,
    cluster: KubernetesCluster,
    store: SqliteStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An install without the ClusterRole still runs tasks; the watcher's grace is the backstop."""
    queued(store, "urgent")
    api.k[f"get {CLASSES}/urgent"] << 403 << status_body(403, FORBIDDEN)
    api.k[f"post {JOBS}"] << (lambda r: {**r.data, "metadata": {**r.data["metadata"], "uid": "u2"}})
    with caplog.at_level(logging.WARNING, logger="worker.jobs"):
        assert submit(store, cluster) == "submitted"
    [created] = created_jobs(api)
    assert admission.PRIORITY_CHECKED not in (created["metadata"].get("annotations") or {})
    assert "cannot check WorkloadPriorityClass urgent" in caplog.text
    assert "ClusterRole" in caplog.text


def test_a_task_without_a_class_reads_nothing(
    api: MockApi, cluster: KubernetesCluster, store: SqliteStore
) -> None:
    queued(store, None)
    api.k[f"post {JOBS}"] << (lambda r: {**r.data, "metadata": {**r.data["metadata"], "uid": "u3"}})
    assert submit(store, cluster) == "submitted"
    assert api.requests("GET") == []


# -- logs of the named pod ----------------------------------------------------------------------


def test_read_log_of_a_named_pod_does_not_list(api: MockApi, cluster: KubernetesCluster) -> None:
    """The watcher names its current pod: that pod's log is read, whatever is newer."""
    api.k[f"get {PODS}", kmock.action.LIST] << {
        "kind": "PodList",
        "items": [pod(TASK["id"], "new")],
    }
    api.k[f"get {PODS}/old-pod/log"] << b"the evicted attempt's report\n"
    assert cluster.read_log(str(TASK["id"]), "sequencer", 4096, pod="old-pod") == (
        "the evicted attempt's report\n"
    )
    assert [r.url.path for r in api.requests("GET")] == [f"{PODS}/old-pod/log"]
