"""The two pod layouts in states.decide, on objects shaped as kubelet and Kueue write them.

Shapes recorded from the sources of Kubernetes 1.29 to 1.33 (kubelet's pod conditions and
container statuses of a pod with a native sidecar; the Job controller's ``status.ready``) and
Kueue v0.18.6 / v0.19.2 (``pkg/controller/jobframework/reconciler.go``
generatePodsReadyCondition; ``pkg/controller/core/workload_controller.go``
reconcileNotReadyTimeout: ``Evicted`` reason ``PodsReadyTimeout``, message ``Exceeded the
PodsReady timeout <namespace>/<workload>``, then ``Requeued=False`` and ``QuotaReserved=False``
with the same message).
"""

from __future__ import annotations

import json
from typing import Any

from app.models import State
from app.settings import Settings
from worker import jobspec, podlayout, states
from worker.report import read_report
from worker.states import Objects

Json = dict[str, Any]
NS = "kueue-tes-tasks"
WORKLOAD = "job-tes-01jb0000000000000000000001-3f9a1"
T = "2025-01-01T00:00:10Z"
SETTINGS = Settings(mongo_uri=None, redis_url=None)
POLICY = SETTINGS.model_copy(update={"gpu_resources": ["nvidia=nvidia.com/gpu"]})


def cond(kind: str, status: str, reason: str = "", message: str = "") -> Json:
    """A condition as the API server returns it (empty reason and message omitted)."""
    out: Json = {"type": kind, "status": status, "lastTransitionTime": T}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def task(executors: int = 3, gpus: str | None = None) -> Json:
    """A task of ``executors`` executors, with GPUs when asked."""
    resources = {"backend_parameters": {"gpus": gpus}} if gpus else {}
    return {
        "id": "01jb0000000000000000000001",
        "executors": [{"image": "ubuntu:24.04", "command": ["true"]}] * executors,
        "resources": resources,
    }


def job_of(doc: Json, settings: Settings = SETTINGS) -> Json:
    """The task's Job as the worker creates it, resumed by Kueue, its pod Ready."""
    job = jobspec.build_job(doc, settings)
    job["spec"]["suspend"] = False
    job["status"] = {"active": 1, "ready": 1, "startTime": T}
    return job


def running(name: str) -> Json:
    """kubelet: a running container without probes is started and ready."""
    state = {"running": {"startedAt": T}}
    return {"name": name, "ready": True, "started": True, "restartCount": 0, "state": state}


def completed(name: str, message: str = "") -> Json:
    """kubelet: a container that exited 0."""
    ended: Json = {"exitCode": 0, "reason": "Completed", "startedAt": T, "finishedAt": T}
    if message:
        ended["message"] = message
    return {"name": name, "ready": False, "started": False, "restartCount": 0,
            "state": {"terminated": ended}}  # fmt: skip


def ready_pod(job: Json, phase: str = "Running", main: list[Json] | None = None) -> Json:
    """The ready layout's pod, every container running: Ready and ContainersReady True."""
    spec = job["spec"]["template"]["spec"]
    names = sorted(c["name"] for c in spec["containers"])  # kubelet sorts main statuses by name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tes-01jb0000000000000000000001-x7k2p", "namespace": NS},
        "spec": spec,
        "status": {
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", "True"),
                cond("Initialized", "True"),
                cond("Ready", "True"),
                cond("ContainersReady", "True"),
                cond("PodScheduled", "True"),
            ],
            "initContainerStatuses": [
                {**completed("setup"), "ready": True},
                running("sequencer"),
            ],
            "containerStatuses": main if main is not None else [running(n) for n in names],
        },
    }


READY_MESSAGE = "All pods reached readiness and the workload is running"
ADMITTED = {
    "metadata": {"name": WORKLOAD, "namespace": NS},
    "status": {
        "conditions": [
            cond("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue tes"),
            cond("Admitted", "True", "Admitted", "The workload is admitted"),
            cond("PodsReady", "True", "Started", READY_MESSAGE),
        ]
    },
}


def report(*events: Json) -> str:
    """The sequencer's log with these report events."""
    return "\n".join(json.dumps({"kueue-tes": 1, **event}) for event in events) + "\n"


STAGED = ({"event": "started", "time": T}, {"event": "staged", "ok": True, "system_logs": []})


def test_ready_pod_is_initializing_until_the_report_says_an_executor_started() -> None:
    """All containers run and the pod is Ready from the start: the report tells RUNNING."""
    job = job_of(task())
    pod = ready_pod(job)
    assert podlayout.ready(pod) and podlayout.ready(job) and not podlayout.ready(None)
    staging = Objects(job, pod, ADMITTED, report=read_report(report(*STAGED)))
    decision = states.decide(State.INITIALIZING, staging)
    assert decision.state is State.INITIALIZING and decision.executor_logs is None
    assert states.decide(State.QUEUED, Objects(job, pod, ADMITTED)).state is State.INITIALIZING
    first = read_report(report(*STAGED, {"event": "running", "index": 0, "start_time": T}))
    decision = states.decide(State.INITIALIZING, Objects(job, pod, ADMITTED, report=first))
    assert decision.state is State.RUNNING
    ended = {"event": "executor", "index": 0, "exit_code": 3, "start_time": T, "end_time": T,
             "stdout": "x" * 100, "stderr": ""}  # fmt: skip
    second = read_report(report(*STAGED, ended, {"event": "running", "index": 1}))
    decision = states.decide(State.RUNNING, Objects(job, pod, ADMITTED, report=second))
    assert decision.state is State.RUNNING
    assert decision.executor_logs == [{"exit_code": 3, "start_time": T, "end_time": T}]


