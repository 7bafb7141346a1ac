"""The watcher follows a ready-layout pod through the sequencer's report (worker/progress.py).

Recorded sequences as in test_watcher.py, with the ready layout's pod: every container runs
and the pod is Ready from the start, as kubelet reports it, so nothing in pod status changes
until the end. The scripted cluster's log is what the sequencer has printed so far.
"""

from __future__ import annotations

import copy
import io

from app.models import State
from tests.integration.test_watcher import (
    World,
    admitted,
    complete,
    cond,
    evicted,
    job,
    observe,
    pod,
    running,
    stamp,
    world,
)
from worker.sequencer.report import Report
from worker.watcher import Watcher

__all__ = ["world"]  # the fixture
Json = dict[str, object]
PROGRESS_SECONDS = 5.0


def watcher(world: World, running_seconds: float = 0.0) -> Watcher:
    """A watcher that reads progress every PROGRESS_SECONDS (RUNNING: ``running_seconds``)."""
    return Watcher(
        world.store, world.cluster, world.resubmits.append, 60.0, clock=world.clock,
        progress_seconds=PROGRESS_SECONDS, running_progress_seconds=running_seconds,
    )  # fmt: skip


def ready_pod(
    task_id: str,
    at: float,
    phase: str = "Running",
    main: list[Json] | None = None,
    suffix: str = "r3ady",
):
    """The ready layout's pod: executors and finish are main containers, all Ready."""
    out = pod(task_id, suffix, phase, [], [], at)
    spec = out["spec"]
    spec["containers"] = [*spec["initContainers"][2:], *spec["containers"]]
    spec["initContainers"] = spec["initContainers"][:2]
    setup = {"name": "setup", "ready": True, "state": {"terminated": {"exitCode": 0}}}
    names = ["executor-0", "executor-1", "finish"]
    status = out["status"]
    status["initContainerStatuses"] = [setup, running("sequencer", at)]
    status["containerStatuses"] = main if main is not None else [running(n, at) for n in names]
    if phase == "Running":
        status["conditions"] += [cond(k, "True", "", "", at) for k in ("Ready", "ContainersReady")]
    return out


def log(*lines: tuple[str, dict[str, object]]) -> str:
    """The sequencer's report so far."""
    out = io.StringIO()
    report = Report(out)
    for event, fields in lines:
        report.event(event, **fields)
    return out.getvalue()


STAGED = (("started", {"time": stamp(11)}), ("staged", {"ok": True, "system_logs": []}))
RUNNING_0 = ("running", {"index": 0, "start_time": stamp(13)})


def sequencer_reads(world: World, task_id: str) -> int:
    return world.cluster.reads.count((task_id, "sequencer"))


def staging(world: World, running_seconds: float = 0.0) -> tuple[str, Watcher]:
    """A task admitted at 10 whose ready pod is Ready at 11 while stage-in runs; its watcher."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = log(*STAGED)
    world.cluster.load(
        [
            observe(10, admitted(task, 10)),
            observe(10, job(task, suspended=False)),
            observe(11, ready_pod(task, 11)),
        ]
    )
    w = watcher(world, running_seconds)
    world.play(w)
    assert world.moves(task) == ["INITIALIZING"] and sequencer_reads(world, task) == 1
    return task, w


def test_ready_pod_moves_to_running_when_the_report_says_so(world: World) -> None:
    """INITIALIZING while staging; RUNNING at the next due read; reads rate-limited."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = log(*STAGED)
    world.cluster.load(
        [
            observe(1, job(task)),
            observe(10, admitted(task, 10)),
            observe(10, job(task, suspended=False)),
            observe(11, ready_pod(task, 11)),
        ]
    )
    first = watcher(world)
    world.play(first)
    assert world.moves(task) == ["INITIALIZING"]
    assert sequencer_reads(world, task) == 1  # the pod turned Ready: one read
    world.cluster.logs[(task, "sequencer")] = log(*STAGED, RUNNING_0)
    world.clock.now += PROGRESS_SECONDS / 2
    first.read_progress()  # not due yet
    assert sequencer_reads(world, task) == 1 and world.moves(task) == ["INITIALIZING"]
    world.clock.now += PROGRESS_SECONDS / 2
    first.read_progress()
    assert sequencer_reads(world, task) == 2 and world.moves(task) == ["INITIALIZING", "RUNNING"]
    # RUNNING with running_seconds 0: no more reads until the pod ends
    world.clock.now += 10 * PROGRESS_SECONDS
    first.read_progress()
    assert sequencer_reads(world, task) == 2


