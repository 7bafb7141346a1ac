"""Group commit (app.intake) on a real SQLite file and a real redis-server, and what a 200 means.

A 200 is sent once the task is committed; its RQ job follows. The crash test kills an API
server right after a 200, before it could enqueue, and shows that the task is stored and is
still submitted: the watcher's sweep enqueues it, a worker creates its Job.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kmock
import pytest
import redis
from kubernetes import client
from rq import Queue

from app import ids, queue
from app.intake import Intake
from app.models import State
from app.store.base import StoreError, TaskRecord
from app.store.sqlite import SqliteStore
from tests.conftest import ROOT, free_port, make_settings
from tests.integration.test_kubernetes_cluster import CONFIGMAPS, JOBS, NS, PODS, MockApi, listing
from worker import context
from worker.cluster.kubernetes import KubernetesCluster
from worker.watcher import Watcher


def record(name: str = "t") -> TaskRecord:
    """A new QUEUED task record."""
    task_id = ids.new_id()
    doc = {"id": task_id, "name": name, "executors": [{"image": "a", "command": ["true"]}]}
    return TaskRecord(id=task_id, state=State.QUEUED, owner="anonymous", doc=doc)


class Recording(SqliteStore):
    """A SqliteStore that records the size of every group it stores, and can hold the first."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.groups: list[int] = []
        self.entered = threading.Event()

    def create_many(self, records: Sequence[TaskRecord]) -> list[StoreError | None]:
        self.groups.append(len(records))
        self.entered.set()
        return super().create_many(records)


def submit_jobs(redis_url: str, settings: Any) -> list[tuple[str, ...]]:
    """The task ids of every submit job on the queue, job by job."""
    connection = redis.Redis.from_url(redis_url)
    return [tuple(job.args) for job in Queue(settings.rq_queue, connection=connection).get_jobs()]


def test_tasks_that_wait_share_one_transaction_and_one_job(tmp_path: Path, redis_db: str) -> None:
    settings = make_settings(tmp_path, redis_url=redis_db)
    store = Recording(tmp_path / "tasks.db")
    intake = Intake(store, queue.TaskQueue(settings, queue.connect(settings)))
    first, rest = record("first"), [record(f"r{i}") for i in range(39)]
    # Another connection holds SQLite's write lock, so the first group waits in its commit.
    blocker = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    async def burst() -> None:
        lead = asyncio.create_task(intake.admit(first))
        while not store.entered.is_set():
            await asyncio.sleep(0.01)
        others = [asyncio.create_task(intake.admit(r)) for r in rest]
        await asyncio.sleep(0.2)  # all of them are waiting now
        assert not lead.done() and not any(task.done() for task in others)  # nothing answered
        blocker.execute("COMMIT")
        await asyncio.gather(lead, *others)

    asyncio.run(burst())
    blocker.close()
    assert store.groups == [1, 39]
    assert intake.flush()
    jobs = submit_jobs(redis_db, settings)
    assert len(jobs) <= 2  # the enqueuer may wait for the second group and take both
    assert sorted(i for job in jobs for i in job) == sorted(r.id for r in [first, *rest])
    for rec in [first, *rest]:
        got = store.get(rec.id)
        assert got is not None and got.state is State.QUEUED
    store.close()


