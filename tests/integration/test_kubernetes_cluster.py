"""KubernetesCluster on the wire: kmock's mock Kubernetes API over real HTTP on 127.0.0.1.

kmock is asyncio; KubernetesCluster is the official (blocking) client. The mock server runs in
its own event loop on a background thread; the tests drive the cluster from the main thread and
then read kmock's request history: methods, paths, query parameters and bodies exactly as sent.
Watch streams are scripted per request (``Streams``), so every test is deterministic.
"""

from __future__ import annotations

import asyncio
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from app.settings import Settings
from worker import jobspec
from worker.cluster import k8s_lease
from worker.cluster.base import Observation, PermanentError, TransientError
from worker.cluster.k8s_index import Index
from worker.cluster.kubernetes import KubernetesCluster

Json = dict[str, Any]
NS = "tes"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
CONFIGMAPS = f"/api/v1/namespaces/{NS}/configmaps"
PODS = f"/api/v1/namespaces/{NS}/pods"
WORKLOADS = f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{NS}/workloads"
EVENTS = f"/api/v1/namespaces/{NS}/events"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/tes-system/leases"
SELECTOR = "app.kubernetes.io/managed-by=kueue-tes"
WARNINGS = "involvedObject.kind=Job,type=Warning"
SETTINGS = Settings(data_dir=Path("/nonexistent"), mongo_uri=None, redis_url=None, namespace=NS)
TASK: Json = {
    "id": "01jb0000000000000000000001",
    "state": "QUEUED",
    "inputs": [{"path": "/data/in.txt", "url": "s3://bucket/in.txt", "type": "FILE"}],
    "outputs": [{"path": "/data/out/result.txt", "url": "s3://bucket/out.txt"}],
    "resources": {"cpu_cores": 2, "ram_gb": 1},
    "executors": [
        {"image": "alpine", "command": ["sh", "-c", "wc -l /data/in.txt"]},
        {"image": "python:3.12", "command": ["python", "-V"], "workdir": "/data"},
    ],
}
TASK_ID = TASK["id"]
END = object()  # ends a scripted watch stream


class Stream:
    """One scripted watch response: events the test feeds, then END; or an HTTP error."""

    def __init__(self, status: int | None = None, message: str = "") -> None:
        self.status, self.message = status, message
        self.items: queue.Queue[object] = queue.Queue()

    def feed(self, *items: object) -> Stream:
        for item in items:
            self.items.put(item)
        return self


class Streams:
    """Serves each watch request of one resource the next scripted Stream, in order."""

    def __init__(self, closing: threading.Event) -> None:
        self.closing = closing
        self.pending: queue.Queue[Stream] = queue.Queue()

    def next(self, status: int | None = None, message: str = "") -> Stream:
        stream = Stream(status, message)
        self.pending.put(stream)
        return stream

    async def __call__(self, request: kmock.Request) -> Any:
        while True:
            try:
                stream = self.pending.get_nowait()
                break
            except queue.Empty:
                if self.closing.is_set():
                    return kmock.Response(status=503, payload=status_body(503, "closing"))
                await asyncio.sleep(0.005)
        # Always with a status: kmock keeps the last status a callable's Response set.
        if stream.status is not None:
            return kmock.Response(
                status=stream.status, payload=status_body(stream.status, stream.message)
            )
        return kmock.Response(status=200, payload=self._events(stream))

    async def _events(self, stream: Stream) -> AsyncIterator[Any]:
        yield b""  # the headers go out now, as the API server sends them at once
        while not self.closing.is_set():
            try:
                item = stream.items.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.005)
                continue
            if item is END:
                return
            yield item


class MockApi:
    """kmock's KubernetesEmulator on a free port, its event loop on a daemon thread."""

    def __init__(self) -> None:
        self.closing = threading.Event()
        self._ready = threading.Event()
        self._done: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))
        self._thread.daemon = True
        self._thread.start()
        assert self._ready.wait(10), "the mock API server did not start"

    async def _main(self) -> None:
        self._done = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            self.k, self.url = handler, str(server.url).rstrip("/")
            self._ready.set()
            await self._done.wait()

    def streams(self, path: str) -> Streams:
        """Script the watch requests on ``path``."""
        streams = Streams(self.closing)
        self.k[f"get {path}", kmock.action.WATCH] << streams
        return streams

    def requests(self, method: str | None = None, path: str | None = None) -> list[kmock.Request]:
        """Return the requests served so far, oldest first, filtered by method and path."""
        return [
            r
            for r in list(self.k)
            if (method is None or r.method.value.upper() == method)
            and (path is None or r.url.path == path)
        ]

    def stop(self) -> None:
        self.closing.set()
        assert self._done is not None
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(10)


def manifests() -> tuple[Json, Json]:
    """Return the task's ConfigMap and Job as the worker builds them."""
    return jobspec.build_configmap(TASK, SETTINGS), jobspec.build_job(TASK, SETTINGS, {})


