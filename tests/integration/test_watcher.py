"""The watcher against recorded Job, Pod and Workload sequences, a scripted cluster and SQLite.

Each scenario is a list of (seconds after T0, Observation) steps shaped as Kubernetes and Kueue
report them. The scripted cluster hands them out through ``watch`` and sets the watcher's clock
to each step's time; ``snapshot`` returns what has been shown so far, ``delete`` records calls and
shows the deletion, ``read_log`` returns a prepared sequencer report. The builders are public:
the watcher benchmark replays the same sequences.
"""

from __future__ import annotations

import builtins
import copy
import io
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app import ids
from app.models import State
from app.store.base import Page, TaskFilter, TaskRecord, TaskStore
from app.store.sqlite import SqliteStore
from worker.cluster.base import MANAGED_BY, QUEUE_NAME, TASK_ID, ClusterError, Kind, Observation
from worker.election import Elector
from worker.sequencer.report import Report
from worker.watcher import Watcher

Json = dict[str, Any]
NS = "kueue-tes-tasks"
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
Step = tuple[float, Observation]
QUOTA = "couldn't assign flavors to pod set main: insufficient unused quota for cpu in flavor "
PREEMPTED = (
    "Preempted to accommodate a workload (UID: 5b1c, JobUID: 7d2e) due to prioritization in "
    "the ClusterQueue"
)
SUBMITTED = "submitted to LocalQueue tes"


# -- builders -----------------------------------------------------------------------------------


def stamp(at: float) -> str:
    """RFC 3339 time ``at`` seconds after T0, as the API server writes it."""
    return datetime.fromtimestamp(T0 + at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cond(kind: str, status: str, reason: str, message: str = "", at: float = 0.0) -> Json:
    """A status condition."""
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": stamp(at),
    }


def _meta(task_id: str, name: str, at: float = 0.0) -> Json:
    labels = {MANAGED_BY: "kueue-tes", TASK_ID: task_id, QUEUE_NAME: "tes"}
    return {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "creationTimestamp": stamp(at),
        "labels": labels,
    }


def job(task_id: str, *, suspended: bool = True, conditions: Iterable[Json] = ()) -> Json:
    """The task's Job: suspended until Kueue admits it."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(task_id, f"tes-{task_id}"),
        "spec": {"suspend": suspended, "backoffLimit": 0},
        "status": {"conditions": list(conditions)},
    }


def workload(task_id: str, *conditions: Json) -> Json:
    """Kueue's Workload of the task's Job."""
    meta = _meta(task_id, f"job-tes-{task_id}-3f9a1")
    return {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": meta,
        "spec": {"queueName": "tes", "active": True},
        "status": {"conditions": list(conditions)},
    }


def pending(task_id: str, message: str, at: float) -> Json:
    """A Workload waiting for quota."""
    return workload(
        task_id,
        cond("QuotaReserved", "False", "Pending", message, at),
        cond("Admitted", "False", "NoReservation", "The workload has no reservation", at),
    )


def admitted(task_id: str, at: float, previously: str | None = None) -> Json:
    """An admitted Workload; after an eviction Kueue keeps the old reason as 'Previously'."""
    conditions = [
        cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq", at),
        cond("Admitted", "True", "Admitted", "The workload is admitted", at),
    ]
    if previously:
        conditions.append(cond("Evicted", "False", "QuotaReserved", f"Previously: {previously}"))
    return workload(task_id, *conditions)


def evicted(task_id: str, reason: str, message: str, at: float, waiting: str = "") -> Json:
    """A Workload Kueue has evicted (and, after preemption, queued again)."""
    conditions = [
        cond("Evicted", "True", reason, message, at),
        cond("Admitted", "False", "NoReservation", "The workload has no reservation", at),
    ]
    if waiting:
        conditions.append(cond("QuotaReserved", "False", "Pending", waiting, at))
    return workload(task_id, *conditions)


def runner_message(code: int, at: float) -> str:
    """The runner's termination message (runner.sh)."""
    return json.dumps({"exit_code": code, "start": stamp(at), "end": stamp(at + 1)})


def running(name: str, at: float) -> Json:
    """A running container."""
    return {"name": name, "ready": True, "state": {"running": {"startedAt": stamp(at)}}}


def waiting(name: str, reason: str, message: str = "") -> Json:
    """A waiting container."""
    return {
        "name": name,
        "ready": False,
        "state": {"waiting": {"reason": reason, "message": message}},
    }


