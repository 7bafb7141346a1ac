"""The submission benchmark of design section 14: tasks per second from RQ into the cluster.

Tasks are stored QUEUED in a SQLite store as CreateTask stores them and enqueued as it enqueues
them (``TaskQueue.submit``, on a real redis-server); then ``app.queue.run_worker`` drains the
queue in burst mode, as ``kueue-tes worker --burst`` does: each RQ job is ``worker.jobs.submit``,
which reads the task, builds its ConfigMap and Job, appends the first attempt and calls
``KubernetesCluster.submit`` against kmock's Kubernetes emulator over real HTTP on 127.0.0.1
(the ``MockApi`` of the cluster tests, its event loop on a thread of this process). The
reference is the same calls of ``KubernetesCluster.submit`` in a bare loop: the ratio shows
what RQ, the store and the manifests add to the API calls.
"""

from __future__ import annotations

import asyncio
import collections
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kmock
import redis
from kubernetes import client
from rq import Queue

from app import ids, queue
from app.api.tasks import now_rfc3339
from app.models import State, TaskIn
from app.settings import Settings
from app.store.base import TaskRecord
from app.store.sqlite import SqliteStore
from tests.benchmarks.harness import Row, note, redis_server
from tests.integration.test_kubernetes_cluster import CONFIGMAPS, JOBS, NS, TASK, MockApi
from worker import context, jobs, jobspec
from worker.cluster.kubernetes import KubernetesCluster

TARGET = 200.0  # tasks per second (design section 14)
ROUNDS = 3
NOOP = "tests.benchmarks.submit.noop"
JOB_RESOURCE = kmock.resource("batch", "v1", "jobs")
CONFIGMAP_RESOURCE = kmock.resource("", "v1", "configmaps")

Json = dict[str, Any]


def noop(task_id: str) -> str:
    """An RQ job that does nothing: what RQ itself costs per job."""
    return task_id


def _body() -> Json:
    """The task of the cluster tests (two executors, an input, an output) as a client sends it."""
    return {key: value for key, value in TASK.items() if key not in ("id", "state")}


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator without its request history; it counts the creations instead.

    kmock keeps every request and finds the reaction to a new one by filtering that whole
    history, so its cost per request grows with the requests served: over the thousands of
    requests of this benchmark it would measure kmock. A request leaves the history once
    answered; the objects it created stay in ``objects``.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.created: collections.Counter[str] = collections.Counter()

    async def _handle(self, request: kmock.Request) -> Any:
        if request.method.value.upper() == "POST":
            self.created[request.url.path] += 1
        try:
            return await super()._handle(request)
        finally:
            self._requests.remove(request)


class _MockApi(MockApi):
    """The cluster tests' MockApi on the emulator above."""

    async def _main(self) -> None:
        self._done = asyncio.Event()
        async with _Emulator() as handler, kmock.Server(handler) as server:
            self.emulator = handler
            self.k, self.url = handler, str(server.url).rstrip("/")
            self._ready.set()
            await self._done.wait()


def _created(request: kmock.Request) -> Json:
    """Answer a creation as the API server does: the object with a uid.

    Answered here rather than by the emulator's fallback, which looks the new object up among
    all the stored ones.
    """
    meta = request.data["metadata"]
    prefix = "uid" if request.data.get("kind") == "Job" else "uid-configmap"
    return {**request.data, "metadata": {**meta, "uid": f"{prefix}-{meta['name']}"}}


@contextmanager
def _mock() -> Iterator[tuple[_MockApi, KubernetesCluster]]:
    """A fresh emulator (no objects yet) and a KubernetesCluster against it."""
    api = _MockApi()
    api.k[f"post {JOBS}"] << _created
    api.k[f"post {CONFIGMAPS}"] << _created
    api_client = client.ApiClient(client.Configuration(host=api.url, no_proxy="*"))
    cluster = KubernetesCluster(api_client, NS, request_timeout=10)
    try:
        yield api, cluster
    finally:
        cluster.close()
        close: Callable[[], None] = api_client.close  # untyped in the client
        close()
        api.stop()