def status_body(code: int, message: str) -> Json:
    """Return a Kubernetes Status, as the API server sends with an error."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "message": message, "reason": "Whatever"}  # fmt: skip


def job(task_id: str, uid: str, version: str = "1") -> Json:
    """Return a Job of ours as the API server shows it."""
    labels = {"app.kubernetes.io/managed-by": "kueue-tes", "kueue-tes/task-id": task_id}
    meta = {"name": f"tes-{task_id}", "namespace": NS, "uid": uid, "resourceVersion": version}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {**meta, "labels": labels},
            "spec": {"suspend": True}, "status": {}}  # fmt: skip


def pod(task_id: str, name: str, version: str = "1", created: str = "2026-01-01T00:00:00Z") -> Json:
    """Return a task pod as the API server shows it (camelCase status)."""
    labels = {"app.kubernetes.io/managed-by": "kueue-tes", "kueue-tes/task-id": task_id}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels,
                     "resourceVersion": version, "creationTimestamp": created},
        "status": {"phase": "Running", "initContainerStatuses": [
            {"name": "executor-0", "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}
        ]},
    }  # fmt: skip


def workload(name: str, job_uid: str, version: str = "1", by_owner: bool = False) -> Json:
    """Return a Kueue Workload made for the Job with ``job_uid``."""
    meta: Json = {"name": name, "namespace": NS, "resourceVersion": version}
    if by_owner:
        meta["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "tes-x", "uid": job_uid}
        ]
    else:
        meta["labels"] = {"kueue.x-k8s.io/job-uid": job_uid}
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": meta,
            "status": {"conditions": [{"type": "QuotaReserved", "status": "False",
                                       "message": "insufficient quota"}]}}  # fmt: skip


def warning(name: str, job_name: str, job_uid: str | None, version: str = "1") -> Json:
    """Return a core/v1 Warning Event about a Job, as Kueue's event recorder makes it."""
    involved: Json = {"apiVersion": "batch/v1", "kind": "Job", "namespace": NS, "name": job_name}
    if job_uid is not None:
        involved["uid"] = job_uid
    return {"metadata": {"name": name, "namespace": NS, "resourceVersion": version},
            "involvedObject": involved, "type": "Warning",
            "reason": "WorkloadPriorityClassNotFound",
            "message": 'WorkloadPriorityClass "urgent" not found',
            "source": {"component": "kueue-job-controller"}, "count": 1}  # fmt: skip


def listing(items: list[Json], version: str) -> Json:
    return {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version},
            "items": items}  # fmt: skip


def event(kind: str, obj: Json) -> Json:
    return {"type": kind, "object": obj}


def bookmark(version: str) -> Json:
    return event("BOOKMARK", {"kind": "Job", "metadata": {"resourceVersion": version}})


@pytest.fixture
def api() -> Iterator[MockApi]:
    server = MockApi()
    yield server
    server.stop()


@pytest.fixture
def cluster(api: MockApi) -> Iterator[KubernetesCluster]:
    configuration = client.Configuration(host=api.url, no_proxy="*")
    found = KubernetesCluster(
        client.ApiClient(configuration),
        NS,
        request_timeout=5,
        watch_seconds=7,
        retry_seconds=0.05,
        lease_namespace="tes-system",
    )
    yield found
    found.close()


def collect(cluster: KubernetesCluster, count: int, timeout: float = 5.0) -> list[Observation]:
    """Return the next ``count`` observations of the watch (fewer if ``timeout`` passes)."""
    seen: list[Observation] = []
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        for observation in cluster.watch(deadline - time.monotonic()):
            seen.append(observation)
            if len(seen) == count:
                break
    return seen


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def seen(observations: list[Observation]) -> list[tuple[str, str, str, str | None]]:
    """Return (task, kind, name, resourceVersion or None if deleted) of each observation."""
    return [
        (o.task_id, o.kind, o.name, None if o.obj is None else o.obj["metadata"]["resourceVersion"])
        for o in observations
    ]


# -- submit -----------------------------------------------------------------------------------