def ended(name: str, code: int, at: float, reason: str = "", message: str = "") -> Json:
    """A terminated container."""
    why = reason or ("Completed" if code == 0 else "Error")
    state = {"exitCode": code, "reason": why, "startedAt": stamp(at), "finishedAt": stamp(at + 1)}
    if message:
        state["message"] = message
    return {"name": name, "ready": False, "state": {"terminated": state}}


def pod(
    task_id: str, suffix: str, phase: str, init: list[Json], main: list[Json], at: float
) -> Json:
    """The task pod with its spec (images, memory limits) and container statuses."""
    limits = {"limits": {"memory": "1024Mi"}}
    executors = [
        {"name": f"executor-{i}", "image": "ubuntu:24.04", "resources": limits} for i in range(2)
    ]
    name = f"tes-{task_id}-{suffix}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**_meta(task_id, name, at), "annotations": {}},
        "spec": {
            "initContainers": [{"name": "setup"}, {"name": "sequencer"}, *executors],
            "containers": [{"name": "finish"}],
        },
        "status": {
            "phase": phase,
            "startTime": stamp(at),
            "conditions": [cond("PodScheduled", "True", "", "", at)],
            "initContainerStatuses": init,
            "containerStatuses": main,
        },
    }


def pod_run(task_id: str, suffix: str, at: float, verdict: int = 0) -> list[Json]:
    """The snapshots of a task pod that runs two executors to the end."""
    setup, seq = ended("setup", 0, at), running("sequencer", at + 1)
    e0, e1 = ended("executor-0", 0, at + 2, message=runner_message(0, at + 2)), None
    e1 = ended("executor-1", 0, at + 4, message=runner_message(0, at + 4))
    init = [waiting("finish", "PodInitializing")]

    def snapshot(phase: str, statuses: list[Json], main: list[Json] = init) -> Json:
        return pod(task_id, suffix, phase, statuses, main, at)

    last = "Succeeded" if verdict == 0 else "Failed"
    return [
        snapshot("Pending", [waiting("setup", "PodInitializing")]),
        snapshot("Pending", [setup, seq, waiting("executor-0", "PodInitializing")]),
        snapshot("Pending", [setup, seq, running("executor-0", at + 2)]),
        snapshot("Pending", [setup, seq, e0, running("executor-1", at + 4)]),
        snapshot("Running", [setup, seq, e0, e1], [running("finish", at + 6)]),
        snapshot(
            last, [setup, ended("sequencer", 0, at + 7), e0, e1], [ended("finish", verdict, at + 7)]
        ),
    ]


def complete(task_id: str) -> Json:
    """The Job once its pod succeeded."""
    done = cond(
        "Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods"
    )
    return job(task_id, suspended=False, conditions=[done])


def observe(at: float, obj: Json) -> Step:
    """One recorded change: ``obj`` as the watch stream reports it at T0 + ``at``."""
    meta = obj["metadata"]
    return at, Observation(meta["labels"][TASK_ID], obj["kind"], meta["name"], obj)


def gone(at: float, obj: Json) -> Step:
    """The deletion of ``obj``."""
    meta = obj["metadata"]
    return at, Observation(meta["labels"][TASK_ID], obj["kind"], meta["name"], None)