def test_a_restarted_watcher_relearns_progress_from_the_log(world: World) -> None:
    """Killed while INITIALIZING; the new watcher's resync reads the log: RUNNING at once."""
    task, _ = staging(world)
    world.cluster.logs[(task, "sequencer")] = log(*STAGED, RUNNING_0)
    world.clock.now += 1  # long before the old watcher's next read
    watcher(world).resync()
    assert world.moves(task) == ["INITIALIZING", "RUNNING"]


def test_ready_pod_runs_to_complete_with_logs_from_container_statuses(world: World) -> None:
    """At the end: finish's code, and executor logs from containerStatuses and the report."""
    task = world.task()
    ended = log(
        *STAGED,
        RUNNING_0,
        ("executor", {"index": 0, "exit_code": 0, "start_time": stamp(13),
                      "end_time": stamp(14), "stdout": "hello\n", "stderr": ""}),
        ("running", {"index": 1, "start_time": stamp(14)}),
        ("executor", {"index": 1, "exit_code": 0, "start_time": stamp(14),
                      "end_time": stamp(15), "stdout": "done\n", "stderr": ""}),
        ("outputs", {"outputs": [], "system_logs": []}),
        ("verdict", {"state": "COMPLETE", "system_logs": []}),
    )  # fmt: skip
    world.cluster.logs[(task, "sequencer")] = log(*STAGED, RUNNING_0)
    message = '{"exit_code":0,"start":"%s","end":"%s"}'
    done = [
        {"name": f"executor-{i}", "ready": False, "state": {"terminated": {
            "exitCode": 0, "reason": "Completed", "message": message % (stamp(13), stamp(14)),
        }}} for i in range(2)
    ] + [{"name": "finish", "ready": False, "state": {"terminated": {"exitCode": 0}}}]  # fmt: skip
    world.cluster.load(
        [
            observe(10, admitted(task, 10)),
            observe(10, job(task, suspended=False)),
            observe(11, ready_pod(task, 11)),
        ]
    )
    w = watcher(world)
    world.play(w)
    assert world.moves(task) == ["INITIALIZING", "RUNNING"]
    world.cluster.logs[(task, "sequencer")] = ended
    world.cluster.load(
        [
            observe(16, ready_pod(task, 11, "Succeeded", copy.deepcopy(done))),
            observe(17, complete(task)),
        ]
    )
    world.play(w)
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "COMPLETE"]
    [attempt] = world.attempts(task)
    assert [(e["exit_code"], e["stdout"]) for e in attempt["logs"]] == [
        (0, "hello\n"),
        (0, "done\n"),
    ]
    assert world.store.get(task) is not None and world.store.get(task).state is State.COMPLETE


def test_pods_ready_timeout_of_an_init_layout_task_is_explained_in_the_attempt(
    world: World,
) -> None:
    """Kueue evicts an init-layout GPU task with PodsReadyTimeout: the attempt says why."""
    task = world.task()
    world.cluster.logs[(task, "sequencer")] = log(*STAGED, RUNNING_0)
    first = pod_run_init(task)
    workload = f"job-tes-{task}-3f9a1"
    message = f"Exceeded the PodsReady timeout kueue-tes-tasks/{workload}"
    not_ready = cond("PodsReady", "False", "WaitForStart", "Not all pods are ready or succeeded")
    out = evicted(task, "PodsReadyTimeout", message, 320, waiting=message)
    out["status"]["conditions"] += [
        not_ready,
        cond("Requeued", "False", "PodsReadyTimeout", message),
    ]
    template = {"spec": first["spec"]}  # the Job's and the Workload's, as the API returns them
    resumed, suspended = job(task, suspended=False), job(task)
    for obj in (resumed, suspended):
        obj["spec"]["template"] = template
    out["spec"]["podSets"] = [{"name": "main", "count": 1, "template": template}]
    world.cluster.load(
        [
            observe(10, admitted(task, 10)),
            observe(10, resumed),
            observe(11, first),
            observe(320, out),
            observe(320, suspended),
        ]
    )
    world.play(watcher(world))
    assert world.moves(task) == ["INITIALIZING", "RUNNING", "QUEUED"]
    [attempt] = world.attempts(task)
    assert attempt["metadata"]["evicted"] == "PodsReadyTimeout"
    lines = [line for line in attempt["system_logs"] if "PodsReadyTimeout" in line]
    assert len(lines) == 1, attempt["system_logs"]
    line = lines[0]
    assert line.startswith(
        f"evicted by Kueue (PodsReadyTimeout: {message}): the cluster's waitForPodsReady timeout "
        "ended this attempt: this task's executors run as init containers (it has several "
        "executors that share GPUs"
    ), line


