"""Cluster observations → TES state and logs (pure; design sections 10 and 11).

The watcher keeps the latest Job, Pod and Workload of each task and asks :func:`decide` what
they mean; :func:`read_report` turns the sequencer's JSON-lines report into TES logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from app.models import State

Json = dict[str, Any]

#: Names of our own containers in the task pod (docs/task-pod.md).
SETUP, SEQUENCER, FINISH = "setup", "sequencer", "finish"
_FINISH_CODES = {0: State.COMPLETE, 1: State.EXECUTOR_ERROR}


@dataclass(frozen=True)
class Objects:
    """What the cluster last showed of one task; None where an object does not exist."""

    job: Json | None = None
    pod: Json | None = None
    workload: Json | None = None

    @property
    def gone(self) -> bool:
        """Nothing of the task exists any more."""
        return self.job is None and self.pod is None


@dataclass
class Decision:
    """What the watcher should do: move the task, note why, end the attempt."""

    state: State | None = None
    system_logs: list[str] = field(default_factory=list)
    executor_logs: list[Json] | None = None
    finished: bool = False
    requeued: bool = False


def _condition(obj: Json | None, kind: str) -> Json | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def _true(obj: Json | None, kind: str) -> bool:
    cond = _condition(obj, kind)
    return bool(cond and cond.get("status") == "True")


def _statuses(pod: Json | None, key: str) -> list[Json]:
    return list(((pod or {}).get("status") or {}).get(key) or ())


def _terminated(status: Json) -> Json | None:
    return ((status.get("state") or {}).get("terminated")) or None


def executor_logs(pod: Json | None) -> list[Json]:
    """Return ExecutorLogs of the executors that have ended, from pod status alone."""
    logs: list[Json] = []
    for status in _statuses(pod, "initContainerStatuses"):
        if not str(status.get("name", "")).startswith("executor-"):
            continue
        ended = _terminated(status)
        if not ended:
            break
        try:
            message = json.loads(ended.get("message") or "{}")
        except json.JSONDecodeError:
            message = {}
        if not isinstance(message, dict) or message.get("skipped") or "exit_code" not in message:
            break
        logs.append(
            {
                "exit_code": int(message["exit_code"]),
                "start_time": message.get("start") or ended.get("startedAt"),
                "end_time": message.get("end") or ended.get("finishedAt"),
            }
        )
    return logs


def _executor_started(pod: Json | None) -> bool:
    for status in _statuses(pod, "initContainerStatuses"):
        state = status.get("state") or {}
        if str(status.get("name", "")).startswith("executor-") and (
            "running" in state or "terminated" in state
        ):
            return True
    return False


def _pod_failure(pod: Json) -> str | None:
    # Why the pod ended without a verdict: the first of our containers that failed.
    for key in ("initContainerStatuses", "containerStatuses"):
        for status in _statuses(pod, key):
            ended = _terminated(status)
            if ended and ended.get("exitCode", 0) != 0:
                reason = ended.get("reason") or "Error"
                code = ended.get("exitCode")
                return f"container {status.get('name')} ended with {reason} (exit code {code})"
            waiting = (status.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                why = f"{waiting.get('reason')}: {waiting.get('message', '')}"
                return f"container {status.get('name')}: {why}"
    return None


def _finish_code(pod: Json | None) -> int | None:
    for status in _statuses(pod, "containerStatuses"):
        if status.get("name") == FINISH and (ended := _terminated(status)):
            return int(ended.get("exitCode", 2))
    return None


def decide(state: State, objects: Objects) -> Decision:
    """Map what the cluster shows of a task onto its next TES state."""
    if state is State.CANCELING:
        return Decision(state=State.CANCELED if objects.gone else None, finished=objects.gone)
    workload, pod, job = objects.workload, objects.pod, objects.job
    if objects.gone:
        return Decision()
    if _true(workload, "Evicted"):
        cond = _condition(workload, "Evicted") or {}
        reason = f"{cond.get('reason', 'Evicted')}: {cond.get('message', '')}".strip(": ")
        if str(cond.get("reason", "")).startswith("Deactivated"):
            return Decision(
                State.SYSTEM_ERROR, [f"Kueue deactivated the task: {reason}"], finished=True
            )
        return Decision(
            State.QUEUED,
            [f"evicted by Kueue ({reason}); the task waits to run again"],
            requeued=True,
        )
    if not _true(workload, "Admitted") and (job or {}).get("spec", {}).get("suspend", True):
        reserved = _condition(workload, "QuotaReserved")
        waiting = (
            reserved.get("message") if reserved and reserved.get("status") == "False" else None
        )
        logs = [f"waiting for Kueue: {waiting}"] if waiting else []
        return Decision(State.QUEUED, logs)
    ended_pod = pod is not None and (
        (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
    )
    if ended_pod or _true(job, "Complete") or _true(job, "Failed"):
        code = _finish_code(pod)
        final = (
            _FINISH_CODES.get(code, State.SYSTEM_ERROR) if code is not None else State.SYSTEM_ERROR
        )
        logs = []
        if final is State.SYSTEM_ERROR and pod is not None and code is None:
            logs.append(_pod_failure(pod) or "the task pod ended before the sequencer's verdict")
        return Decision(final, logs, executor_logs=executor_logs(pod), finished=True)
    if _executor_started(pod):
        return Decision(State.RUNNING, executor_logs=executor_logs(pod))
    return Decision(State.INITIALIZING)


@dataclass
class Report:
    """The sequencer's report of one attempt."""

    verdict: State | None = None
    executors: list[Json] = field(default_factory=list)
    outputs: list[Json] = field(default_factory=list)
    system_logs: list[str] = field(default_factory=list)


def read_report(log: str) -> Report:
    """Parse the sequencer's JSON-lines report out of its container log."""
    report = Report()
    by_index: dict[int, Json] = {}
    for raw in log.splitlines():
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(event, dict) or event.get("kueue-tes") != 1:
            continue
        kind = event.get("event")
        report.system_logs += [str(s) for s in event.get("system_logs") or ()]
        if kind == "executor" and not event.get("skipped"):
            entry = {
                k: event[k]
                for k in ("exit_code", "start_time", "end_time", "stdout", "stderr")
                if event.get(k) is not None
            }
            by_index[int(event.get("index", len(by_index)))] = entry
        elif kind == "outputs":
            report.outputs = [dict(o) for o in event.get("outputs") or ()]
        elif kind == "verdict" and event.get("state") in State.__members__:
            report.verdict = State(event["state"])
    report.executors = [by_index[i] for i in sorted(by_index)]
    return report