def report(
    executors: list[tuple[int, str, str]],
    verdict: str | None = "COMPLETE",
    outputs: list[Json] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The sequencer's log: its report lines (worker/sequencer/report.py) among other lines."""
    out = io.StringIO()
    out.write("sequencer INFO staging 0 inputs\n")
    lines = Report(out)
    lines.event("started", time=stamp(11))
    lines.event("staged", ok=True, time=stamp(12), system_logs=[])
    for i, (code, stdout, stderr) in enumerate(executors):
        lines.event(
            "executor", index=i, exit_code=code, start_time=stamp(13 + i), end_time=stamp(14 + i),
            stdout=stdout, stderr=stderr,
        )  # fmt: skip
    if verdict is not None:
        lines.event("outputs", outputs=outputs or [], system_logs=notes or [])
        lines.event("verdict", state=verdict, time=stamp(20), system_logs=[])
    return out.getvalue()


# -- recorded sequences -------------------------------------------------------------------------


def completed(task_id: str) -> list[Step]:
    """Queued for quota, admitted, two executors, complete."""
    run = pod_run(task_id, "a1b2c", 11)
    return [
        observe(1, job(task_id)),
        observe(1, workload(task_id)),
        observe(2, pending(task_id, QUOTA + "default, 3 more needed", 2)),
        observe(5, pending(task_id, QUOTA + "default, 1 more needed", 2)),
        observe(10, admitted(task_id, 10)),
        observe(10, job(task_id, suspended=False)),
        *[observe(11 + i, snapshot) for i, snapshot in enumerate(run)],
        observe(18, complete(task_id)),
    ]  # fmt: skip


def until_preempted(task_id: str, first: list[Json]) -> list[Step]:
    """Queued, admitted, its pod (``first``: pod_run at 11) up to executor 0 running, then
    preempted by Kueue at 20 and its Job suspended."""
    return [
        observe(1, job(task_id)),
        observe(2, pending(task_id, QUOTA + "default, 3 more needed", 2)),
        observe(10, admitted(task_id, 10)),
        observe(10, job(task_id, suspended=False)),
        *[observe(11 + i, snapshot) for i, snapshot in enumerate(first[:3])],
        observe(20, evicted(task_id, "Preempted", PREEMPTED, 20, QUOTA + "default, 2 more needed")),
        observe(20, job(task_id)),
    ]


def preempted(task_id: str) -> list[Step]:
    """Admitted, preempted while executor 0 runs, queued again, admitted again, complete."""
    first, second = pod_run(task_id, "p1xxx", 11), pod_run(task_id, "p2xxx", 41)
    stopped = copy.deepcopy(first[2])
    stopped["status"]["phase"] = "Failed"
    stopped["status"]["conditions"].append(
        cond("DisruptionTarget", "True", "PreemptionByKueue", "Kueue preempted the pod", 21)
    )
    stopped["status"]["initContainerStatuses"][2] = ended("executor-0", 137, 13)
    unsuspended = job(task_id, suspended=False)
    return [
        *until_preempted(task_id, first),
        observe(21, stopped),
        gone(22, stopped),
        observe(40, admitted(task_id, 40, previously=PREEMPTED)),
        observe(40, unsuspended),
        *[observe(41 + i, snapshot) for i, snapshot in enumerate(second)],
        observe(48, complete(task_id)),
    ]  # fmt: skip


def admitted_until(task_id: str, executor_running: bool = True) -> list[Step]:
    """Queued, admitted, the pod up to its first executor running (or only to staging)."""
    run = pod_run(task_id, "a1b2c", 11)[: 3 if executor_running else 2]
    return [
        observe(1, job(task_id)),
        observe(2, pending(task_id, QUOTA + "default, 3 more needed", 2)),
        observe(10, admitted(task_id, 10)),
        observe(10, job(task_id, suspended=False)),
        *[observe(11 + i, snapshot) for i, snapshot in enumerate(run)],
    ]


# -- the scripted cluster and a recording store ---------------------------------------------------


class Clock:
    """The watcher's clock, set by the script."""

    def __init__(self) -> None:
        """Start at T0."""
        self.now = T0

    def __call__(self) -> float:
        """Return the time."""
        return self.now


class ScriptedCluster:
    """A Cluster that replays recorded steps."""

    def __init__(self, clock: Clock) -> None:
        """Replay on ``clock``."""
        self.clock = clock
        self.script: deque[Step] = deque()
        self.current: dict[tuple[str, Kind], Observation] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.reads: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, State | None]] = []  # and the task's state at that moment
        self.dead: set[str] = set()
        self.store: TaskStore | None = None

    def load(self, steps: Iterable[Step]) -> None:
        """Queue recorded steps."""
        self.script.extend(steps)

    def submit(self, task_id: str, configmap: Json, job: Json) -> None:
        """Not used by the watcher."""
        raise NotImplementedError

    def delete(self, task_id: str) -> None:
        """Record the call and show the deletion at once."""
        record = self.store.get(task_id) if self.store else None
        self.deleted.append((task_id, record.state if record else None))
        self.dead.add(task_id)
        for kind in ("Pod", "Workload", "Job"):
            shown = self.current.pop((task_id, kind), None)
            if shown is not None:
                deletion = Observation(task_id, shown.kind, shown.name, None)
                self.script.appendleft((self.clock.now - T0, deletion))

    def exists(self, task_id: str) -> bool:
        """Whether the task's Job has been shown and not deleted."""
        return (task_id, "Job") in self.current

    def snapshot(self) -> list[Observation]:
        """What has been shown so far."""
        return [copy.deepcopy(obs) for obs in self.current.values()]

    def watch(self, timeout: float) -> Iterator[Observation]:
        """Hand out the remaining steps, setting the clock to each one's time."""
        if not self.script:
            time.sleep(min(timeout, 0.01))
        while self.script:
            at, obs = self.script.popleft()
            if obs.task_id in self.dead and obs.obj is not None:
                continue  # recorded after the Job was deleted: it no longer happens
            self.clock.now = max(self.clock.now, T0 + at)
            if obs.obj is None:
                self.current.pop((obs.task_id, obs.kind), None)
            else:
                self.current[(obs.task_id, obs.kind)] = obs
            yield Observation(obs.task_id, obs.kind, obs.name, copy.deepcopy(obs.obj))

    def read_log(
        self,
        task_id: str,
        container: str,
        limit_bytes: int | None = None,
        *,
        pod: str | None = None,
    ) -> str:
        """Return the prepared log of the pod (as named, else shown; else the task's); record it."""
        self.reads.append((task_id, container))
        shown = self.current.get((task_id, "Pod"))
        text = self.logs.get((pod or (shown.name if shown else ""), container))
        return (text or self.logs.get((task_id, container), ""))[-(limit_bytes or 0) :]

    def close(self) -> None:
        """Nothing to release."""