def test_groups_are_capped(tmp_path: Path, redis_db: str) -> None:
    settings = make_settings(tmp_path, redis_url=redis_db)
    store = Recording(tmp_path / "tasks.db")
    intake = Intake(store, queue.TaskQueue(settings, queue.connect(settings)), max_group=4)
    blocker = sqlite3.connect(tmp_path / "tasks.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    records = [record() for _ in range(10)]

    async def burst() -> None:
        lead = asyncio.create_task(intake.admit(records[0]))
        while not store.entered.is_set():
            await asyncio.sleep(0.01)
        others = [asyncio.create_task(intake.admit(r)) for r in records[1:]]
        await asyncio.sleep(0.1)
        blocker.execute("COMMIT")
        await asyncio.gather(lead, *others)

    asyncio.run(burst())
    blocker.close()
    assert store.groups == [1, 4, 4, 1]
    assert intake.flush()
    jobs = submit_jobs(redis_db, settings)
    assert all(len(job) <= 4 for job in jobs)
    assert sorted(i for job in jobs for i in job) == sorted(r.id for r in records)
    store.close()


def test_a_store_failure_reaches_every_request_of_its_group(tmp_path: Path, redis_db: str) -> None:
    class Broken(SqliteStore):
        def create_many(self, records: Sequence[TaskRecord]) -> list[StoreError | None]:
            raise StoreError("disk I/O error")

    settings = make_settings(tmp_path, redis_url=redis_db)
    intake = Intake(Broken(tmp_path / "t.db"), queue.TaskQueue(settings, queue.connect(settings)))

    async def two() -> list[Any]:
        return await asyncio.gather(
            intake.admit(record()), intake.admit(record()), return_exceptions=True
        )

    errors = asyncio.run(two())
    assert [type(error) for error in errors] == [StoreError, StoreError]
    with pytest.raises(StoreError):
        intake.admit_blocking(record())
    assert intake.flush()
    assert submit_jobs(redis_db, settings) == []  # nothing stored, nothing to submit


def test_a_queue_outage_answers_and_leaves_the_task_to_the_sweep(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    store = SqliteStore(tmp_path / "t.db")
    intake = Intake(store, queue.TaskQueue(settings, queue.connect(settings)))
    rec = record()
    intake.admit_blocking(rec)  # answered: the task is stored
    assert intake.flush()
    got = store.get(rec.id)
    assert got is not None and got.state is State.QUEUED
    assert any(rec.id in r.message and "sweep" in r.message for r in caplog.records)
    store.close()


# -- a crash right after the 200 --------------------------------------------------------------


class Unanswering:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def hanging_redis() -> Iterator[Unanswering]:
    server = Unanswering()
    yield server
    server.close()


def _post(port: int, body: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/ga4gh/tes/v1/tasks", json.dumps(body), JSON_HEADERS)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


JSON_HEADERS = {"content-type": "application/json"}


def test_a_task_answered_200_is_submitted_after_the_server_is_killed(
    tmp_path: Path, redis_db: str, hanging_redis: Unanswering
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUEUE_TES")}
    env.update(
        KUEUE_TES_DATA_DIR=str(tmp_path / "data"),
        KUEUE_TES_REDIS_URL=f"redis://127.0.0.1:{hanging_redis.port}/0",
        KUEUE_TES_HOST="127.0.0.1",
        KUEUE_TES_PORT=str(port),
        KUEUE_TES_WORKERS="1",
    )
    log = (tmp_path / "api.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "api"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, answer = _post(port, {"executors": [{"image": "a", "command": ["x"]}]})
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no API server"
                time.sleep(0.1)
        assert status == 200, answer
        # Its enqueue is under way, and hangs: the server is killed with the job unsent.
        while not hanging_redis.held and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its worker
        server.wait(10)
        log.close()
    task_id = answer["id"]
    settings = make_settings(tmp_path, redis_url=redis_db, namespace=NS)
    store = SqliteStore(settings.store_path())
    stored = store.get(task_id)
    assert stored is not None and stored.state is State.QUEUED  # durable across the kill
    assert hanging_redis.held, "the server never tried to enqueue"  # it was under way
    task_queue = queue.TaskQueue(settings, queue.connect(settings))
    assert task_queue.submits.count == 0  # the job was lost with the server
    api = MockApi()
    api.k[f"get {PODS}", kmock.action.LIST] << (lambda: listing([], "1"))  # no pod either
    api.k[f"post {JOBS}"] << (lambda r: {**r.data, "metadata": {**r.data["metadata"], "uid": "u"}})
    cluster = KubernetesCluster(client.ApiClient(client.Configuration(host=api.url)), NS)
    try:
        watcher = Watcher(store, cluster, resubmit=task_queue.submit, grace_seconds=0)
        watcher.sweep()  # QUEUED with no Job: enqueued again
        context.install(context.Context(settings=settings, store=store, cluster=cluster))
        queue.run_worker(settings, queue.connect(settings), burst=True)
        posts = [r.url.path for r in api.requests("POST")]
        assert posts == [JOBS, CONFIGMAPS]
        assert api.requests("POST")[0].data["metadata"]["name"] == f"tes-{task_id}"
        got = store.get(task_id)
        assert got is not None and len(got.doc["logs"]) == 1  # its first attempt began
    finally:
        cluster.close()
        api.stop()
        store.close()