def test_ready_pod_whose_stage_in_failed_never_shows_running() -> None:
    """Every executor skipped: the report has no executor that ran."""
    job = job_of(task())
    failed = report(
        {"event": "staged", "ok": False, "system_logs": ["input /x: 404"]},
        *({"event": "executor", "index": i, "skipped": True} for i in range(3)),
    )
    objects = Objects(job, ready_pod(job), ADMITTED, report=read_report(failed))
    assert states.decide(State.INITIALIZING, objects).state is State.INITIALIZING


def test_ready_pod_end_reads_executor_logs_from_container_statuses() -> None:
    """At the end the termination messages are in containerStatuses, sorted by name."""
    job = job_of(task(executors=11))
    messages = {i: json.dumps({"exit_code": i, "start": T, "end": T}) for i in range(11)}
    main = [completed(f"executor-{i}", messages[i]) for i in range(11)]
    main.sort(key=lambda s: s["name"])  # executor-10 before executor-2, as kubelet lists them
    main.append({**completed("finish"), "name": "finish"})
    pod = ready_pod(job, "Succeeded", main)
    done = json.loads(json.dumps(job))
    done["status"]["conditions"] = [cond("Complete", "True", "CompletionsReached")]
    decision = states.decide(State.RUNNING, Objects(done, pod, ADMITTED))
    assert decision.finished and decision.state is State.COMPLETE
    assert [e["exit_code"] for e in decision.executor_logs or []] == list(range(11))


def evicted(workload_of: Json) -> Json:
    """The Workload after Kueue's PodsReadyTimeout eviction (and the job reconciler's step)."""
    message = f"Exceeded the PodsReady timeout {NS}/{WORKLOAD}"
    pod_set = {"name": "main", "count": 1, "template": workload_of["spec"]["template"]}
    return {
        "metadata": {"name": WORKLOAD, "namespace": NS},
        "spec": {"podSets": [pod_set]},
        "status": {
            "conditions": [
                cond("QuotaReserved", "False", "Pending", message),
                cond("Admitted", "False", "NoReservation", "The workload has no reservation"),
                cond("PodsReady", "False", "WaitForStart", "Not all pods are ready or succeeded"),
                cond("Evicted", "True", "PodsReadyTimeout", message),
                cond("Requeued", "False", "PodsReadyTimeout", message),
            ],
            "requeueState": {"count": 1, "requeueAt": T},
        },
    }


def test_pods_ready_timeout_of_an_init_layout_task_says_why_and_what_to_change() -> None:
    """init layout (several GPU executors): the log names the setting, the cause, the fixes."""
    job = job_of(task(executors=2, gpus="1"), POLICY)
    assert not podlayout.ready(job)
    job["spec"]["suspend"] = True  # Kueue stopped the Job; its pod is gone
    decision = states.decide(State.RUNNING, Objects(job, None, evicted(job)))
    assert decision.state is State.QUEUED and decision.requeued
    text = decision.system_logs[0]
    assert text.startswith(
        f"evicted by Kueue (PodsReadyTimeout: Exceeded the PodsReady timeout {NS}/{WORKLOAD}): "
        "the cluster's waitForPodsReady timeout ended this attempt: this task's executors run "
        "as init containers (it has several executors that share GPUs"
    ), text
    assert "raise waitForPodsReady.timeout and recoveryTimeout" in text
    assert "a user can give each executor that needs GPUs a task of its own" in text
    assert len(decision.system_logs) == 1  # Kueue's pending message repeats it: said once
    # the same from the Workload's pod set alone (the Job is not at hand)
    why = f"PodsReadyTimeout: Exceeded the PodsReady timeout {NS}/{WORKLOAD}"
    assert podlayout.pods_ready_timeout(why, None, None, evicted(job)) == text


def test_pods_ready_timeout_of_an_operator_chosen_init_layout() -> None:
    """KUEUE_TES_POD_LAYOUT=init: the operator's fix is the ready layout."""
    init = SETTINGS.model_copy(update={"pod_layout": "init"})
    job = job_of(task(), init)
    text = states.decide(State.RUNNING, Objects(job, None, evicted(job))).system_logs[0]
    assert "(the operator set KUEUE_TES_POD_LAYOUT=init)" in text
    assert "or set KUEUE_TES_POD_LAYOUT=ready" in text


def test_pods_ready_timeout_of_a_ready_layout_task() -> None:
    """ready layout: the pod never got Ready (slow pulls, no node): said as such."""
    job = job_of(task())
    text = states.decide(State.INITIALIZING, Objects(job, None, evicted(job))).system_logs[0]
    assert "the task pod was not Ready within the cluster's waitForPodsReady timeout" in text
    assert "init containers" not in text