class RecordingStore:
    """A TaskStore that records every successful transition and can crash on one."""

    def __init__(self, store: TaskStore) -> None:
        """Wrap ``store``."""
        self.store = store
        self.moves: list[tuple[str, str]] = []
        self.crash_on: State | None = None

    def create(self, record: TaskRecord) -> None:
        """Delegate."""
        self.store.create(record)

    def get(self, task_id: str, owner: str | None = None) -> TaskRecord | None:
        """Delegate."""
        return self.store.get(task_id, owner)

    def list(
        self, flt: TaskFilter, page_size: int, before: str | None = None, minimal: bool = False
    ) -> Page:
        """Delegate."""
        return self.store.list(flt, page_size, before, minimal)

    def transition(self, task_id: str, to: State, expect: Iterable[State] | None = None) -> bool:
        """Delegate, record, or crash (once) where asked to."""
        if to is self.crash_on:
            self.crash_on = None
            raise RuntimeError("the watcher process was killed here")
        moved = self.store.transition(task_id, to, expect)
        if moved:
            self.moves.append((task_id, to.value))
        return moved

    def append_attempt(self, task_id: str, tasklog: Json) -> int:
        """Delegate."""
        return self.store.append_attempt(task_id, tasklog)

    def update_attempt(self, task_id: str, index: int, changes: Json) -> bool:
        """Delegate."""
        return self.store.update_attempt(task_id, index, changes)

    def ids_in_states(self, states: Iterable[State], limit: int = 1000) -> builtins.list[str]:
        """Delegate."""
        return self.store.ids_in_states(states, limit)

    def render_pending(self, limit: int = 1000) -> int:
        """Delegate."""
        return self.store.render_pending(limit)

    def close(self) -> None:
        """Delegate."""
        self.store.close()


