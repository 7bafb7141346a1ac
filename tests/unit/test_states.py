"""states: what Job, Pod and Workload objects mean for a task (pure)."""

from __future__ import annotations

import json
from typing import Any

from app.models import State
from worker import states
from worker.report import read_report
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
    report = read_report("\n".join(lines))
    assert report.verdict is State.EXECUTOR_ERROR
    assert [e["exit_code"] for e in report.executors] == [0, 2]
    assert report.executors[0] == {"exit_code": 0, "stdout": "a", "stderr": ""}
    assert report.outputs == [{"url": "u", "path": "/p", "size_bytes": 3}]
    assert report.system_logs == ["missing /q"]
    assert read_report("").verdict is None


# -- Kueue and kubelet failures ------------------------------------------------------------------

T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z


def with_spec(status_pod: Json, **images: str) -> Json:
    """Add a pod spec naming each executor's image and a 1Gi memory limit."""
    status_pod["spec"] = {
        "initContainers": [
            {"name": name, "image": image, "resources": {"limits": {"memory": "1Gi"}}}
            for name, image in images.items()
        ]
    }
    return status_pod


def waiting(name: str, reason: str, message: str = "") -> Json:
    """A container status that waits."""
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}}


def test_image_pull_error_is_noted_then_fails_after_the_grace() -> None:
    """ErrImagePull: a note first, SYSTEM_ERROR naming image and reason once the grace is over."""
    pulling = with_spec(
        pod(
            "Pending",
            [
                terminated("setup", 0),
                running("sequencer"),
                waiting("executor-0", "ErrImagePull", 'pull access denied for "nope"'),
            ],
        ),
        **{"executor-0": "nope:1"},
    )
    objects = Objects(job(), pulling, ADMITTED)
    assert states.waits(objects) == {"pull:executor-0"}
    early = states.decide(
        State.INITIALIZING, objects, states.Timing(T0 + 10, {"pull:executor-0": T0}, 60.0)
    )
    assert early.state is State.INITIALIZING and not early.finished
    assert early.system_logs == [
        "waiting for an image: executor 0: pulling nope:1 fails (ErrImagePull: pull access denied "
        'for "nope"); the task fails if it still fails after 60 s'
    ]
    late = states.decide(
        State.INITIALIZING, objects, states.Timing(T0 + 61, {"pull:executor-0": T0}, 60.0)
    )
    assert late.state is State.SYSTEM_ERROR and late.finished and not late.trust_report
    assert late.system_logs == [
        "executor 0: the image nope:1 cannot be pulled for 60 s (ErrImagePull: pull access "
        'denied for "nope"); check the image name and that the cluster can reach its registry'
    ]


def test_the_image_digest_each_executor_ran_is_noted() -> None:
    """kubelet's imageID (the digest a tag resolved to) names what ran, once it ran."""
    digest = "sha256:" + "ab" * 32
    ran = terminated("executor-0", 0)
    ran["imageID"] = f"docker.io/library/alpine@{digest}"
    next_up = waiting("executor-1", "PodInitializing")
    next_up["imageID"] = ""
    statuses = [terminated("setup", 0), running("sequencer"), ran, next_up]
    pulled = with_spec(pod("Pending", statuses), **{"executor-0": "alpine", "executor-1": "x:1"})
    decision = states.decide(State.INITIALIZING, Objects(job(), pulled, ADMITTED))
    assert decision.state is State.RUNNING
    assert decision.system_logs == [f"executor 0 ran alpine as docker.io/library/alpine@{digest}"]
    # Also in the last word about a task: a pod that ended at once is seen only then.
    ended = with_spec(pod("Failed", [*statuses[:3]]), **{"executor-0": "alpine"})
    final = states.decide(State.INITIALIZING, Objects(job(), ended, ADMITTED))
    assert final.finished and final.system_logs[0].startswith("executor 0 ran alpine as ")