def _settings(directory: Path, redis_url: str) -> Settings:
    return Settings(
        data_dir=directory,
        sqlite_path=directory / f"tasks-{time.monotonic_ns()}.db",
        mongo_uri=None,
        redis_url=redis_url,
        namespace=NS,
        log_level="WARNING",
    )


def _store(settings: Settings, count: int) -> tuple[SqliteStore, list[str]]:
    """A new store holding ``count`` QUEUED tasks, stored as CreateTask stores them."""
    store = SqliteStore(settings.store_path())
    task = TaskIn.model_validate(_body())
    made = []
    for _ in range(count):
        task_id = ids.new_id()
        doc = task.model_dump(mode="json", exclude_none=True)
        doc.update(id=task_id, state=State.QUEUED.value, creation_time=now_rfc3339())
        store.create(TaskRecord(id=task_id, state=State.QUEUED, owner="anonymous", doc=doc))
        made.append(task_id)
    return store, made


def _verify(api: _MockApi, store: SqliteStore | None, tasks: list[str]) -> None:
    """Every task has its Job and its ConfigMap owned by it (and, with a store, one attempt)."""
    objects = api.k.objects
    for task_id in tasks:
        name = jobspec.job_name(task_id)
        if (JOB_RESOURCE, NS, name) not in objects:
            raise RuntimeError(f"task {task_id}: no Job {name} on the mock API server")
        if (CONFIGMAP_RESOURCE, NS, name) not in objects:
            raise RuntimeError(f"task {task_id}: no ConfigMap {name} on the mock API server")
        owners = objects[CONFIGMAP_RESOURCE, NS, name]["metadata"].get("ownerReferences") or []
        if [ref.get("uid") for ref in owners] != [f"uid-{name}"]:
            raise RuntimeError(f"task {task_id}: ConfigMap {name} is not owned by its Job")
        if store is not None:
            record = store.get(task_id)
            attempts = [] if record is None else record.doc.get("logs") or []
            if len(attempts) != 1:
                raise RuntimeError(f"task {task_id}: {len(attempts)} attempts in the store")
    created = api.emulator.created
    if created[JOBS] != len(tasks) or created[CONFIGMAPS] != len(tasks):
        raise RuntimeError(f"{dict(created)} created for {len(tasks)} tasks; expected one each")


def _rq_round(directory: Path, redis_url: str, connection: redis.Redis, count: int) -> float:
    """Enqueue ``count`` stored tasks, then time a burst worker draining them."""
    settings = _settings(directory, redis_url)
    connection.flushdb()
    store, tasks = _store(settings, count)
    try:
        with _mock() as (api, cluster):
            task_queue = queue.TaskQueue(settings, connection)
            for task_id in tasks:
                task_queue.submit(task_id)
            context.install(context.Context(settings=settings, store=store, cluster=cluster))
            started = time.perf_counter()
            queue.run_worker(settings, connection, burst=True)
            elapsed = time.perf_counter() - started
            _verify(api, store, tasks)
        left = task_queue.submits.count
        if left:
            raise RuntimeError(f"{left} submit jobs left in the queue after the burst")
        return elapsed
    finally:
        store.close()


def _jobs_round(directory: Path, redis_url: str, count: int) -> float:
    """Time ``worker.jobs.submit`` called in a loop: the store, manifests and cluster, no RQ."""
    settings = _settings(directory, redis_url)
    store, tasks = _store(settings, count)
    try:
        with _mock() as (api, cluster):
            context.install(context.Context(settings=settings, store=store, cluster=cluster))
            started = time.perf_counter()
            for task_id in tasks:
                if jobs.submit(task_id) != "submitted":
                    raise RuntimeError(f"task {task_id}: not submitted")
            elapsed = time.perf_counter() - started
            _verify(api, store, tasks)
        return elapsed
    finally:
        store.close()