@dataclass
class World:
    """A SQLite store, a scripted cluster, a clock, and the work the watcher re-enqueued."""

    store: RecordingStore
    cluster: ScriptedCluster
    clock: Clock
    resubmits: list[str] = field(default_factory=list)
    recancels: list[str] = field(default_factory=list)

    def task(self) -> str:
        """Store a QUEUED task as the API does and open its first attempt as the worker does."""
        task_id = ids.new_id(int(T0 * 1000))
        doc = {"id": task_id, "executors": [{"image": "ubuntu:24.04", "command": ["true"]}] * 2}
        self.store.create(TaskRecord(task_id, State.QUEUED, "anonymous", doc))
        self.store.append_attempt(task_id, {"logs": [], "outputs": [], "system_logs": [SUBMITTED]})
        return task_id

    def watcher(self) -> Watcher:
        """A new watcher on the same store and cluster (a restart)."""
        return Watcher(
            self.store, self.cluster, self.resubmits.append, 60.0,
            recancel=self.recancels.append, image_pull_grace_seconds=300.0,
            no_workload_seconds=120.0, clock=self.clock,
        )  # fmt: skip

    def play(self, watcher: Watcher, count: int | None = None) -> None:
        """Apply the next ``count`` steps (all by default)."""
        for obs in itertools.islice(self.cluster.watch(0), count):
            watcher.apply(obs)

    def moves(self, task_id: str) -> list[str]:
        """The states the task was moved to, in order."""
        return [to for tid, to in self.store.moves if tid == task_id]

    def attempts(self, task_id: str) -> list[Json]:
        """The task's TaskLogs, checked for duplicate system log lines."""
        record = self.store.get(task_id)
        assert record is not None
        logs: list[Json] = record.doc.get("logs") or []
        for attempt in logs:
            lines = attempt.get("system_logs") or []
            assert len(lines) == len(set(lines)), lines
        return logs


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh store and cluster."""
    clock = Clock()
    store = RecordingStore(SqliteStore(tmp_path / "tasks.db"))
    cluster = ScriptedCluster(clock)
    cluster.store = store
    yield World(store, cluster, clock)
    store.close()


# -- scenarios ----------------------------------------------------------------------------------

TWO_EXECUTORS = [(0, "hello\n", ""), (0, "done\n", "a warning\n")]
OUTPUTS = [{"url": "s3://bucket/out.txt", "path": "/data/out.txt", "size_bytes": "6"}]


def test_admitted_and_completed(world: World) -> None:
    """Waiting reasons while queued, INITIALIZING, RUNNING, COMPLETE with the report's logs."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS, outputs=OUTPUTS)
    world.cluster.load(completed(task))
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "COMPLETE"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"] == [
        SUBMITTED,
        f"waiting for Kueue: {QUOTA}default, 1 more needed",
    ]
    assert attempt["start_time"] == stamp(10)  # Kueue's admission
    assert attempt["end_time"]
    assert attempt["metadata"] == {"pod": f"tes-{task}-a1b2c"}
    assert [(e["exit_code"], e["stdout"], e["stderr"]) for e in attempt["logs"]] == TWO_EXECUTORS
    assert attempt["outputs"] == OUTPUTS
    assert world.cluster.reads == [(task, "sequencer")]
    assert world.cluster.deleted == [(task, State.COMPLETE)]  # after the final state was stored


def test_pending_with_reason(world: World) -> None:
    """A task Kueue cannot admit stays QUEUED and says why, in one line that follows Kueue."""
    task = world.task()
    world.cluster.load(completed(task)[:4])
    world.play(world.watcher())
    assert world.moves(task) == []
    [attempt] = world.attempts(task)
    assert attempt["system_logs"] == [
        SUBMITTED,
        f"waiting for Kueue: {QUOTA}default, 1 more needed",
    ]
    assert "start_time" not in attempt and "end_time" not in attempt
    assert world.cluster.deleted == []


def test_preempted_then_readmitted(world: World) -> None:
    """Eviction ends the attempt with its reason; re-admission begins a second one."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS, outputs=OUTPUTS)
    stopped = report([], verdict=None, notes=["never shown: no outputs event"])
    world.cluster.logs[(f"tes-{task}-p1xxx", "sequencer")] = stopped  # staged, then preempted
    world.cluster.load(preempted(task))
    world.play(world.watcher())
    assert world.moves(task) == [
        "INITIALIZING", "RUNNING", "QUEUED", "INITIALIZING", "RUNNING", "COMPLETE",
    ]  # fmt: skip
    first, second = world.attempts(task)
    assert first["system_logs"] == [
        SUBMITTED,
        f"waiting for Kueue: {QUOTA}default, 3 more needed",
        f"evicted by Kueue (Preempted: {PREEMPTED}); the task waits to run again",
        f"waiting for Kueue: {QUOTA}default, 2 more needed",
    ]
    assert (first["start_time"], first["end_time"]) == (stamp(10), stamp(20))
    assert first["metadata"] == {"pod": f"tes-{task}-p1xxx", "evicted": "Preempted"}
    assert first["logs"] == [] and first["outputs"] == []
    assert second["start_time"] == stamp(40) and second["end_time"]
    assert second["metadata"] == {"pod": f"tes-{task}-p2xxx"}
    assert [e["stdout"] for e in second["logs"]] == ["hello\n", "done\n"]
    assert second["outputs"] == OUTPUTS
    assert world.cluster.reads == [(task, "sequencer")] * 2  # once per attempt, as it ends
    assert world.cluster.deleted == [(task, State.COMPLETE)]


def test_deactivated(world: World) -> None:
    """Kueue's maximum execution time deactivates the Workload: SYSTEM_ERROR saying so."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report([], verdict=None)
    dead = evicted(
        task, "DeactivatedDueToMaximumExecutionTimeExceeded",
        "The workload is deactivated due to exceeding the maximum execution time", 30,
    )  # fmt: skip
    world.cluster.load([*admitted_until(task), observe(30, dead), observe(30, job(task))])
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "SYSTEM_ERROR"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"][-1] == (
        "Kueue stopped the task: the task ran longer than its maximum run time "
        "(backend_parameters) (DeactivatedDueToMaximumExecutionTimeExceeded: The workload is "
        "deactivated due to exceeding the maximum execution time)"
    )
    assert attempt["end_time"]
    assert world.cluster.deleted == [(task, State.SYSTEM_ERROR)]