def test_submit_creates_the_job_then_its_configmap_owned_by_the_job(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    configmap = jobspec.build_configmap(TASK, SETTINGS)
    manifest = jobspec.build_job(TASK, SETTINGS, {})
    api.k[f"post {JOBS}"] << (
        lambda r: {**r.data, "metadata": {**r.data["metadata"], "uid": "uid-1"}}
    )
    cluster.submit(TASK_ID, configmap, manifest)
    posts = api.requests("POST")
    assert [r.url.path for r in posts] == [JOBS, CONFIGMAPS]
    # The client sends our manifests as they are: nothing dropped, renamed or added.
    assert posts[0].data == manifest
    owned = posts[1].data
    assert owned == jobspec.own(configmap, {"metadata": {"name": f"tes-{TASK_ID}", "uid": "uid-1"}})
    assert owned["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_submit_twice_finds_both_objects_and_creates_nothing_more(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    configmap = jobspec.build_configmap(TASK, SETTINGS)
    manifest = jobspec.build_job(TASK, SETTINGS, {})
    existing = job(TASK_ID, "uid-1")
    api.k.objects[kmock.resource("batch", "v1", "jobs"), NS, f"tes-{TASK_ID}"] = existing
    owned = jobspec.own(configmap, existing)
    owned["metadata"]["resourceVersion"] = "3"
    api.k.objects[kmock.resource("", "v1", "configmaps"), NS, f"tes-{TASK_ID}"] = owned
    cluster.submit(TASK_ID, configmap, manifest)
    cluster.submit(TASK_ID, configmap, manifest)
    calls = [(r.method.value.upper(), r.url.path) for r in api.requests()]
    once = [
        ("POST", JOBS),  # 409
        ("GET", f"{JOBS}/tes-{TASK_ID}"),  # its uid
        ("POST", CONFIGMAPS),  # 409
        ("GET", f"{CONFIGMAPS}/tes-{TASK_ID}"),  # owned by this Job: nothing to do
    ]
    assert calls == once * 2


def test_submit_takes_over_a_configmap_left_by_an_older_job(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    configmap = jobspec.build_configmap(TASK, SETTINGS)
    api.k.objects[kmock.resource("batch", "v1", "jobs"), NS, f"tes-{TASK_ID}"] = job(TASK_ID, "new")
    stale = jobspec.own(configmap, job(TASK_ID, "old"))
    stale["metadata"]["resourceVersion"] = "7"
    api.k.objects[kmock.resource("", "v1", "configmaps"), NS, f"tes-{TASK_ID}"] = stale
    api.k[f"put {CONFIGMAPS}/tes-{TASK_ID}"] << (lambda r: r.data)
    cluster.submit(TASK_ID, configmap, jobspec.build_job(TASK, SETTINGS, {}))
    (put,) = api.requests("PUT")
    assert put.data["metadata"]["resourceVersion"] == "7"
    assert put.data["metadata"]["ownerReferences"][0]["uid"] == "new"


@pytest.mark.parametrize("code", [500, 503, 429])
def test_server_errors_are_transient(api: MockApi, cluster: KubernetesCluster, code: int) -> None:
    api.k[f"post {JOBS}"] << code << status_body(code, "etcdserver: request timed out")
    with pytest.raises(TransientError, match="etcdserver: request timed out"):
        cluster.submit(TASK_ID, *manifests())


def test_forbidden_is_permanent_and_says_which_rbac_is_missing(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    message = 'jobs.batch is forbidden: User "system:serviceaccount:tes:worker" cannot create'
    api.k[f"post {JOBS}"] << 403 << status_body(403, message)
    with pytest.raises(PermanentError) as caught:
        cluster.submit(TASK_ID, *manifests())
    text = str(caught.value)
    assert message in text
    assert "lacks RBAC for create jobs.batch in namespace tes" in text


def test_invalid_objects_are_permanent_with_the_api_message(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    message = 'Job.batch "tes-x" is invalid: spec.template.spec.containers: Required value'
    api.k[f"post {JOBS}"] << 422 << status_body(422, message)
    with pytest.raises(
        PermanentError, match=re.escape("spec.template.spec.containers: Required value")
    ):
        cluster.submit(TASK_ID, *manifests())


def test_an_unreachable_api_server_is_transient() -> None:
    configuration = client.Configuration(host="http://127.0.0.1:9", no_proxy="*")
    configuration.retries = 0
    cluster = KubernetesCluster(client.ApiClient(configuration), NS, request_timeout=2)
    with pytest.raises(TransientError, match="cannot be reached"):
        cluster.exists(TASK_ID)
    cluster.close()


# -- delete and exists ------------------------------------------------------------------------


def test_delete_removes_the_job_in_the_background(api: MockApi, cluster: KubernetesCluster) -> None:
    api.k.objects[kmock.resource("batch", "v1", "jobs"), NS, f"tes-{TASK_ID}"] = job(TASK_ID, "u")
    cluster.delete(TASK_ID)
    (call,) = api.requests("DELETE")
    assert call.url.path == f"{JOBS}/tes-{TASK_ID}"
    assert call.data == {"propagationPolicy": "Background"}


def test_delete_of_a_missing_job_is_success_and_clears_an_orphan_configmap(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    orphan = {"metadata": {"name": f"tes-{TASK_ID}", "namespace": NS}, "data": {}}
    api.k.objects[kmock.resource("", "v1", "configmaps"), NS, f"tes-{TASK_ID}"] = orphan
    cluster.delete(TASK_ID)  # Job 404, ConfigMap deleted
    cluster.delete(TASK_ID)  # both 404
    paths = [r.url.path for r in api.requests("DELETE")]
    assert paths == [f"{JOBS}/tes-{TASK_ID}", f"{CONFIGMAPS}/tes-{TASK_ID}"] * 2
    assert all(r.data == {"propagationPolicy": "Background"} for r in api.requests("DELETE"))


def test_exists_sees_the_job_or_a_lingering_pod(api: MockApi, cluster: KubernetesCluster) -> None:
    pods: list[Json] = []
    api.k[f"get {PODS}", kmock.action.LIST] << (lambda: listing(pods, "5"))
    assert not cluster.exists(TASK_ID)
    pods.append(pod(TASK_ID, f"tes-{TASK_ID}-abcde"))
    assert cluster.exists(TASK_ID)
    api.k.objects[kmock.resource("batch", "v1", "jobs"), NS, f"tes-{TASK_ID}"] = job(TASK_ID, "u")
    assert cluster.exists(TASK_ID)
    selector = f"{SELECTOR},kueue-tes/task-id={TASK_ID}"
    assert api.requests("GET", PODS)[0].params["labelSelector"] == selector


# -- snapshot and watch -----------------------------------------------------------------------


def lists(
    api: MockApi,
    jobs: list[Json],
    pods: list[Json],
    workloads: list[Json],
    events: list[Json] | None = None,
) -> None:
    found = [] if events is None else events
    api.k[f"get {JOBS}", kmock.action.LIST] << (lambda: listing(jobs, "100"))
    api.k[f"get {PODS}", kmock.action.LIST] << (lambda: listing(pods, "200"))
    api.k[f"get {WORKLOADS}", kmock.action.LIST] << (lambda: listing(workloads, "300"))
    api.k[f"get {EVENTS}", kmock.action.LIST] << (lambda: listing(found, "400"))


def test_snapshot_maps_workloads_to_tasks_through_their_job_uid(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    jobs = [job("a", "uid-a"), job("b", "uid-b")]
    pods = [pod("a", "tes-a-xyz")]
    workloads = [
        workload("job-tes-a-1", "uid-a"),
        workload("job-tes-b-2", "uid-b", by_owner=True),
        workload("job-other-3", "uid-of-someone-else"),
    ]
    lists(api, jobs, pods, workloads)
    found = cluster.snapshot()
    assert seen(found) == [
        ("a", "Job", "tes-a", "1"),
        ("b", "Job", "tes-b", "1"),
        ("a", "Pod", "tes-a-xyz", "1"),
        ("a", "Workload", "job-tes-a-1", "1"),
        ("b", "Workload", "job-tes-b-2", "1"),
    ]
    pod_status = next(o for o in found if o.kind == "Pod").obj
    assert pod_status is not None
    assert pod_status["status"]["initContainerStatuses"][0]["state"]["running"]["startedAt"]
    assert api.requests("GET", JOBS)[0].params["labelSelector"] == SELECTOR
    assert api.requests("GET", PODS)[0].params["labelSelector"] == SELECTOR
    assert "labelSelector" not in api.requests("GET", WORKLOADS)[0].params


def test_watch_resumes_from_the_last_resource_version_and_bookmarks_advance_it(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    lists(api, [job("a", "uid-a")], [], [])
    jobs, pods, workloads = api.streams(JOBS), api.streams(PODS), api.streams(WORKLOADS)
    pods.next()  # stays open, quiet
    workloads.next()
    api.streams(EVENTS).next()
    cluster.snapshot()
    first = jobs.next().feed(event("MODIFIED", job("a", "uid-a", "101")), bookmark("150"), END)
    second = jobs.next().feed(event("ADDED", job("b", "uid-b", "151")))
    assert seen(collect(cluster, 2)) == [("a", "Job", "tes-a", "101"), ("b", "Job", "tes-b", "151")]
    watches = api.requests("GET", JOBS)[1:]
    assert [w.params["resourceVersion"] for w in watches] == ["100", "150"]
    for params in (w.params for w in watches):
        assert params["watch"] == "true"
        assert params["allowWatchBookmarks"] == "true"
        assert params["labelSelector"] == SELECTOR
        assert params["timeoutSeconds"] == "7"
    assert first.items.empty() and second.items.empty()


def test_workloads_wait_for_their_job_and_deletions_carry_no_object(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    lists(api, [], [], [])
    jobs, pods, workloads = api.streams(JOBS), api.streams(PODS), api.streams(WORKLOADS)
    api.streams(EVENTS).next()
    cluster.snapshot()
    pods.next().feed(event("ADDED", pod("c", "tes-c-pod", "11")))
    assert seen(collect(cluster, 1)) == [("c", "Pod", "tes-c-pod", "11")]
    workloads.next().feed(event("ADDED", workload("job-tes-c-1", "uid-c", "12")))
    assert collect(cluster, 1, timeout=0.3) == []  # its Job is unknown yet
    job_stream = jobs.next().feed(event("ADDED", job("c", "uid-c", "13")))
    assert seen(collect(cluster, 2)) == [
        ("c", "Job", "tes-c", "13"),
        ("c", "Workload", "job-tes-c-1", "12"),
    ]
    job_stream.feed(event("DELETED", job("c", "uid-c", "14")))
    (deleted,) = collect(cluster, 1)
    assert (deleted.task_id, deleted.kind, deleted.name, deleted.obj) == ("c", "Job", "tes-c", None)


def test_a_snapshot_supersedes_the_changes_queued_before_it(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    lists(api, [job("a", "uid-a", "5")], [], [])
    api.streams(PODS).next()
    api.streams(WORKLOADS).next()
    api.streams(EVENTS).next()
    cluster.snapshot()
    stream = api.streams(JOBS).next().feed(event("MODIFIED", job("a", "uid-a", "3")))
    assert seen(collect(cluster, 1)) == [("a", "Job", "tes-a", "3")]
    # A standby watcher does not drain the watch; its first snapshot as leader drops the pile.
    stream.feed(event("MODIFIED", job("a", "uid-a", "4")))
    wait_for(lambda: cluster._watches._queue.qsize() == 1)
    assert seen(cluster.snapshot()) == [("a", "Job", "tes-a", "5")]
    assert collect(cluster, 1, timeout=0.2) == []


def test_a_410_on_rewatch_lists_again_and_reports_what_vanished(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    pods = [pod("a", "tes-a-pod", "1"), pod("b", "tes-b-pod", "1")]
    lists(api, [], pods, [])
    api.streams(JOBS).next()
    api.streams(WORKLOADS).next()
    api.streams(EVENTS).next()
    pod_streams = api.streams(PODS)
    cluster.snapshot()
    gone = status_body(410, "too old resource version: 200 (900)")
    pod_streams.next().feed(event("ERROR", gone))
    # Meanwhile pod b went away and pod a changed; the relist shows it.
    pods[:] = [pod("a", "tes-a-pod", "901")]
    pod_streams.next().feed(event("MODIFIED", pod("a", "tes-a-pod", "902")))
    assert seen(collect(cluster, 3)) == [
        ("a", "Pod", "tes-a-pod", "901"),
        ("b", "Pod", "tes-b-pod", None),
        ("a", "Pod", "tes-a-pod", "902"),
    ]
    pod_requests = api.requests("GET", PODS)
    assert [(r.params.get("watch"), r.params.get("resourceVersion")) for r in pod_requests] == [
        (None, None),  # snapshot
        ("true", "200"),  # watch from the snapshot: ERROR 410
        (None, None),  # relist
        ("true", "200"),  # the relist's resourceVersion (the mock lists always say 200)
    ]


def test_an_http_410_on_opening_the_watch_also_relists(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    lists(api, [job("a", "uid-a")], [], [])
    api.streams(PODS).next()
    api.streams(WORKLOADS).next()
    api.streams(EVENTS).next()
    job_streams = api.streams(JOBS)
    job_streams.next(status=410, message="too old resource version")
    job_streams.next()
    cluster.snapshot()
    # The relist reports the Job again (the watch cannot know what the snapshot showed).
    assert seen(collect(cluster, 1)) == [("a", "Job", "tes-a", "1")]
    wait_for(lambda: len(api.requests("GET", JOBS)) == 4)
    time.sleep(0.1)
    job_requests = api.requests("GET", JOBS)
    assert [(r.params.get("watch"), r.params.get("resourceVersion")) for r in job_requests] == [
        (None, None),
        ("true", "100"),  # HTTP 410
        (None, None),
        ("true", "100"),  # open, quiet
    ]


def test_snapshot_reads_every_page_and_watches_from_the_first(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    def pages(request: kmock.Request) -> Json:
        if request.params.get("continue") == "page-2":
            return listing([job("b", "uid-b")], "ignored")
        return {**listing([job("a", "uid-a")], "100"), "metadata": {"resourceVersion": "100",
                "continue": "page-2"}}  # fmt: skip

    api.k[f"get {JOBS}", kmock.action.LIST] << pages
    api.k[f"get {PODS}", kmock.action.LIST] << listing([], "1")
    api.k[f"get {WORKLOADS}", kmock.action.LIST] << listing([], "1")
    api.k[f"get {EVENTS}", kmock.action.LIST] << listing([], "1")
    job_streams = api.streams(JOBS)
    job_streams.next()
    api.streams(PODS).next()
    api.streams(WORKLOADS).next()
    api.streams(EVENTS).next()
    assert [o.name for o in cluster.snapshot()] == ["tes-a", "tes-b"]
    first, second = api.requests("GET", JOBS)
    assert first.params["limit"] == "500" and "continue" not in first.params
    assert second.params["continue"] == "page-2"
    assert collect(cluster, 1, timeout=0.2) == []
    wait_for(lambda: len(api.requests("GET", JOBS)) == 3)
    assert api.requests("GET", JOBS)[2].params["resourceVersion"] == "100"


# -- Warning Events about our Jobs ------------------------------------------------------------


def test_snapshot_lists_the_warnings_about_listed_jobs_with_a_field_selector(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    events = [
        warning("tes-a.1", "tes-a", "uid-a"),
        warning("tes-b.1", "tes-b", None),  # no uid in the reference: matched by the Job's name
        warning("tes-gone.1", "tes-gone", "uid-gone"),  # its Job is gone: no task is present
        warning("tes-a.0", "tes-a", "uid-before"),  # about an older Job of the same name
        warning("other.1", "other", "uid-other"),  # not about a Job of ours
    ]
    lists(api, [job("a", "uid-a"), job("b", "uid-b")], [], [], events)
    found = [o for o in cluster.snapshot() if o.kind == "Event"]
    assert seen(found) == [("a", "Event", "tes-a.1", "1"), ("b", "Event", "tes-b.1", "1")]
    assert found[0].obj is not None
    assert (found[0].obj["kind"], found[0].obj["apiVersion"]) == ("Event", "v1")
    assert found[0].obj["reason"] == "WorkloadPriorityClassNotFound"
    (request,) = api.requests("GET", EVENTS)
    assert request.params == {"fieldSelector": WARNINGS, "limit": "500"}


def test_events_are_watched_with_the_field_selector_and_wait_for_their_job(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    lists(api, [], [], [])
    jobs, events = api.streams(JOBS), api.streams(EVENTS)
    api.streams(PODS).next()
    api.streams(WORKLOADS).next()
    cluster.snapshot()
    event_stream = events.next().feed(event("ADDED", warning("tes-c.1", "tes-c", "uid-c", "401")))
    assert collect(cluster, 1, timeout=0.3) == []  # its Job is unknown yet
    job_stream = jobs.next().feed(event("ADDED", job("c", "uid-c", "13")))
    assert seen(collect(cluster, 2)) == [
        ("c", "Job", "tes-c", "13"),
        ("c", "Event", "tes-c.1", "401"),
    ]
    again = {**warning("tes-c.1", "tes-c", "uid-c", "402"), "count": 2}
    event_stream.feed(event("MODIFIED", again))
    assert seen(collect(cluster, 1)) == [("c", "Event", "tes-c.1", "402")]
    # The Job deleted: the Event goes with it; its own expiry later concerns no task.
    job_stream.feed(event("DELETED", job("c", "uid-c", "14")))
    assert seen(collect(cluster, 1)) == [("c", "Job", "tes-c", None)]
    events.next()  # the watch after this one: open, quiet
    expired = warning("tes-c.1", "tes-c", "uid-c", "403")
    event_stream.feed(event("DELETED", expired), bookmark("450"), END)
    wait_for(lambda: len(api.requests("GET", EVENTS)) == 3)
    assert collect(cluster, 1, timeout=0.2) == []
    watches = api.requests("GET", EVENTS)[1:]
    assert [w.params["resourceVersion"] for w in watches] == ["400", "450"]
    for params in (w.params for w in watches):
        assert params["watch"] == "true"
        assert params["fieldSelector"] == WARNINGS
        assert params["allowWatchBookmarks"] == "true"
        assert params["timeoutSeconds"] == "7"
        assert "labelSelector" not in params


def test_a_410_on_the_event_watch_lists_again_and_reports_vanished_events(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    events = [warning("tes-a.1", "tes-a", "uid-a"), warning("tes-a.2", "tes-a", "uid-a")]
    lists(api, [job("a", "uid-a")], [], [], events)
    for path in (JOBS, PODS, WORKLOADS):
        api.streams(path).next()
    event_streams = api.streams(EVENTS)
    assert len([o for o in cluster.snapshot() if o.kind == "Event"]) == 2
    event_streams.next().feed(event("ERROR", status_body(410, "too old resource version")))
    events[:] = [warning("tes-a.1", "tes-a", "uid-a", "901")]  # tes-a.2 expired meanwhile
    event_streams.next()
    assert seen(collect(cluster, 2)) == [
        ("a", "Event", "tes-a.1", "901"),
        ("a", "Event", "tes-a.2", None),
    ]
    wait_for(lambda: len(api.requests("GET", EVENTS)) == 4)
    requests = api.requests("GET", EVENTS)
    assert [(r.params.get("watch"), r.params.get("resourceVersion")) for r in requests] == [
        (None, None),  # snapshot
        ("true", "400"),  # ERROR 410
        (None, None),  # relist
        ("true", "400"),
    ]
    assert all(r.params["fieldSelector"] == WARNINGS for r in requests)


def test_forbidden_events_say_which_rbac_is_missing(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    message = 'events is forbidden: cannot list resource "events" in API group ""'
    api.k[f"get {EVENTS}", kmock.action.LIST] << 403 << status_body(403, message)
    for path in (JOBS, PODS, WORKLOADS):
        api.k[f"get {path}", kmock.action.LIST] << listing([], "1")
    with pytest.raises(PermanentError, match="lacks RBAC for list events in namespace tes"):
        cluster.snapshot()


def test_events_map_to_tasks_through_their_job_and_are_forgotten_with_it() -> None:
    index = Index()
    # Before their Job: held back. About a Job not named as ours are: not even held.
    assert index.update("Event", warning("tes-a.1", "tes-a", "uid-a")) == []
    assert index.update("Event", warning("tes-a.0", "tes-a", "uid-before")) == []
    assert index.update("Event", warning("other.1", "other", "uid-other")) == []
    assert set(index._parked["Event"]) == {"uid-a", "uid-before"}
    assert seen(index.update("Job", job("a", "uid-a"))) == [
        ("a", "Job", "tes-a", "1"),
        ("a", "Event", "tes-a.1", "1"),
    ]
    # No uid in the reference: the Job's name says which Job, and so which task.
    nameless = warning("tes-a.2", "tes-a", None, "2")
    assert seen(index.update("Event", nameless)) == [("a", "Event", "tes-a.2", "2")]
    assert seen(index.remove("Event", nameless)) == [("a", "Event", "tes-a.2", None)]
    # The Job deleted: its Events are forgotten, their expiry concerns no task.
    assert seen(index.remove("Job", job("a", "uid-a"))) == [("a", "Job", "tes-a", None)]
    assert index.remove("Event", warning("tes-a.1", "tes-a", "uid-a")) == []
    # The task's Job created again (same name, new uid): the old Job's Events stay out.
    assert index.update("Event", warning("tes-a.1", "tes-a", "uid-a", "3")) == []
    assert seen(index.update("Job", job("a", "uid-new"))) == [("a", "Job", "tes-a", "1")]
    assert seen(index.update("Event", warning("tes-a.3", "tes-a", "uid-new", "4"))) == [
        ("a", "Event", "tes-a.3", "4")
    ]


def test_from_config_reads_a_kubeconfig(api: MockApi, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: mock, cluster: {{server: "{api.url}"}}}}]
users: [{{name: me, user: {{token: secret}}}}]
contexts: [{{name: mock, context: {{cluster: mock, user: me, namespace: {NS}}}}}]
current-context: mock
"""
    )
    api.k[f"get {PODS}", kmock.action.LIST] << listing([], "1")
    cluster = KubernetesCluster.from_config(NS, str(kubeconfig))
    try:
        assert not cluster.exists("nothing")
    finally:
        cluster.close()
    assert api.requests("GET")[0].headers["Authorization"] == "Bearer secret"
    with pytest.raises(PermanentError, match="cannot configure the Kubernetes client"):
        KubernetesCluster.from_config(NS, str(tmp_path / "missing"))


def test_a_forbidden_watch_surfaces_as_a_permanent_error(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    message = 'workloads.kueue.x-k8s.io is forbidden: cannot list resource "workloads"'
    api.k[f"get {WORKLOADS}", kmock.action.LIST] << 403 << status_body(403, message)
    api.k[f"get {JOBS}", kmock.action.LIST] << listing([], "1")
    api.k[f"get {PODS}", kmock.action.LIST] << listing([], "1")
    api.k[f"get {EVENTS}", kmock.action.LIST] << listing([], "1")
    api.streams(JOBS).next()
    api.streams(PODS).next()
    api.streams(EVENTS).next()
    with pytest.raises(
        PermanentError, match=re.escape("lacks RBAC for list workloads.kueue.x-k8s.io")
    ):
        collect(cluster, 1)


def test_close_stops_the_watch_threads_promptly(api: MockApi, cluster: KubernetesCluster) -> None:
    lists(api, [], [], [])
    for path in (JOBS, PODS, WORKLOADS, EVENTS):
        api.streams(path).next()  # open and silent until closed
    cluster.snapshot()
    assert collect(cluster, 1, timeout=0.2) == []
    wait_for(lambda: len(api.requests("GET")) == 8)
    started = time.monotonic()
    cluster.close()
    assert time.monotonic() - started < 3
    assert not [t for t in threading.enumerate() if t.name.startswith("k8s-watch-")]


# -- logs -------------------------------------------------------------------------------------


def test_read_log_reads_the_newest_pod_with_limit_bytes(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    pods = [
        pod(TASK_ID, "old-pod", created="2026-01-01T00:00:00Z"),
        pod(TASK_ID, "new-pod", created="2026-01-01T01:00:00Z"),
    ]
    api.k[f"get {PODS}", kmock.action.LIST] << (lambda: listing(pods, "9"))
    api.k[f"get {PODS}/new-pod/log"] << b'{"kueue-tes": 1, "event": "verdict"}\n'
    text = cluster.read_log(TASK_ID, "sequencer", 4096)
    assert text == '{"kueue-tes": 1, "event": "verdict"}\n'
    (call,) = api.requests("GET", f"{PODS}/new-pod/log")
    assert call.params == {"container": "sequencer", "limitBytes": "4096"}
    pods.clear()
    assert cluster.read_log(TASK_ID, "sequencer", 4096) == ""


def test_read_log_of_a_container_not_started_yet_is_empty(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    api.k[f"get {PODS}", kmock.action.LIST] << listing([pod(TASK_ID, "p")], "9")
    waiting = 'container "sequencer" in pod "p" is waiting to start: PodInitializing'
    api.k[f"get {PODS}/p/log"] << 400 << status_body(400, waiting)
    assert cluster.read_log(TASK_ID, "sequencer") == ""


# -- the Lease --------------------------------------------------------------------------------


def lease(holder: str, renewed: datetime, version: str, transitions: int = 0) -> Json:
    stamp = k8s_lease.microtime(renewed)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "watcher", "namespace": "tes-system", "resourceVersion": version},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": stamp,
                     "renewTime": stamp, "leaseTransitions": transitions}}  # fmt: skip


def test_lease_is_created_when_absent(api: MockApi, cluster: KubernetesCluster) -> None:
    assert cluster.try_lease("watcher", "pod-1", 14.5)  # the Elector's float; rounded up
    (post,) = api.requests("POST", LEASES)
    spec = post.data["spec"]
    assert spec["holderIdentity"] == "pod-1"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    renewed = k8s_lease.parse_time(spec["renewTime"])
    assert renewed is not None and abs(datetime.now(UTC) - renewed) < timedelta(seconds=5)
    assert "." in spec["renewTime"]  # MicroTime: with its fraction of a second


def test_lease_is_renewed_by_its_holder_with_its_resource_version(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    api.k[f"get {LEASES}/watcher"] << lease("pod-1", before, "41", transitions=2)
    api.k[f"put {LEASES}/watcher"] << (lambda r: r.data)
    assert cluster.try_lease("watcher", "pod-1", 15)
    (put,) = api.requests("PUT")
    assert put.data["metadata"]["resourceVersion"] == "41"
    assert put.data["spec"]["holderIdentity"] == "pod-1"
    assert put.data["spec"]["leaseTransitions"] == 2
    renewed = k8s_lease.parse_time(put.data["spec"]["renewTime"])
    assert renewed is not None and renewed > before + timedelta(seconds=4)


def test_lease_is_refused_while_another_holder_is_fresh(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    api.k[f"get {LEASES}/watcher"] << lease("pod-2", datetime.now(UTC), "41")
    assert not cluster.try_lease("watcher", "pod-1", 15)
    assert not api.requests("PUT") and not api.requests("POST")


def test_an_expired_lease_is_taken_over(api: MockApi, cluster: KubernetesCluster) -> None:
    old = datetime.now(UTC) - timedelta(seconds=60)
    api.k[f"get {LEASES}/watcher"] << lease("pod-2", old, "41", transitions=3)
    api.k[f"put {LEASES}/watcher"] << (lambda r: r.data)
    assert cluster.try_lease("watcher", "pod-1", 15)
    (put,) = api.requests("PUT")
    assert put.data["metadata"]["resourceVersion"] == "41"
    assert put.data["spec"]["holderIdentity"] == "pod-1"
    assert put.data["spec"]["leaseTransitions"] == 4
    assert put.data["spec"]["acquireTime"] == put.data["spec"]["renewTime"]


def test_a_conflict_on_replace_loses_the_round(api: MockApi, cluster: KubernetesCluster) -> None:
    old = datetime.now(UTC) - timedelta(seconds=60)
    api.k[f"get {LEASES}/watcher"] << lease("pod-2", old, "41")
    conflict = 'Operation cannot be fulfilled on leases.coordination.k8s.io "watcher"'
    api.k[f"put {LEASES}/watcher"] << 409 << status_body(409, conflict)
    assert not cluster.try_lease("watcher", "pod-1", 15)


def test_release_hands_the_lease_back(api: MockApi, cluster: KubernetesCluster) -> None:
    api.k[f"get {LEASES}/watcher"] << lease("pod-1", datetime.now(UTC), "41")
    api.k[f"put {LEASES}/watcher"] << (lambda r: r.data)
    cluster.release_lease("watcher", "pod-2")  # not ours: nothing written
    assert not api.requests("PUT")
    cluster.release_lease("watcher", "pod-1")
    (put,) = api.requests("PUT")
    assert "holderIdentity" not in put.data["spec"]
    assert put.data["metadata"]["resourceVersion"] == "41"


def test_a_forbidden_lease_names_the_lease_namespace(
    api: MockApi, cluster: KubernetesCluster
) -> None:
    message = 'leases.coordination.k8s.io "watcher" is forbidden'
    api.k[f"get {LEASES}/watcher"] << 403 << status_body(403, message)
    with pytest.raises(PermanentError) as caught:
        cluster.try_lease("watcher", "pod-1", 15)
    assert "lacks RBAC for get leases.coordination.k8s.io in namespace tes-system" in str(
        caught.value
    )
