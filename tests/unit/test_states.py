"""states: what Job, Pod and Workload objects mean for a task (pure)."""

from __future__ import annotations

import json
from typing import Any

from app.models import State
from worker import states
from worker.states import Objects

Json = dict[str, Any]


def job(suspend: bool = False, condition: str | None = None) -> Json:
    """A Job as the API shows it."""
    status: Json = {}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True"}]
    return {"metadata": {"name": "tes-x"}, "spec": {"suspend": suspend}, "status": status}


def workload(*conditions: tuple[str, str, str, str]) -> Json:
    """A Kueue Workload with (type, status, reason, message) conditions."""
    return {
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions
            ]
        }
    }


def terminated(name: str, code: int, message: str = "") -> Json:
    """A container status that has ended."""
    return {
        "name": name,
        "state": {
            "terminated": {
                "exitCode": code,
                "message": message,
                "startedAt": "s",
                "finishedAt": "f",
            }
        },
    }


def running(name: str) -> Json:
    """A container status that runs."""
    return {"name": name, "state": {"running": {"startedAt": "s"}}}


def pod(phase: str, init: list[Json], main: list[Json] | None = None) -> Json:
    """A task pod with container statuses."""
    return {
        "metadata": {"name": "tes-x-abc"},
        "status": {"phase": phase, "initContainerStatuses": init, "containerStatuses": main or []},
    }


ADMITTED = workload(("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "True", "", ""))
PENDING = workload(
    (
        "QuotaReserved",
        "False",
        "Pending",
        "couldn't assign flavors to pod set main: insufficient unused quota for cpu",
    )
)


def test_pending_workload_is_queued_with_kueues_reason() -> None:
    """A suspended Job with a pending Workload is QUEUED, and Kueue's message is logged."""
    decision = states.decide(State.QUEUED, Objects(job=job(suspend=True), workload=PENDING))
    assert decision.state is State.QUEUED
    assert decision.system_logs == [
        "waiting for Kueue: couldn't assign flavors to pod set main: "
        "insufficient unused quota for cpu"
    ]
    bare = states.decide(State.QUEUED, Objects(job=job(suspend=True)))
    assert bare.state is State.QUEUED and bare.system_logs == []


def test_admitted_staging_is_initializing_then_running() -> None:
    """Admitted and staging → INITIALIZING; the first executor running → RUNNING."""
    staging = pod("Pending", [terminated("setup", 0), running("sequencer")])
    decision = states.decide(State.QUEUED, Objects(job(), staging, ADMITTED))
    assert decision.state is State.INITIALIZING
    first = pod("Running", [terminated("setup", 0), running("sequencer"), running("executor-0")])
    assert states.decide(State.INITIALIZING, Objects(job(), first, ADMITTED)).state is State.RUNNING


def test_executor_logs_from_termination_messages() -> None:
    """Ended executors' exit codes and times come from the runner's termination message."""
    message = json.dumps({"exit_code": 3, "start": "t0", "end": "t1"})
    second = pod(
        "Running",
        [
            terminated("setup", 0),
            running("sequencer"),
            terminated("executor-0", 0, message),
            running("executor-1"),
        ],
    )
    decision = states.decide(State.RUNNING, Objects(job(), second, ADMITTED))
    assert decision.state is State.RUNNING
    assert decision.executor_logs == [{"exit_code": 3, "start_time": "t0", "end_time": "t1"}]


def test_finished_pod_maps_finish_code() -> None:
    """finish's exit code carries the verdict: 0, 1, anything else."""
    for code, state in ((0, State.COMPLETE), (1, State.EXECUTOR_ERROR), (2, State.SYSTEM_ERROR)):
        done = pod(
            "Succeeded" if code == 0 else "Failed",
            [terminated("setup", 0), terminated("sequencer", 0)],
            [terminated("finish", code)],
        )
        decision = states.decide(State.RUNNING, Objects(job(condition="Complete"), done, ADMITTED))
        assert decision.state is state and decision.finished


def test_pod_failed_before_verdict_names_the_container() -> None:
    """A pod that fails in setup is a SYSTEM_ERROR naming the container."""
    failed = pod("Failed", [terminated("setup", 1)])
    decision = states.decide(State.INITIALIZING, Objects(job(condition="Failed"), failed, ADMITTED))
    assert decision.state is State.SYSTEM_ERROR and decision.finished
    assert "container setup" in decision.system_logs[0]


def test_eviction_requeues_and_deactivation_fails() -> None:
    """Preempted → back to QUEUED (new attempt); Deactivated → SYSTEM_ERROR."""
    evicted = workload(("Evicted", "True", "Preempted", "Preempted to accommodate a workload"))
    decision = states.decide(State.RUNNING, Objects(job(), None, evicted))
    assert decision.state is State.QUEUED and decision.requeued
    assert "Preempted" in decision.system_logs[0]
    dead = workload(("Evicted", "True", "DeactivatedDueToMaximumExecutionTimeExceeded", "too long"))
    decision = states.decide(State.RUNNING, Objects(job(), None, dead))
    assert decision.state is State.SYSTEM_ERROR and decision.finished


def test_canceling_ends_when_everything_is_gone() -> None:
    """CANCELING stays until the Job and pod are gone, then CANCELED."""
    assert states.decide(State.CANCELING, Objects(job(), pod("Running", []))).state is None
    gone = states.decide(State.CANCELING, Objects())
    assert gone.state is State.CANCELED and gone.finished


def test_read_report() -> None:
    """Only our JSON lines count; executors by index; the verdict and system logs."""
    lines = [
        "sequencer INFO something else",
        json.dumps({"kueue-tes": 1, "event": "staged", "ok": True, "system_logs": []}),
        json.dumps(
            {"kueue-tes": 1, "event": "executor", "index": 1, "exit_code": 2, "stdout": "b"}
        ),
        json.dumps(
            {
                "kueue-tes": 1,
                "event": "executor",
                "index": 0,
                "exit_code": 0,
                "stdout": "a",
                "stderr": "",
            }
        ),
        json.dumps({"event": "verdict", "state": "COMPLETE"}),  # not ours: no marker
        "{broken",
        json.dumps(
            {
                "kueue-tes": 1,
                "event": "outputs",
                "outputs": [{"url": "u", "path": "/p", "size_bytes": 3}],
                "system_logs": ["missing /q"],
            }
        ),
        json.dumps(
            {"kueue-tes": 1, "event": "verdict", "state": "EXECUTOR_ERROR", "system_logs": []}
        ),
    ]
    report = states.read_report("\n".join(lines))
    assert report.verdict is State.EXECUTOR_ERROR
    assert [e["exit_code"] for e in report.executors] == [0, 2]
    assert report.executors[0] == {"exit_code": 0, "stdout": "a", "stderr": ""}
    assert report.outputs == [{"url": "u", "path": "/p", "size_bytes": 3}]
    assert report.system_logs == ["missing /q"]
    assert states.read_report("").verdict is None