def test_image_pull_failure(world: World) -> None:
    """A failing pull is noted at once and fails the task after the grace, naming the image."""
    task = world.task()
    base = pod_run(task, "a1b2c", 11)[1]
    statuses = base["status"]["initContainerStatuses"]
    denied = 'Failed to pull image "ubuntu:24.04": pull access denied, repository does not exist'
    pulls = []
    for at, reason, message in (
        (12, "ErrImagePull", denied),
        (40, "ImagePullBackOff", 'Back-off pulling image "ubuntu:24.04"'),
        (320, "ErrImagePull", denied),
    ):
        snapshot = copy.deepcopy(base)
        snapshot["status"]["initContainerStatuses"] = [
            *statuses[:2], waiting("executor-0", reason, message),
        ]  # fmt: skip
        pulls.append(observe(at, snapshot))
    world.cluster.load([*admitted_until(task, executor_running=False), *pulls])
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "SYSTEM_ERROR"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"] == [
        SUBMITTED,
        f"waiting for Kueue: {QUOTA}default, 3 more needed",
        # ErrImagePull's line, replaced by the back-off's: one line says why the pull fails now.
        "waiting for an image: executor 0: pulling ubuntu:24.04 fails (ImagePullBackOff: "
        'Back-off pulling image "ubuntu:24.04"); the task fails if it still fails after 300 s',
        f"executor 0: the image ubuntu:24.04 cannot be pulled for 300 s (ErrImagePull: {denied}); "
        "check the image name and that the cluster can reach its registry",
    ]
    assert world.cluster.deleted == [(task, State.SYSTEM_ERROR)]


def test_oom(world: World) -> None:
    """An executor killed for memory: EXECUTOR_ERROR with its limit; its log tail is read."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report([], verdict=None)
    world.cluster.logs[(task, "executor-0")] = "allocating 2 GiB\n"
    oom = copy.deepcopy(pod_run(task, "a1b2c", 11)[2])
    oom["status"]["phase"] = "Failed"
    init = oom["status"]["initContainerStatuses"]
    init[1] = ended("sequencer", 143, 12)
    init[2] = ended("executor-0", 137, 13, reason="OOMKilled")
    world.cluster.load([*admitted_until(task), observe(14, oom)])
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "EXECUTOR_ERROR"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"][-1] == (
        "executor 0 was killed for exceeding its memory limit of 1024Mi; ask for more memory "
        "(resources.ram_gb)"
    )
    assert attempt["logs"] == [
        {
            "exit_code": 137,
            "start_time": stamp(13),
            "end_time": stamp(14),
            "stdout": "allocating 2 GiB\n",
        }
    ]
    assert world.cluster.reads == [(task, "sequencer"), (task, "executor-0")]
    assert world.cluster.deleted == [(task, State.EXECUTOR_ERROR)]


def test_cancel_while_pending(world: World) -> None:
    """CANCELING with its Job still there is cancelled again after the grace; gone → CANCELED."""
    task = world.task()
    steps = completed(task)[:3]
    world.cluster.load(steps)
    watcher = world.watcher()
    world.play(watcher)
    assert world.store.transition(task, State.CANCELING)  # as the API does
    world.clock.now = T0 + 10
    watcher.sweep()
    assert world.recancels == []  # the API's own cancel is on its way
    world.clock.now = T0 + 71
    watcher.sweep()
    watcher.sweep()
    assert world.recancels == [task]  # once per grace
    world.cluster.load([gone(72, steps[1][1].obj or {}), gone(72, steps[0][1].obj or {})])
    world.play(watcher)
    assert world.moves(task) == ["CANCELING", "CANCELED"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"][-1] == "canceled; the task pod is gone"
    assert attempt["end_time"]
    assert world.cluster.deleted == []  # the cancel job deletes, not the watcher


def test_cancel_while_running(world: World) -> None:
    """Progress reported after a cancel does not move the task; the pod's end does."""
    task = world.task()
    steps = admitted_until(task)
    world.cluster.load(steps)
    watcher = world.watcher()
    world.play(watcher)
    assert world.store.transition(task, State.CANCELING)
    later = pod_run(task, "a1b2c", 11)[3]  # executor 0 done, executor 1 running
    world.cluster.load(
        [observe(15, later), gone(16, later), gone(16, steps[2][1].obj or {}),
         gone(16, steps[0][1].obj or {})]
    )  # fmt: skip
    world.play(watcher)
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "CANCELING", "CANCELED"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"][-1] == "canceled; the task pod is gone"
    assert attempt["end_time"] and attempt["start_time"] == stamp(10)
    assert world.cluster.deleted == []