DIGEST = "docker.io/library/ubuntu@sha256:" + "ab" * 32


def pulled(pod: Json) -> Json:
    """``pod`` with kubelet's imageID on every executor: all of them started at once."""
    for status in pod["status"]["containerStatuses"]:
        if status["name"].startswith("executor-"):
            status["imageID"] = DIGEST
    return pod


def test_ready_pod_names_an_executors_image_once_the_report_says_it_ran() -> None:
    """Every executor's container runs from the start, waiting for its turn: the line that
    names the digest an executor ran comes with its turn, never for one that never ran."""
    job = job_of(task(executors=2))
    pod = pulled(ready_pod(job))
    staging = Objects(job, pod, ADMITTED, report=read_report(report(*STAGED)))
    assert states.decide(State.INITIALIZING, staging).system_logs == []
    first = read_report(report(*STAGED, {"event": "running", "index": 0, "start_time": T}))
    decision = states.decide(State.INITIALIZING, Objects(job, pod, ADMITTED, report=first))
    assert decision.state is State.RUNNING
    assert decision.system_logs == [f"executor 0 ran ubuntu:24.04 as {DIGEST}"]
    failed = report(
        {"event": "staged", "ok": False, "system_logs": ["input /x: 404"]},
        *({"event": "executor", "index": i, "skipped": True} for i in range(2)),
    )
    skipped = Objects(job, pod, ADMITTED, report=read_report(failed))
    assert states.decide(State.INITIALIZING, skipped).system_logs == []
    # at the end, the runners' termination messages say who ran
    ran = json.dumps({"exit_code": 0, "start": T, "end": T})
    main = [
        {**completed("executor-0", ran), "imageID": DIGEST},
        {**completed("executor-1", json.dumps({"skipped": True})), "imageID": DIGEST},
        {**completed("finish"), "state": {"terminated": {"exitCode": 1}}},
    ]
    done = states.decide(State.RUNNING, Objects(job, ready_pod(job, "Failed", main), ADMITTED))
    assert done.finished and done.system_logs[0] == f"executor 0 ran ubuntu:24.04 as {DIGEST}"
    assert not any(line.startswith("executor 1 ran") for line in done.system_logs)


def pulling(name: str, reason: str, image: str) -> Json:
    """kubelet: a container whose image pull fails (ErrImagePull, then ImagePullBackOff)."""
    message = (
        f'failed to pull and unpack image "docker.io/library/{image}": failed to resolve '
        f'reference "docker.io/library/{image}": pull access denied, repository does not exist '
        "or may require authorization"
        if reason == "ErrImagePull"
        else f'Back-off pulling image "{image}"'
    )
    state = {"waiting": {"reason": reason, "message": message}}
    return {"name": name, "ready": False, "started": False, "restartCount": 0, "state": state}


def test_two_executors_whose_images_fail_keep_a_waiting_line_each() -> None:
    """The ready layout pulls every executor's image at once: when two pulls fail, each
    executor's line says why its pull fails now, updated in place, neither hiding the other."""
    doc = task(executors=2)
    doc["executors"] = [
        {"image": "nope:1", "command": ["true"]},
        {"image": "gone:2", "command": ["true"]},
    ]
    job = job_of(doc)

    def seen(reason_0: str, reason_1: str) -> Json:
        pod = ready_pod(job, "Pending")
        pod["status"]["conditions"][2:4] = [
            cond(kind, "False", "ContainersNotReady", "containers with unready status: "
                 "[executor-0 executor-1]")
            for kind in ("Ready", "ContainersReady")
        ]  # fmt: skip
        pod["status"]["containerStatuses"] = [
            pulling("executor-0", reason_0, "nope:1"),
            pulling("executor-1", reason_1, "gone:2"),
            running("finish"),
        ]
        return pod

    logs = ["submitted to LocalQueue tes"]
    rounds = [
        ("ErrImagePull", "ErrImagePull"),
        ("ImagePullBackOff", "ErrImagePull"),
        ("ImagePullBackOff", "ImagePullBackOff"),
    ]
    for reasons in rounds:
        decision = states.decide(State.INITIALIZING, Objects(job, seen(*reasons), ADMITTED))
        assert decision.state is State.INITIALIZING
        logs = states.merge_logs(logs, decision.system_logs) or logs
        assert logs[1:] == decision.system_logs
    assert [line.split(" (")[0] for line in logs[1:]] == [
        "waiting for an image: executor 0: pulling nope:1 fails",
        "waiting for an image: executor 1: pulling gone:2 fails",
    ]
    assert 'Back-off pulling image "gone:2"' in logs[2]
    # a line of something else in between: the next change of a pull is a line of its own
    again = states.decide(State.INITIALIZING, Objects(job, seen(*rounds[0]), ADMITTED))
    later = states.merge_logs([*logs, "something else"], again.system_logs[:1])
    assert later == [*logs, "something else", again.system_logs[0]]
