"""The watcher keeps every pod of a task and follows the current attempt's (issue 9, item 5).

Recorded order of a re-admission on a real cluster: Kueue evicts the Workload and suspends the
Job; the Job controller deletes the pod, which terminates for its grace period (a MODIFIED with
``deletionTimestamp``); Kueue admits the Workload again and the Job controller creates a new pod
at once. Pods, Jobs and Workloads come on three separate watch streams, so the watcher may see
the new pod's ADDED before the old pod's last MODIFIED and its DELETED, and the Job's Complete
before the new pod's final MODIFIED. The builders are test_watcher's.
"""

from __future__ import annotations

import copy

from app.models import State
from tests.integration.test_watcher import (
    PREEMPTED,
    TWO_EXECUTORS,
    Step,
    World,
    admitted,
    complete,
    ended,
    gone,
    job,
    observe,
    pod_run,
    report,
    stamp,
    until_preempted,
    world,
)

__all__ = ["world"]  # the fixture


def terminating(pod: dict, at: float, failed: bool = False) -> dict:
    """``pod`` after the Job controller deleted it: terminating for its grace, then Failed."""
    out = copy.deepcopy(pod)
    out["metadata"]["deletionTimestamp"] = stamp(at + 30)
    out["metadata"]["deletionGracePeriodSeconds"] = 30
    if failed:
        out["status"]["phase"] = "Failed"
        out["status"]["initContainerStatuses"][2] = ended("executor-0", 137, at - 8)
    return out


def readmitted_out_of_order(task: str) -> list[Step]:
    """Preempted while executor 0 runs; the new pod is reported before the old one is gone."""
    first, second = pod_run(task, "p1xxx", 11), pod_run(task, "p2xxx", 41)
    unsuspended = job(task, suspended=False)
    return [
        *until_preempted(task, first),
        observe(21, terminating(first[2], 21)),
        observe(40, admitted(task, 40, previously=PREEMPTED)),
        observe(40, unsuspended),
        *[observe(41 + i, snapshot) for i, snapshot in enumerate(second[:5])],
        # The old pod's last change and its deletion arrive only now, after the new pod's.
        observe(46, terminating(first[2], 21, failed=True)),
        gone(47, first[2]),
        # The Job stream is ahead of the Pod stream: Complete before the pod's Succeeded.
        observe(48, complete(task)),
    ]  # fmt: skip


def test_the_new_pod_stays_current_when_the_old_one_is_deleted_after_it(world: World) -> None:
    """The old pod's late MODIFIED and DELETED leave the live pod known; its verdict counts."""
    task = world.task()
    new_pod = f"tes-{task}-p2xxx"
    world.cluster.logs[(new_pod, "sequencer")] = report(TWO_EXECUTORS)
    world.cluster.logs[(f"tes-{task}-p1xxx", "sequencer")] = report([], verdict=None)
    steps = readmitted_out_of_order(task)
    watcher = world.watcher()
    world.cluster.load(steps[:-1])
    world.play(watcher)
    # Both old-pod observations came after the new pod's: the new one is still the current.
    objects = watcher.objects[task]
    assert objects.pod is not None and objects.pod["metadata"]["name"] == new_pod
    assert list(objects.pods) == [f"uid-{new_pod}"]
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "QUEUED", "INITIALIZING", "RUNNING"]
    world.cluster.load(steps[-1:])
    world.play(watcher)
    # Judged with the new pod: the Job is Complete and the new pod's sequencer says COMPLETE.
    assert world.moves(task)[-1] == "COMPLETE"
    first, second = world.attempts(task)
    assert first["metadata"] == {"pod": f"tes-{task}-p1xxx", "evicted": "Preempted"}
    assert second["metadata"] == {"pod": new_pod}
    assert [e["stdout"] for e in second["logs"]] == ["hello\n", "done\n"]
    assert world.cluster.deleted == [(task, State.COMPLETE)]


def test_a_resync_that_lists_both_pods_picks_the_current_attempts(world: World) -> None:
    """A restarted watcher lists the terminating old pod and the new one: the new one counts."""
    task = world.task()
    new_pod = f"tes-{task}-p2xxx"
    world.cluster.logs[(new_pod, "sequencer")] = report(TWO_EXECUTORS)
    steps = readmitted_out_of_order(task)[:15]  # up to the new pod's executor 0 running
    world.cluster.load(steps)
    world.play(world.watcher())
    # What a fresh listing shows: the last state of every object, both pods included.
    latest = {(obs.kind, obs.name): obs for _, obs in steps}
    restarted = world.watcher()
    world.cluster.snapshot = lambda: list(latest.values())  # type: ignore[method-assign]
    restarted.resync()
    objects = restarted.objects[task]
    assert objects.pod is not None and objects.pod["metadata"]["name"] == new_pod
    assert len(objects.pods) == 2
    assert world.moves(task)[-1] == "RUNNING"
    assert world.attempts(task)[-1]["metadata"] == {"pod": new_pod}