def _outcome(world: World, task: str) -> tuple[list[str], list[Json]]:
    # Times the watcher takes from its own clock differ between runs; Kueue's do not.
    attempts = [{**a, "end_time": bool(a.get("end_time"))} for a in world.attempts(task)]
    return world.moves(task), json.loads(json.dumps(attempts).replace(task, "<task>"))


@pytest.mark.parametrize("scenario", [completed, preempted])
def test_restart_mid_stream_loses_and_repeats_nothing(tmp_path: Path, scenario: Any) -> None:
    """Stopped after any step and replaced by a new watcher (resync, then the rest)."""
    reference: tuple[list[str], list[Json], int] | None = None
    for cut in range(len(scenario("x")) + 1):
        clock = Clock()
        store = RecordingStore(SqliteStore(tmp_path / f"cut-{cut}.db"))
        cluster = ScriptedCluster(clock)
        cluster.store = store
        world = World(store, cluster, clock)
        task = world.task()
        cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS, outputs=OUTPUTS)
        cluster.logs[(f"tes-{task}-p1xxx", "sequencer")] = report([], verdict=None)
        cluster.load(scenario(task))
        world.play(world.watcher(), cut)
        restarted = world.watcher()
        restarted.resync()
        world.play(restarted)
        moves, attempts = _outcome(world, task)
        reads = len(cluster.reads)  # each attempt's report, once
        assert [state for _, state in cluster.deleted] == [State.COMPLETE], cut
        if reference is None:
            reference = (moves, attempts, reads)
        assert (moves, attempts, reads) == reference, f"restarted after step {cut}"
        store.close()