def test_invalid_image_name_fails_at_once() -> None:
    """InvalidImageName never heals, so there is no grace."""
    statuses = [
        terminated("setup", 0),
        running("sequencer"),
        waiting("executor-0", "InvalidImageName"),
    ]
    bad = with_spec(pod("Pending", statuses), **{"executor-0": "UPPER/case"})
    decision = states.decide(State.INITIALIZING, Objects(job(), bad, ADMITTED), states.Timing(T0))
    assert decision.state is State.SYSTEM_ERROR
    assert "the image UPPER/case cannot be pulled (InvalidImageName)" in decision.system_logs[0]
    assert states.waits(Objects(job(), bad, ADMITTED)) == set()


def test_oom_killed_executor_is_an_executor_error_with_its_limit() -> None:
    """OOMKilled on an executor → EXECUTOR_ERROR naming the limit; its exit code is logged."""
    ended = {"exitCode": 137, "reason": "OOMKilled", "startedAt": "s", "finishedAt": "f"}
    killed = {"name": "executor-0", "state": {"terminated": ended}}
    failed = with_spec(
        pod("Failed", [terminated("setup", 0), terminated("sequencer", 143), killed]),
        **{"executor-0": "python:3"},
    )
    decision = states.decide(State.RUNNING, Objects(job(condition="Failed"), failed, ADMITTED))
    assert decision.state is State.EXECUTOR_ERROR and decision.finished
    assert decision.system_logs == [
        "executor 0 was killed for exceeding its memory limit of 1Gi; ask for more memory "
        "(resources.ram_gb)"
    ]
    assert decision.executor_logs == [{"exit_code": 137, "start_time": "s", "end_time": "f"}]
    ours = pod("Failed", [terminated("setup", 0), {**killed, "name": "sequencer"}])
    decision = states.decide(State.RUNNING, Objects(job(condition="Failed"), ours, ADMITTED))
    assert decision.state is State.SYSTEM_ERROR
    assert decision.system_logs[0].startswith("the sequencer container was killed for exceeding")


def test_missing_priority_class_is_a_system_error() -> None:
    """WorkloadPriorityClassNotFound, in a Workload condition or an Event on the Job."""
    labelled = job(suspend=True)
    labelled["metadata"]["labels"] = {states.PRIORITY_CLASS: "urgent"}
    refused = workload(
        ("QuotaReserved", "False", "WorkloadPriorityClassNotFound", "not found"),
    )
    decision = states.decide(State.QUEUED, Objects(job=labelled, workload=refused))
    assert decision.state is State.SYSTEM_ERROR and decision.finished
    assert decision.system_logs == [
        "Kueue cannot queue the task: WorkloadPriorityClass urgent does not exist; ask for an "
        "existing one (backend_parameters.priority_class) or for it to be created"
    ]
    event = {
        "reason": "WorkloadPriorityClassNotFound",
        "message": 'WorkloadPriorityClass "low" not found',
    }
    decision = states.decide(State.QUEUED, Objects(job=job(suspend=True), events=(event,)))
    assert decision.state is State.SYSTEM_ERROR
    assert "WorkloadPriorityClass low does not exist" in decision.system_logs[0]


def test_no_workload_after_the_grace_is_a_note_not_a_failure() -> None:
    """A Job Kueue ignores stays QUEUED; after the grace the logs say what to check."""
    ignored = job(suspend=True)
    ignored["metadata"].update(
        namespace="tasks",
        creationTimestamp="2025-01-01T00:00:00Z",
        labels={"kueue.x-k8s.io/queue-name": "tes"},
    )
    assert states.waits(Objects(job=ignored)) == {states.NO_WORKLOAD}
    timing = states.Timing(T0 + 30, no_workload_grace=60.0)
    assert states.decide(State.QUEUED, Objects(job=ignored), timing) == states.Decision(
        State.QUEUED
    )
    decision = states.decide(State.QUEUED, Objects(job=ignored), states.Timing(T0 + 61))
    assert decision.state is State.QUEUED and not decision.finished
    assert decision.system_logs == [
        "Kueue has created no Workload for Job tes-x in 60 s, so it does not seem to manage "
        "this namespace; the operator should check that Kueue manages namespace tasks "
        "(managedJobsNamespaceSelector)"
    ]


