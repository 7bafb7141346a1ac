"""What the watcher and the worker count: admissions, evictions, ends and submissions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app import ids
from app.models import State
from app.store.base import TaskRecord
from app.store.sqlite import SqliteStore
from tests.conftest import make_settings
from tests.integration import test_watcher
from tests.integration.test_watcher import (
    OUTPUTS,
    T0,
    TWO_EXECUTORS,
    World,
    preempted,
    report,
    stamp,
)
from worker import context, jobs
from worker.cluster.base import PermanentError, TransientError

QUEUE = "team-a"
world = test_watcher.world  # the fixture, shared


def sample(name: str, **labels: str) -> float:
    """The current value of one sample of this process's metrics (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_preemption_counts_an_eviction_two_waits_and_one_run(world: World) -> None:
    """Admitted after 10 s, preempted, re-admitted 20 s after the eviction, then COMPLETE."""
    task = ids.new_id(int(T0 * 1000))
    doc = {
        "id": task,
        "creation_time": stamp(0),
        "resources": {"backend_parameters": {"queue": QUEUE}},
        "executors": [{"image": "ubuntu:24.04", "command": ["true"]}] * 2,
    }
    world.store.create(TaskRecord(task, State.QUEUED, "anonymous", doc))
    world.store.append_attempt(task, {"logs": [], "outputs": [], "system_logs": []})
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS, outputs=OUTPUTS)
    world.cluster.logs[(f"tes-{task}-p1xxx", "sequencer")] = report([], verdict=None)
    wait = "kueue_tes_task_queue_wait_seconds"
    before = {
        "evictions": sample("kueue_tes_task_evictions_total", queue=QUEUE, reason="Preempted"),
        "waits": sample(f"{wait}_count", queue=QUEUE),
        "le15": sample(f"{wait}_bucket", queue=QUEUE, le="15.0"),
        "le30": sample(f"{wait}_bucket", queue=QUEUE, le="30.0"),
        "sum": sample(f"{wait}_sum", queue=QUEUE),
        "runs": sample("kueue_tes_task_run_seconds_count", queue=QUEUE, state="COMPLETE"),
    }
    world.cluster.load(preempted(task))
    world.play(world.watcher())
    assert world.moves(task)[-1] == "COMPLETE"
    evictions = sample("kueue_tes_task_evictions_total", queue=QUEUE, reason="Preempted")
    assert evictions - before["evictions"] == 1
    # Two admissions: 10 s after creation, and 20 s after the eviction (stamps 20 → 40).
    assert sample(f"{wait}_count", queue=QUEUE) - before["waits"] == 2
    assert sample(f"{wait}_sum", queue=QUEUE) - before["sum"] == 30
    assert sample(f"{wait}_bucket", queue=QUEUE, le="15.0") - before["le15"] == 1
    assert sample(f"{wait}_bucket", queue=QUEUE, le="30.0") - before["le30"] == 2
    runs = sample("kueue_tes_task_run_seconds_count", queue=QUEUE, state="COMPLETE")
    assert runs - before["runs"] == 1


class _Refusing:
    """A cluster whose API refuses every Job, for good or for now."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def submit(self, task_id: str, configmap: Any, job: Any) -> None:
        raise self.error


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A store with the worker's context around it."""
    opened = SqliteStore(tmp_path / "tasks.db", default_queue="tes")
    yield opened
    opened.close()


def _queued(store: SqliteStore, **resources: Any) -> str:
    task_id = ids.new_id()
    doc = {"id": task_id, "executors": [{"image": "a", "command": ["true"]}]}
    if resources:
        doc["resources"] = resources
    store.create(TaskRecord(task_id, State.QUEUED, "anonymous", doc))
    return task_id


@pytest.mark.parametrize(
    ("error", "reason", "result"),
    [
        (PermanentError("forbidden"), "refused", "failed"),
        (TransientError("timed out"), "transient", None),
    ],
)
def test_submission_failures_are_counted_by_reason(
    store: SqliteStore,
    tmp_path: Path,
    error: Exception,
    reason: str,
    result: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs, "RETRY_DELAYS", (0.01, 0.01))  # counted once, after the last try
    settings = make_settings(tmp_path)
    context.install(context.Context(settings, store, _Refusing(error)))  # type: ignore[arg-type]
    task_id = _queued(store)
    before = sample("kueue_tes_submission_failures_total", reason=reason)
    submitted = sample("kueue_tes_submissions_total", queue="tes")
    if result is None:
        with pytest.raises(TransientError):
            jobs.submit(task_id)
    else:
        assert jobs.submit(task_id) == result
    assert sample("kueue_tes_submission_failures_total", reason=reason) - before == 1
    assert sample("kueue_tes_submissions_total", queue="tes") == submitted


def test_a_task_that_cannot_become_a_pod_is_an_invalid_submission(
    store: SqliteStore, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, gpu_resources=[])  # GPUs are no longer offered
    context.install(context.Context(settings, store, _Refusing(AssertionError("not reached"))))  # type: ignore[arg-type]
    task_id = _queued(store, backend_parameters={"gpus": "1"})
    before = sample("kueue_tes_submission_failures_total", reason="invalid_task")
    assert jobs.submit(task_id) == "failed"
    assert sample("kueue_tes_submission_failures_total", reason="invalid_task") - before == 1
    got = store.get(task_id)
    assert got is not None and got.state is State.SYSTEM_ERROR
