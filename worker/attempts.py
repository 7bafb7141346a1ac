"""A task's attempts (TES TaskLogs) as the watcher keeps them in the store (design section 10).

The worker opens the first attempt at submission, the watcher each later one when Kueue admits
the task again after an eviction: one per admission. An evicted attempt keeps its end_time, and
what the task waits for until its next admission is added to its system_logs, so a client
polling a QUEUED task reads why in the last TaskLog. An attempt's ``metadata`` names its
``pod`` and, once evicted, Kueue's reason (``evicted``): that is how a restarted watcher tells an
old pod from a new one (worker/pods.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from app.models import State
from app.store.base import TERMINAL, TaskRecord, TaskStore
from worker import states
from worker.decisions import Decision, Json
from worker.report import Report

log = logging.getLogger(__name__)

#: The states of an attempt that has a pod to run on.
ACTIVE = (State.INITIALIZING, State.RUNNING)


def now() -> str:
    """Return the current UTC time as RFC 3339."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def name(obj: Json | None) -> str | None:
    """Return an object's name, or None."""
    return None if obj is None else (obj.get("metadata") or {}).get("name")


def since(obj: Json | None, kind: str) -> str:
    """Return when Kueue flipped a condition, else now.

    Kueue's time is stable across watcher restarts, unlike our own clock.
    """
    return str((states.condition(obj, kind) or {}).get("lastTransitionTime") or now())


def ensure(store: TaskStore, record: TaskRecord) -> tuple[TaskRecord, int]:
    """Return the task and the index of its last attempt, opening a first one if it has none."""
    if not record.doc.get("logs"):
        store.append_attempt(record.id, {"logs": [], "outputs": []})
        record = store.get(record.id) or record
    return record, len(record.doc["logs"]) - 1


def current(
    store: TaskStore,
    record: TaskRecord,
    index: int,
    pod: str | None,
    decision: Decision,
    on_replaced: Callable[[TaskRecord], None] | None = None,
) -> tuple[TaskRecord, int]:
    """Return the attempt ``decision`` belongs to, closing and opening attempts as needed.

    ``on_replaced(record)`` is told when an attempt ends because its pod was replaced unseen.
    """
    attempt = record.doc["logs"][index]
    meta = attempt.get("metadata") or {}
    if decision.requeued or record.state is State.CANCELING:
        return record, index
    if not attempt.get("end_time"):
        if pod is None or meta.get("pod") in (None, pod):
            return record, index
        # A new pod while the attempt's own was never seen to end: it was replaced (an
        # eviction and re-admission, or a disruption) while the watcher was not looking.
        replaced = f"the task's pod {meta['pod']} was replaced by {pod}"
        changes: Json = {"end_time": now(), "metadata": {**meta, "evicted": "PodReplaced"}}
        changes["system_logs"] = states.merge_logs(attempt.get("system_logs") or [], [replaced])
        store.update_attempt(record.id, index, changes)
        if on_replaced is not None:
            on_replaced(record)
    elif not meta.get("evicted"):
        return record, index  # ended by a finish that did not get to move the task
    elif decision.state not in ACTIVE and not (decision.finished and pod):
        return record, index  # still waiting after the eviction
    store.append_attempt(record.id, {"logs": [], "outputs": []})
    log.info("task %s: admitted again; attempt %d begins", record.id, index + 2)
    fresh = store.get(record.id) or record
    return fresh, len(fresh.doc["logs"]) - 1


def executor_logs(
    report: Report, from_pod: list[Json] | None, tail: Callable[[int], str] | None
) -> list[Json]:
    """Return an attempt's ExecutorLogs: the report's, then those only the pod's status knows.

    The report's entries carry the output tails; the sequencer does not get to report an
    executor whose runner an OOM kill takes with it: ``tail(i)`` reads executor i's log then.
    """
    logs = [dict(entry) for entry in report.executors]
    logs += [dict(entry) for entry in (from_pod or [])[len(logs) :]]
    for i, entry in enumerate(logs):
        if "stdout" not in entry and tail is not None:
            entry["stdout"] = tail(i)
    return logs


def vanished(store: TaskStore, task_id: str) -> None:
    """End an active task whose Job is gone from the cluster (nobody else will) in SYSTEM_ERROR."""
    record = store.get(task_id)
    if record is None or record.state in TERMINAL:
        return
    record, index = ensure(store, record)
    attempt = record.doc["logs"][index]
    gone = ["the task's Job disappeared from the cluster"]
    merged = states.merge_logs(attempt.get("system_logs") or [], gone)
    changes: Json = {"system_logs": merged} if merged is not None else {}
    if not attempt.get("end_time"):
        changes["end_time"] = now()
    store.update_attempt(task_id, index, changes)
    if store.transition(task_id, State.SYSTEM_ERROR):
        log.warning("task %s: SYSTEM_ERROR: its Job disappeared", task_id)
