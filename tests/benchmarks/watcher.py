"""The watcher benchmark of design section 14: observations per second into the store.

The recorded sequence of the watcher tests (queued with Kueue's reasons, admitted, two executors,
complete: 13 observations per task) is replayed for many tasks at once, interleaved, through
``Watcher.apply`` into a real SQLite store: ``states.decide`` plus the store's reads, attempt
updates and compare-and-set transitions, the report read and the Job's deletion at the end.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app import ids
from app.models import State
from app.store.base import TaskRecord
from app.store.sqlite import SqliteStore
from tests.benchmarks.harness import Row, note
from tests.integration.test_watcher import (
    OUTPUTS,
    SUBMITTED,
    TWO_EXECUTORS,
    Clock,
    ScriptedCluster,
    completed,
    report,
)
from worker import states
from worker.cluster.base import Observation
from worker.watcher import Watcher

TARGET = 1000.0  # observations per second (design section 14)
ROUNDS = 3


def _tasks(store: SqliteStore, count: int) -> list[str]:
    made = []
    for _ in range(count):
        task_id = ids.new_id()
        store.create(TaskRecord(task_id, State.QUEUED, "anonymous", {"id": task_id}))
        store.append_attempt(task_id, {"logs": [], "outputs": [], "system_logs": [SUBMITTED]})
        made.append(task_id)
    return made


def _round(directory: Path, count: int, tap: Callable[..., Any] | None = None) -> tuple[float, int]:
    """Replay ``count`` tasks through a new watcher; return the seconds and observations."""
    store = SqliteStore(directory / f"round-{time.monotonic_ns()}.db")
    try:
        cluster = ScriptedCluster(Clock())
        tasks = _tasks(store, count)
        logs = report(TWO_EXECUTORS, outputs=OUTPUTS)
        sequences = [completed(task_id) for task_id in tasks]
        for task_id in tasks:
            cluster.logs[(task_id, "sequencer")] = logs
        # Interleaved, as many tasks move at once: every task's first step, then every second.
        stream: list[Observation] = [
            obs for steps in zip(*sequences, strict=True) for _, obs in steps
        ]
        watcher = Watcher(store, cluster)
        decide = states.decide
        if tap is not None:
            states.decide = tap
        try:
            started = time.perf_counter()
            for obs in stream:
                watcher.apply(obs)
            elapsed = time.perf_counter() - started
        finally:
            states.decide = decide
        done = store.ids_in_states([State.COMPLETE], limit=count + 1)
        if len(done) != count or len(cluster.deleted) != count:
            raise RuntimeError(f"only {len(done)} of {count} tasks ended COMPLETE")
        return elapsed, len(stream)
    finally:
        store.close()


def _cas_loop(directory: Path, count: int, run: int) -> tuple[float, int]:
    """The reference: the same tasks' transitions alone, one compare-and-set each."""
    store = SqliteStore(directory / f"cas-{run}.db")
    try:
        tasks = _tasks(store, count)
        moves = (State.INITIALIZING, State.RUNNING, State.COMPLETE)
        started = time.perf_counter()
        for task_id in tasks:
            for target in moves:
                if not store.transition(task_id, target):
                    raise RuntimeError(f"task {task_id}: {target.value} refused")
        return time.perf_counter() - started, len(tasks) * len(moves)
    finally:
        store.close()


def watcher(tasks: int = 300) -> list[Row]:
    """Time the watcher against raw ``decide`` calls and a bare CAS loop; return table rows."""
    inputs: list[tuple[Any, ...]] = []
    real = states.decide

    def tap(*args: Any) -> states.Decision:
        inputs.append(args)
        return real(*args)

    with tempfile.TemporaryDirectory(prefix="kueue-tes-bench-") as tmp:
        directory = Path(tmp)
        _round(directory, tasks, tap)  # warm-up, and the exact inputs of decide
        best, count = float("inf"), 0
        for _ in range(ROUNDS):
            elapsed, count = _round(directory, tasks)
            best = min(best, elapsed)
        note(f"watcher: {count} observations in {best:.3f} s (best of {ROUNDS})")
        cas_seconds, cas_count = min(_cas_loop(directory, tasks, i) for i in range(ROUNDS))
    decide_best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for args in inputs:
            real(*args)
        decide_best = min(decide_best, time.perf_counter() - started)
    rate = count / best
    cas_rate = cas_count / cas_seconds
    decide_rate = len(inputs) / decide_best
    return [
        Row(
            f"Watcher.apply, {tasks} tasks x 13 interleaved (SQLite)",
            f"{rate:,.0f} obs/s",
            f"{cas_rate:,.0f} CAS/s",
            f"{rate / cas_rate:.2f}",
            f">= {TARGET:,.0f} obs/s",
            rate >= TARGET,
        ),
        Row(
            "states.decide alone, the same inputs",
            f"{decide_rate:,.0f} obs/s",
            f"{rate:,.0f} obs/s",
            f"{decide_rate / rate:.1f}",
        ),
    ]