def _direct_round(settings: Settings, count: int) -> float:
    """The reference: ``KubernetesCluster.submit`` of prepared manifests in a bare loop."""
    task = TaskIn.model_validate(_body()).model_dump(mode="json", exclude_none=True)
    prepared = []
    for _ in range(count):
        doc = {**task, "id": ids.new_id(), "state": State.QUEUED.value}
        configmap = jobspec.build_configmap(doc, settings)
        prepared.append((doc["id"], configmap, jobspec.build_job(doc, settings, os.environ)))
    with _mock() as (api, cluster):
        started = time.perf_counter()
        for task_id, configmap, job in prepared:
            cluster.submit(task_id, configmap, job)
        elapsed = time.perf_counter() - started
        _verify(api, None, [task_id for task_id, _, _ in prepared])
    return elapsed


def _noop_round(settings: Settings, connection: redis.Redis, count: int) -> float:
    """Time a burst worker draining ``count`` no-op jobs enqueued as TaskQueue enqueues."""
    connection.flushdb()
    submits = Queue(settings.rq_queue, connection=connection)
    for _ in range(count):
        task_id = ids.new_id()
        submits.enqueue(
            NOOP,
            task_id,
            job_id=queue.job_id("submit", task_id),
            result_ttl=3600,
            failure_ttl=7 * 24 * 3600,
            description=f"submit {task_id}",
        )
    started = time.perf_counter()
    queue.run_worker(settings, connection, burst=True)
    elapsed = time.perf_counter() - started
    if submits.count:
        raise RuntimeError(f"{submits.count} no-op jobs left in the queue after the burst")
    return elapsed


def submit(tasks: int = 400) -> list[Row]:
    """Time RQ submit jobs into KubernetesCluster against direct calls; return table rows."""
    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        directory = Path(tmp)
        with redis_server(directory) as redis_url:
            connection = redis.Redis.from_url(redis_url)
            settings = _settings(directory, redis_url)
            runs: dict[str, Callable[[], float]] = {
                "RQ submit jobs": lambda: _rq_round(directory, redis_url, connection, tasks),
                "direct cluster.submit": lambda: _direct_round(settings, tasks),
                "jobs.submit in a loop": lambda: _jobs_round(directory, redis_url, tasks),
                "RQ no-op jobs": lambda: _noop_round(settings, connection, tasks),
            }
            try:
                for run in runs.values():
                    run()  # warm-up: imports, the client's models, the first connections
                best = dict.fromkeys(runs, float("inf"))
                for _ in range(ROUNDS):  # taking turns, so all see the same background load
                    for label, run in runs.items():
                        best[label] = min(best[label], run())
            finally:
                connection.close()
    for label, seconds in best.items():
        note(f"submit: {label}: {tasks} in {seconds:.3f} s, {seconds / tasks * 1e3:.2f} ms each")
    via_rq, direct, called, noops = (tasks / best[label] for label in runs)
    return [
        Row(
            f"RQ submit jobs -> KubernetesCluster (mock API), {tasks} tasks",
            f"{via_rq:,.0f} tasks/s",
            f"{direct:,.0f} calls/s",
            f"{via_rq / direct:.2f}",
            f">= {TARGET:,.0f} tasks/s",
            via_rq >= TARGET,
        ),
        Row(
            "part: jobs.submit in a loop (store + manifests + cluster, no RQ)",
            f"{called:,.0f} tasks/s",
            f"{direct:,.0f} calls/s",
            f"{called / direct:.2f}",
        ),
        Row(
            "part: RQ no-op jobs through the same burst worker",
            f"{noops:,.0f} jobs/s",
            f"{via_rq:,.0f} tasks/s",
            f"{noops / via_rq:.1f}",
        ),
    ]