def pod_run_init(task_id: str) -> Json:
    """An init-layout pod of two GPU executors, the first one running."""
    out = pod(
        task_id, "g9u1x", "Pending",
        [{"name": "setup", "state": {"terminated": {"exitCode": 0}}}, running("sequencer", 11),
         running("executor-0", 12)],
        [{"name": "finish", "state": {"waiting": {"reason": "PodInitializing"}}}], 11,
    )  # fmt: skip
    for container in out["spec"]["initContainers"][2:]:
        container["resources"]["limits"]["nvidia.com/gpu"] = "1"
    return out


def test_no_read_stays_due_once_the_ready_pod_has_ended(world: World) -> None:
    """A pod read while INITIALIZING ends before its next read: nothing is due any more.

    Until the Job is gone (on a cluster, the pod's grace and Kueue's clean-up) a read that
    stays due would make the watcher's loop wait 0 s and reconcile the task over and over.
    """
    task, w = staging(world, running_seconds=60.0)
    world.cluster.logs[(task, "sequencer")] = log(
        *STAGED, RUNNING_0, ("verdict", {"state": "COMPLETE", "system_logs": []})
    )
    finish = {"name": "finish", "ready": False, "state": {"terminated": {"exitCode": 0}}}
    world.cluster.load([observe(13, ready_pod(task, 11, "Succeeded", [finish]))])
    world.play(w, 1)  # the Job's deletion is still to come
    assert world.moves(task) == ["INITIALIZING", "COMPLETE"]
    world.clock.now += 10 * PROGRESS_SECONDS
    assert w.progress.due() == []
    assert w.progress.wait(1.0) == 1.0


def test_a_replacement_pod_not_ready_yet_leaves_no_read_due(world: World) -> None:
    """The Job controller replaces a disrupted ready pod: no read is due until the new one runs.

    The new pod pulls its images for minutes, maybe: the old pod's read must not stay due
    meanwhile. Once the new pod is Ready its own log is read at once.
    """
    task, w = staging(world)
    stopped = ready_pod(task, 11)
    status = stopped["status"]
    status["phase"] = "Failed"
    status["conditions"] = [c for c in status["conditions"] if c["type"] == "PodScheduled"]
    status["conditions"].append(
        cond("DisruptionTarget", "True", "DeletionByTaintManager", "Taint manager: deleting", 20)
    )
    second = ready_pod(task, 21, "Pending", [], suffix="n3xt2")
    world.cluster.load([observe(20, stopped), observe(21, second)])
    world.play(w)
    world.clock.now += 10 * PROGRESS_SECONDS
    assert w.progress.due() == []
    assert w.progress.wait(1.0) == 1.0
    world.cluster.logs[(second["metadata"]["name"], "sequencer")] = log(*STAGED, RUNNING_0)
    world.cluster.load([observe(80, ready_pod(task, 21, suffix="n3xt2"))])
    world.play(w)
    assert sequencer_reads(world, task) == 2
    assert world.moves(task) == ["INITIALIZING", "RUNNING"]


def test_no_read_stays_due_for_a_task_ended_while_its_pod_still_runs(world: World) -> None:
    """The Job fails (its deadline) while the ready pod is still Ready: nothing is due."""
    task, w = staging(world)
    deadline = cond("Failed", "True", "DeadlineExceeded", "Job was active longer than specified")
    world.cluster.load([observe(30, job(task, suspended=False, conditions=[deadline]))])
    world.play(w, 1)  # the pod is still there, Ready, until the Job's deletion reaches it
    assert world.moves(task) == ["INITIALIZING", "SYSTEM_ERROR"]
    world.clock.now += 10 * PROGRESS_SECONDS
    assert w.progress.due() == []