def test_deactivation_reasons_of_old_and_new_kueue() -> None:
    """Deactivated… and InactiveWorkload both end the task, saying why."""
    for reason, hint in (
        ("DeactivatedDueToMaximumExecutionTimeExceeded", "maximum run time"),
        ("DeactivatedDueToRequeuingLimitExceeded", "requeuing limit"),
        ("InactiveWorkload", "deactivated"),
    ):
        dead = workload(("Evicted", "True", reason, "The workload is deactivated"))
        decision = states.decide(State.RUNNING, Objects(job(), None, dead))
        assert decision.state is State.SYSTEM_ERROR and decision.finished
        assert hint in decision.system_logs[0] and reason in decision.system_logs[0]


def test_eviction_notes_why_the_task_waits_again() -> None:
    """An evicted Workload that waits for quota says both."""
    evicted = workload(
        ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"),
        ("QuotaReserved", "False", "Pending", "insufficient unused quota for cpu"),
    )
    decision = states.decide(State.RUNNING, Objects(job(suspend=True), None, evicted))
    assert decision.requeued and decision.state is State.QUEUED
    assert decision.system_logs == [
        "evicted by Kueue (Preempted: Preempted to accommodate a workload); the task waits to "
        "run again",
        "waiting for Kueue: insufficient unused quota for cpu",
    ]


def test_admission_checks_pending_are_a_waiting_reason() -> None:
    """Quota reserved but not admitted: Kueue's Admitted message says what is missing."""
    checks = workload(
        ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq"),
        ("Admitted", "False", "NoChecks", "The workload has not all admission checks"),
    )
    decision = states.decide(State.QUEUED, Objects(job(suspend=True), None, checks))
    assert decision.system_logs == ["waiting for Kueue: The workload has not all admission checks"]


def test_disrupted_pod_is_not_the_end_of_the_task() -> None:
    """A pod failed by a disruption is replaced by the Job (podFailurePolicy): a note only."""
    disrupted = pod("Failed", [terminated("setup", 0), terminated("sequencer", 143)])
    disrupted["status"]["conditions"] = [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}
    ]
    decision = states.decide(State.RUNNING, Objects(job(), disrupted, ADMITTED))
    assert decision.state is None and not decision.finished
    assert decision.system_logs == [
        "the task pod tes-x-abc was stopped (TerminationByKubelet); the Job starts another"
    ]


def test_unschedulable_pod_is_a_waiting_reason() -> None:
    """Admitted but no node fits: the scheduler's message, replaced as it changes."""
    stuck = pod("Pending", [])
    stuck["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"}
    ]
    decision = states.decide(State.QUEUED, Objects(job(), stuck, ADMITTED))
    assert decision.state is State.INITIALIZING
    assert decision.system_logs == ["waiting for a node: 0/3 nodes are available"]


def test_merge_logs_replaces_the_latest_waiting_line_only() -> None:
    """Waiting lines replace their direct predecessor; other lines are added once."""
    first = states.merge_logs(["submitted"], ["waiting for Kueue: a"])
    assert first == ["submitted", "waiting for Kueue: a"]
    assert states.merge_logs(first, ["waiting for Kueue: b"]) == [
        "submitted",
        "waiting for Kueue: b",
    ]
    assert states.merge_logs(first, ["waiting for Kueue: a"]) is None
    later = states.merge_logs([*first, "evicted"], ["waiting for Kueue: c"])
    assert later == ["submitted", "waiting for Kueue: a", "evicted", "waiting for Kueue: c"]


def test_eviction_message_is_not_repeated_as_the_waiting_reason() -> None:
    """Kueue first waits 'because' of the eviction itself: one line says it."""
    evicted = workload(
        ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"),
        ("QuotaReserved", "False", "Pending", "Preempted to accommodate a workload"),
    )
    decision = states.decide(State.RUNNING, Objects(job(suspend=True), None, evicted))
    assert decision.system_logs == [
        "evicted by Kueue (Preempted: Preempted to accommodate a workload); the task waits to "
        "run again"
    ]


def test_skipped_executors_never_count_as_running() -> None:
    """After a failed stage-in the runner skips executors: the task never shows RUNNING."""
    skipped = json.dumps({"skipped": True})
    staging_failed = pod(
        "Running",
        [terminated("setup", 0), running("sequencer"), terminated("executor-0", 0, skipped)],
    )
    decision = states.decide(State.INITIALIZING, Objects(job(), staging_failed, ADMITTED))
    assert decision.state is State.INITIALIZING