def test_restart_after_a_crash_between_logs_and_state(world: World) -> None:
    """Killed after storing the final logs but before the final state: finished once, later."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS, outputs=OUTPUTS)
    world.cluster.load(completed(task))
    world.store.crash_on = State.COMPLETE
    with pytest.raises(RuntimeError, match="killed"):
        world.play(world.watcher())
    assert world.cluster.deleted == []
    restarted = world.watcher()
    restarted.resync()
    world.play(restarted)
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "COMPLETE"]
    [attempt] = world.attempts(task)
    assert [e["stdout"] for e in attempt["logs"]] == ["hello\n", "done\n"]
    assert world.cluster.deleted == [(task, State.COMPLETE)]


def test_no_workload_is_noted_and_missing_priority_class_fails(world: World) -> None:
    """A Job Kueue ignores gets a note after the grace; a missing priority class ends the task."""
    ignored, refused = world.task(), world.task()
    world.cluster.load([observe(1, job(ignored)), observe(200, job(ignored))])
    event = {
        "kind": "Event",
        "metadata": {"name": "ev1", "labels": {TASK_ID: refused}},
        "reason": "WorkloadPriorityClassNotFound",
        "message": 'WorkloadPriorityClass "urgent" not found',
    }
    world.cluster.load([observe(201, job(refused)), observe(202, event)])
    world.play(world.watcher())
    assert world.moves(ignored) == []
    assert world.attempts(ignored)[0]["system_logs"][-1].startswith(
        f"Kueue has created no Workload for Job tes-{ignored} in 120 s"
    )
    assert world.moves(refused) == ["SYSTEM_ERROR"]
    assert (
        "WorkloadPriorityClass urgent does not exist"
        in world.attempts(refused)[0]["system_logs"][-1]
    )
    assert world.cluster.deleted == [(refused, State.SYSTEM_ERROR)]
    assert world.cluster.reads == []  # no pod, nothing to read


def test_sweep_resubmits_lost_submissions(world: World) -> None:
    """A QUEUED task with no Job after the grace is submitted again."""
    task = world.task()
    watcher = world.watcher()
    created = ids.created_at(task)  # ids stay monotonic, so not always T0
    world.clock.now = created + 30
    watcher.sweep()
    assert world.resubmits == []
    world.clock.now = created + 61
    watcher.sweep()
    assert world.resubmits == [task]


# -- election -------------------------------------------------------------------------------------


class FakeLease:
    """An in-memory coordination.k8s.io Lease on a shared clock."""

    def __init__(self, clock: Clock) -> None:
        """An unheld Lease."""
        self.clock = clock
        self.holder: str | None = None
        self.renewed = 0.0
        self.duration = 0.0
        self.down = False

    def try_lease(self, name: str, identity: str, duration_seconds: float) -> bool:
        """Take or renew the Lease if it is free, expired or ours."""
        if self.down:
            raise ClusterError("the API server is unreachable")
        now = self.clock()
        if self.holder in (None, identity) or now - self.renewed >= self.duration:
            self.holder, self.renewed, self.duration = identity, now, duration_seconds
            return True
        return False

    def release_lease(self, name: str, identity: str) -> None:
        """Give the Lease up if ``identity`` holds it."""
        if self.holder == identity:
            self.holder = None


def test_one_leader_and_a_standby_that_takes_over() -> None:
    """The standby leads only after the leader stopped renewing, and never at the same time."""
    clock = Clock()
    lease = FakeLease(clock)
    a = Elector(lease, "kueue-tes-watcher", "a", 15, 5, clock=clock)
    b = Elector(lease, "kueue-tes-watcher", "b", 15, 5, clock=clock)
    assert a.step() and not b.step()
    for _ in range(3):
        clock.now += 5
        assert a.step() and not b.step()
    # a stops renewing (killed, or partitioned); b keeps trying every second.
    last_renewal, took_over = clock.now, None
    for _ in range(20):
        clock.now += 1
        b_leads = b.step()
        assert not (a.is_leader and b_leads), "two leaders"
        took_over = took_over or (clock.now if b_leads else None)
    assert took_over == last_renewal + 15  # the lease's duration, not earlier
    assert not a.is_leader and b.is_leader and lease.holder == "b"
    assert not a.step()  # a, back, stands by


def test_leader_keeps_the_lease_through_short_api_outages_only() -> None:
    """Errors keep the last renewal trusted until its window ends."""
    clock = Clock()
    lease = FakeLease(clock)
    a = Elector(lease, "l", "a", 15, 5, clock=clock)
    assert a.step()
    lease.down = True
    clock.now += 5
    assert a.step()
    clock.now += 5
    assert not a.step()


def test_stop_releases_the_lease_for_an_immediate_takeover() -> None:
    """A stopping leader gives the Lease up."""
    clock = Clock()
    lease = FakeLease(clock)
    a, b = (
        Elector(lease, "l", "a", 15, 5, clock=clock),
        Elector(lease, "l", "b", 15, 5, clock=clock),
    )
    a.start()
    deadline = time.monotonic() + 5
    while not a.is_leader and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.is_leader
    a.stop()
    assert not a.is_leader and b.step()


def test_elector_refuses_a_renew_period_too_long_for_the_lease() -> None:
    """Renewing less often than half the lease would leave gaps with no leader."""
    with pytest.raises(ValueError, match="at most half"):
        Elector(FakeLease(Clock()), "l", "a", 10, 6)


def test_run_works_only_while_leading(world: World) -> None:
    """Watcher.run applies nothing as a standby, and resyncs on becoming the leader."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS, outputs=OUTPUTS)
    world.cluster.load(completed(task))
    leading = threading.Event()
    watcher = world.watcher()
    runner = threading.Thread(
        target=watcher.run, kwargs={"poll_seconds": 0.01, "leader": leading.is_set}
    )
    runner.start()
    try:
        time.sleep(0.2)
        assert world.moves(task) == [] and len(world.cluster.script) == len(completed(task))
        leading.set()
        deadline = time.monotonic() + 10
        while world.moves(task)[-1:] != ["COMPLETE"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert world.moves(task) == ["INITIALIZING", "RUNNING", "COMPLETE"]
    finally:
        watcher.stop()
        runner.join(10)
