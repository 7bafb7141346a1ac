"""The watcher end to end on recorded sequences: refused pods, admission checks, missing classes.

Issue 9, items 3, 4 and 6, through the real watcher, store (SQLite) and the scripted cluster of
test_watcher: what a task on a real cluster shows, attempt by attempt, and when its Job is
deleted (which returns the Workload's quota). The object shapes are test_admission's.
"""

from __future__ import annotations

from app.models import State
from tests.integration.test_watcher import (
    QUOTA as KUEUE_QUOTA,
)
from tests.integration.test_watcher import (
    SUBMITTED,
    TWO_EXECUTORS,
    World,
    admitted,
    complete,
    cond,
    job,
    observe,
    pending,
    pod_run,
    report,
    stamp,
    workload,
    world,
)
from tests.unit.test_admission import DWS, JOB, PSA, QUOTA, check, failed_create

__all__ = ["world"]  # the fixture


def refusal(task: str, message: str, first: float, last: float, count: int) -> dict:
    """The Job controller's FailedCreate Event about this task's Job, as the watch shows it."""
    event = failed_create(message, stamp(first), stamp(last), count)
    event["metadata"]["name"] = f"tes-{task}.18a6b2c3d4e5f607"
    event["metadata"]["labels"] = {"kueue-tes/task-id": task}  # the scripted cluster's routing
    event["involvedObject"]["name"] = f"tes-{task}"
    return event


def test_a_used_up_resource_quota_shows_its_message_until_the_pod_is_created(world: World) -> None:
    """Admitted, the pod refused for a while, then created: the task runs and completes."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS)
    quota = QUOTA.replace(JOB, f"tes-{task}")
    run = pod_run(task, "k8s01", 100)
    world.cluster.load([
        observe(1, job(task)),
        observe(2, pending(task, KUEUE_QUOTA + "default, 3 more needed", 2)),
        observe(10, admitted(task, 10)),
        observe(10, job(task, suspended=False)),
        observe(11, refusal(task, quota, 11, 11, 1)),
        observe(41, refusal(task, quota, 11, 41, 4)),
        *[observe(100 + i, snapshot) for i, snapshot in enumerate(run)],
        observe(107, complete(task)),
    ])  # fmt: skip
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "COMPLETE"]
    [attempt] = world.attempts(task)
    waiting = [line for line in attempt["system_logs"] if line.startswith("waiting for the task")]
    assert waiting == [
        f"waiting for the task pod: the cluster refuses to create it: {quota}; a ResourceQuota "
        "of the task namespace is used up; the pod is created once other pods end or the "
        "operator raises the quota; the task fails after 600 s"
    ]
    assert world.cluster.deleted == [(task, State.COMPLETE)]


def test_a_quota_that_never_frees_ends_the_task_after_the_grace(world: World) -> None:
    """Still refused 600 s after the first refusal: SYSTEM_ERROR, and the Job (quota) goes."""
    task = world.task()
    quota = QUOTA.replace(JOB, f"tes-{task}")
    world.cluster.load([
        observe(1, job(task)),
        observe(10, admitted(task, 10)),
        observe(10, job(task, suspended=False)),
        observe(11, refusal(task, quota, 11, 11, 1)),
        observe(400, refusal(task, quota, 11, 400, 9)),
        observe(620, refusal(task, quota, 11, 620, 12)),
    ])  # fmt: skip
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "SYSTEM_ERROR"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"][-1].startswith(
        f"the cluster refused to create the task pod for 600 s: {quota}; a ResourceQuota"
    )
    assert world.cluster.deleted == [(task, State.SYSTEM_ERROR)]


def test_a_pod_security_refusal_ends_the_task_at_once(world: World) -> None:
    """Pod Security baseline forbids the hostPath volumes: SYSTEM_ERROR with the API's words."""
    task = world.task()
    forbidden = PSA.replace(JOB, f"tes-{task}")
    world.cluster.load([
        observe(1, job(task)),
        observe(10, admitted(task, 10)),
        observe(10, job(task, suspended=False)),
        observe(11, refusal(task, forbidden, 11, 11, 1)),
    ])  # fmt: skip
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "SYSTEM_ERROR"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"] == [
        SUBMITTED,
        f"the cluster refused to create the task pod: {forbidden}; the task namespace's Pod "
        "Security level (pod-security.kubernetes.io/enforce) forbids the pod; hostPath volumes "
        "come from KUEUE_TES_FILE_ROOTS: the operator can drop them or label the namespace "
        "privileged (docs/troubleshooting.md)",
    ]
    assert world.cluster.deleted == [(task, State.SYSTEM_ERROR)]


def test_the_admission_checks_a_task_waits_for_are_named(world: World) -> None:
    """Quota reserved, a ProvisioningRequest pending: its message, then admission and a run."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = report(TWO_EXECUTORS)
    reserved = cond(
        "QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue tes", 5
    )
    unready = cond(
        "Admitted", "False", "UnsatisfiedChecks", "The workload has not all checks ready", 5
    )
    checking = workload(task, reserved, unready)
    checking["status"]["admissionChecks"] = [check("dws-prov", "Pending", "")]
    provisioning = workload(task, reserved, unready)
    provisioning["status"]["admissionChecks"] = [check("dws-prov", "Pending", DWS)]
    run = pod_run(task, "k8s02", 61)
    world.cluster.load([
        observe(1, job(task)),
        observe(5, checking),
        observe(20, provisioning),
        observe(60, admitted(task, 60)),
        observe(60, job(task, suspended=False)),
        *[observe(61 + i, snapshot) for i, snapshot in enumerate(run)],
        observe(68, complete(task)),
    ])  # fmt: skip
    world.play(world.watcher())
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "COMPLETE"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"] == [
        SUBMITTED,
        f"waiting for Kueue: admission check dws-prov is Pending: {DWS}",
    ]


def test_a_missing_priority_class_on_released_kueue_ends_the_task_after_the_grace(
    world: World,
) -> None:
    """No Workload, no Event (Kueue v0.15-v0.19): SYSTEM_ERROR naming the class after 120 s."""
    task = world.task()
    asked = job(task)
    asked["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"
    later = job(task)
    later["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "urgent"
    later["metadata"]["resourceVersion"] = "2"
    world.cluster.load([observe(1, asked), observe(130, later)])
    world.play(world.watcher())
    assert world.moves(task) == ["SYSTEM_ERROR"]
    [attempt] = world.attempts(task)
    assert attempt["system_logs"][-1].startswith(
        f"Kueue has created no Workload for Job tes-{task} in 120 s: the task asks for "
        "WorkloadPriorityClass urgent"
    )
    assert world.cluster.deleted == [(task, State.SYSTEM_ERROR)]
