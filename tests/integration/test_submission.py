"""Submission in groups: one RQ job for the tasks CreateTask stored together, on a real Redis,
through one burst worker into KubernetesCluster against kmock's API server over HTTP.

Each task of a group is submitted on its own, with the rules of one: existing objects are
success, a task no longer QUEUED is skipped, a failure does not hold back the others and
leaves its task to the watcher's sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
import redis
from kubernetes import client
from rq import Queue
from rq.job import Job

from app import ids, queue
from app.models import State, TaskIn
from app.settings import Settings
from app.store.base import TaskRecord
from app.store.sqlite import SqliteStore
from tests.conftest import ROOT, make_settings
from tests.integration.test_kubernetes_cluster import (
    CONFIGMAPS,
    JOBS,
    NS,
    PODS,
    TASK,
    MockApi,
    job,
    listing,
    status_body,
)
from worker import context, jobs, jobspec
from worker.cluster.kubernetes import KubernetesCluster
from worker.watcher import Watcher


@dataclass
class World:
    """A store, a queue on a real Redis, and a cluster against kmock, for one worker."""

    settings: Settings
    store: SqliteStore
    tasks: queue.TaskQueue
    api: MockApi
    cluster: KubernetesCluster
    failing: set[str]  # Job names the API server answers 500 for
    flaky: dict[str, int]  # Job names the API server answers 503 for, so many more times

    def stored(self, count: int) -> list[str]:
        """Store ``count`` QUEUED tasks as CreateTask stores them; return their ids."""
        body = {key: value for key, value in TASK.items() if key not in ("id", "state")}
        made = []
        for _ in range(count):
            task_id = ids.new_id()
            doc = TaskIn.model_validate(body).model_dump(mode="json", exclude_none=True)
            doc.update(id=task_id, state="QUEUED", creation_time="2026-01-01T00:00:00Z")
            self.store.create(TaskRecord(task_id, State.QUEUED, "anonymous", doc))
            made.append(task_id)
        return made

    def work(self) -> None:
        """Drain the queue with one burst worker, as `kueue-tes worker --burst` does."""
        context.install(context.Context(self.settings, self.store, self.cluster))
        queue.run_worker(self.settings, queue.connect(self.settings), burst=True)

    def created(self, path: str) -> list[str]:
        """The names of the objects POSTed to ``path``, in order."""
        return [r.data["metadata"]["name"] for r in self.api.requests("POST", path)]


@pytest.fixture
def world(tmp_path: Path, redis_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    settings = make_settings(tmp_path, redis_url=redis_db, namespace=NS)
    api = MockApi()
    failing: set[str] = set()
    flaky: dict[str, int] = {}
    monkeypatch.setattr(jobs, "RETRY_DELAYS", (0.01, 0.01, 0.01))  # the job's own retries

    def create_job(request: kmock.Request) -> Any:
        meta = request.data["metadata"]
        refused = meta["name"] in failing or flaky.get(meta["name"])
        if refused:
            # kmock's emulator stores a POSTed object whatever the answer; a refusal stores none.
            del api.k.objects[kmock.resource("batch", "v1", "jobs"), NS, meta["name"]]
        if meta["name"] in failing:
            return kmock.Response(status=500, payload=status_body(500, "etcd timed out"))
        if refused:
            flaky[meta["name"]] -= 1
            return kmock.Response(status=503, payload=status_body(503, "apiserver restarting"))
        # Always with a status: kmock keeps the last status a callable's Response set.
        created = {**request.data, "metadata": {**meta, "uid": f"uid-{meta['name']}"}}
        return kmock.Response(status=201, payload=created)

    api.k[f"post {JOBS}"] << create_job
    api.k[f"get {PODS}", kmock.action.LIST] << (lambda: listing([], "1"))
    configuration = client.Configuration(host=api.url, no_proxy="*")
    configuration.api_key = {"authorization": "Bearer the-token"}
    cluster = KubernetesCluster(client.ApiClient(configuration), NS, request_timeout=5)
    store = SqliteStore(tmp_path / "tasks.db")
    tasks = queue.TaskQueue(settings, queue.connect(settings))
    yield World(settings, store, tasks, api, cluster, failing, flaky)
    cluster.close()
    api.stop()
    store.close()


def the_job(world: World, task_ids: list[str]) -> Job:
    """The one RQ job of a group, as the queue keeps it after the worker ran."""
    connection = redis.Redis.from_url(str(world.settings.redis_url))
    job_id = f"submit-{task_ids[0]}" + (f"-group-{len(task_ids)}" if len(task_ids) > 1 else "")
    return Job.fetch(job_id, connection=connection)


def test_a_group_job_submits_each_task_once(world: World) -> None:
    made = world.stored(5)
    world.tasks.submit_many(made)
    assert Queue(world.settings.rq_queue, connection=world.tasks.connection).count == 1
    world.work()
    names = [jobspec.job_name(task_id) for task_id in made]
    assert world.created(JOBS) == names and world.created(CONFIGMAPS) == names
    for task_id, request in zip(made, world.api.requests("POST", CONFIGMAPS), strict=True):
        owners = request.data["metadata"]["ownerReferences"]
        assert [o["uid"] for o in owners] == [f"uid-{jobspec.job_name(task_id)}"]
        got = world.store.get(task_id)
        assert got is not None and len(got.doc["logs"]) == 1 and got.state is State.QUEUED
    job = the_job(world, made)
    assert job.get_status() == "finished"
    assert job.return_value() == " ".join(f"{task_id}:submitted" for task_id in made)


def test_objects_are_posted_as_prepared_json_with_the_clients_credentials(world: World) -> None:
    [task_id] = world.stored(1)
    world.tasks.submit(task_id)
    world.work()
    record = world.store.get(task_id)
    assert record is not None
    job_post, configmap_post = world.api.requests("POST")
    for request in (job_post, configmap_post):
        assert request.headers["Authorization"] == "Bearer the-token"
        assert request.headers["Content-Type"] == "application/json"
    # Exactly our manifest: nothing dropped, renamed or added by the client's models.
    assert job_post.data == jobspec.build_job(record.doc, world.settings, {})
    assert json.loads(job_post.body) == job_post.data


def test_a_failing_task_does_not_hold_back_its_group(world: World) -> None:
    made = world.stored(3)
    world.failing.add(jobspec.job_name(made[1]))
    world.tasks.submit_many(made)
    world.work()
    assert world.created(CONFIGMAPS) == [jobspec.job_name(made[0]), jobspec.job_name(made[2])]
    job = the_job(world, made)
    assert job.get_status() == "failed"
    assert "etcd timed out" in str(job.exc_info) and f"{made[1]}:error" in str(job.exc_info)
    # The failed task stays QUEUED with no Job; the watcher's sweep enqueues it again.
    world.failing.clear()
    watcher = Watcher(world.store, world.cluster, resubmit=world.tasks.submit, grace_seconds=0)
    watcher.sweep()
    world.work()
    assert world.created(CONFIGMAPS)[-1] == jobspec.job_name(made[1])
    got = world.store.get(made[1])
    assert got is not None and len(got.doc["logs"]) == 1  # the same attempt, not a second


def test_a_transient_failure_is_tried_again_by_the_same_job(world: World) -> None:
    made = world.stored(3)
    world.flaky[jobspec.job_name(made[1])] = 2  # a restarting API server: two 503s, then fine
    world.tasks.submit_many(made)
    world.work()
    names = [jobspec.job_name(task_id) for task_id in made]
    assert sorted(world.created(CONFIGMAPS)) == sorted(names)
    job = the_job(world, made)
    assert job.get_status() == "finished"
    assert job.return_value() == " ".join(f"{task_id}:submitted" for task_id in made)
    # The others did not wait for the flaky one: it was tried again after them.
    assert world.created(CONFIGMAPS)[-1] == names[1]


def test_a_group_skips_tasks_no_longer_queued_and_finds_existing_objects(world: World) -> None:
    made = world.stored(3)
    assert world.store.transition(made[0], State.CANCELING)
    key = kmock.resource("batch", "v1", "jobs"), NS, jobspec.job_name(made[2])
    world.api.k.objects[key] = job(made[2], "uid-existing")  # made[2]'s Job exists already
    world.tasks.submit_many(made)
    world.work()
    outcomes = str(the_job(world, made).return_value()).split()
    assert outcomes == [
        f"{made[0]}:skipped:CANCELING",
        f"{made[1]}:submitted",
        f"{made[2]}:submitted",
    ]
    assert world.created(JOBS) == [jobspec.job_name(made[1]), jobspec.job_name(made[2])]  # 409
    configmaps = world.api.requests("POST", CONFIGMAPS)
    owners = [r.data["metadata"]["ownerReferences"][0]["uid"] for r in configmaps]
    assert owners == [f"uid-{jobspec.job_name(made[1])}", "uid-existing"]


def test_a_burst_worker_with_nothing_to_do_stops_at_once(tmp_path: Path, redis_db: str) -> None:
    # RQ's command listener waited up to 60 s, and redis-py joins it when the worker stops
    # (app.queue). A fresh, quiet process stops before the listener saw its subscription.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUEUE_TES")}
    env.update(KUEUE_TES_REDIS_URL=redis_db, KUEUE_TES_LOG_LEVEL="WARNING")
    env.update(KUEUE_TES_DATA_DIR=str(tmp_path))
    code = "from app import cli, queue; s = cli.Settings(); "
    code += "queue.run_worker(s, queue.connect(s), burst=True)"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=30)


def test_a_cancel_that_fails_for_a_moment_is_tried_again(world: World) -> None:
    [task_id] = world.stored(1)
    name = jobspec.job_name(task_id)
    world.api.k.objects[kmock.resource("batch", "v1", "jobs"), NS, name] = job(task_id, "u")
    refusals = [503]

    def delete_job(request: kmock.Request) -> Any:
        if refusals:
            return kmock.Response(status=refusals.pop(), payload=status_body(503, "restarting"))
        return kmock.Response(status=200, payload={"kind": "Status", "status": "Success"})

    world.api.k[f"delete {JOBS}/{name}"] << delete_job
    assert world.store.transition(task_id, State.CANCELING)
    world.tasks.cancel(task_id)
    world.work()
    tried = [r.url.path for r in world.api.requests("DELETE") if r.url.path.startswith(JOBS)]
    assert tried == [f"{JOBS}/{name}"] * 2  # refused once, then done
    connection = redis.Redis.from_url(str(world.settings.redis_url))
    assert Job.fetch(f"cancel-{task_id}", connection=connection).get_status() == "finished"
