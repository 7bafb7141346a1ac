"""The RQ jobs: submit a task to the cluster, cancel it (design section 6).

Both are idempotent: a Job that exists is a successful submit, a missing one a successful
delete. A transient cluster error is tried again in the job after a growing pause
(:data:`RETRY_DELAYS`); if it persists the job fails, and the watcher's sweep enqueues the task
again after ``KUEUE_TES_RESUBMIT_GRACE_SECONDS``. Permanent errors end the task in SYSTEM_ERROR
with the reason in its system logs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from app.models import State
from app.store.base import TaskStore
from worker import admission, context, jobspec, observer, states
from worker.cluster.base import (
    QUEUE_NAME,
    Cluster,
    PermanentError,
    PriorityClasses,
    TransientError,
)
from worker.watcher import now

log = logging.getLogger(__name__)
Json = dict[str, Any]
T = TypeVar("T")

#: Pauses before each new try of a cluster call that failed transiently (seconds): an API
#: server that is restarting, throttling (429) or briefly unreachable gets about 15 s.
RETRY_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)


def _retrying(task_id: str, what: str, call: Callable[[], T]) -> T:
    """Return ``call()``, tried again after each of RETRY_DELAYS while it fails transiently."""
    for delay in RETRY_DELAYS:
        try:
            return call()
        except TransientError as exc:
            log.warning("task %s: %s failed for now (%s); again in %g s", task_id, what, exc, delay)
            time.sleep(delay)
    return call()


def _end_attempt(store: TaskStore, task_id: str, reason: str) -> None:
    """End the task's latest attempt (or its first, if none began) with ``reason`` logged."""
    record = store.get(task_id)
    if record is None:
        return
    logs = record.doc.get("logs") or []
    if not logs:
        store.append_attempt(
            task_id, {"logs": [], "outputs": [], "system_logs": [reason], "end_time": now()}
        )
        return
    current = list(logs[-1].get("system_logs") or [])
    merged = states.merge_logs(current, [reason]) or current  # the watcher may have said it
    store.update_attempt(task_id, len(logs) - 1, {"system_logs": merged, "end_time": now()})


def _fail(store: TaskStore, task_id: str, reason: str) -> str:
    _end_attempt(store, task_id, reason)
    store.transition(task_id, State.SYSTEM_ERROR)
    log.warning("task %s: SYSTEM_ERROR: %s", task_id, reason)
    return "failed"


def submit(*task_ids: str) -> str:
    """Create each task's ConfigMap and suspended Job; return what happened (the RQ result).

    One RQ job carries the tasks that CreateTask stored together (app.intake). Each task is
    submitted on its own: a task that fails does not hold back the others. Those that failed
    transiently are tried again, together, after each pause of :data:`RETRY_DELAYS`; then the
    job raises the first failure (a transient one leaves its task QUEUED for the watcher's
    sweep).
    """
    outcomes: dict[str, str] = {}
    failures: dict[str, Exception] = {}
    pending = list(dict.fromkeys(task_ids))
    for delay in (*RETRY_DELAYS, None):
        for task_id in pending:
            try:
                outcomes[task_id] = _submit(task_id)
                failures.pop(task_id, None)
            except Exception as exc:
                outcomes[task_id], failures[task_id] = "error", exc
        pending = [t for t, why in failures.items() if isinstance(why, TransientError)]
        if not pending or delay is None:
            break
        log.warning(
            "task %s: submit failed for now (%s); again in %g s",
            ", ".join(pending), failures[pending[0]], delay,
        )  # fmt: skip
        time.sleep(delay)
    for task_id, why in failures.items():
        log.warning("task %s: submit failed: %s", task_id, why)
        if isinstance(why, TransientError):
            observer.submission_failed("transient")
    if len(task_ids) == 1 and failures:
        raise next(iter(failures.values()))
    if failures:
        first = next(iter(failures.values()))
        said = " ".join(f"{task_id}:{outcome}" for task_id, outcome in outcomes.items())
        first.add_note(f"outcomes of the job's {len(task_ids)} tasks: {said}")
        raise first
    if len(task_ids) == 1:
        return outcomes[task_ids[0]]
    return " ".join(f"{task_id}:{outcome}" for task_id, outcome in outcomes.items())


def _submit(task_id: str) -> str:
    """Submit one task (see :func:`submit`)."""
    ctx = context.current()
    record = ctx.store.get(task_id)
    if record is None:
        log.warning("task %s: submit found no such task; nothing to do", task_id)
        return "missing"
    if record.state is not State.QUEUED:
        log.info("task %s: submit skipped, the task is %s", task_id, record.state.value)
        return f"skipped:{record.state.value}"
    if ctx.cluster is None:
        log.warning("task %s: no cluster backend is configured, so the task stays QUEUED", task_id)
        return "queued:no-backend"
    try:
        configmap = jobspec.build_configmap(record.doc, ctx.settings)
        job = jobspec.build_job(record.doc, ctx.settings, os.environ)
    except ValueError as exc:
        observer.submission_failed("invalid_task")
        return _fail(ctx.store, task_id, f"the task cannot be turned into a pod: {exc}")
    queue = job["metadata"]["labels"][QUEUE_NAME]
    missing = _missing_class(ctx.cluster, task_id, job, record.doc)
    if missing is not None:
        observer.submission_failed("invalid_task")
        return _fail(ctx.store, task_id, missing)
    if not record.doc.get("logs"):
        ctx.store.append_attempt(
            task_id,
            {"logs": [], "outputs": [], "system_logs": [f"submitted to LocalQueue {queue}"]},
        )
    try:
        ctx.cluster.submit(task_id, configmap, job)
    except PermanentError as exc:
        observer.submission_failed("refused")
        return _fail(ctx.store, task_id, f"the cluster refused the task's Job: {exc}")
    observer.submitted(queue)
    log.info(
        "task %s: Job %s submitted to LocalQueue %s", task_id, jobspec.job_name(task_id), queue
    )
    return "submitted"


def _missing_class(cluster: Cluster, task_id: str, job: Json, doc: Json) -> str | None:
    """Return why the task cannot be queued if its WorkloadPriorityClass does not exist.

    Released Kueue (v0.15 to v0.19) creates no Workload for such a Job and says nothing, so the
    task would wait for ever: ask the cluster first. A class found is marked on the Job, so the
    watcher knows that a missing Workload has another cause (worker/admission.py).
    """
    meta = job["metadata"]
    name = meta["labels"].get(admission.PRIORITY_CLASS)
    if name is None or not isinstance(cluster, PriorityClasses):
        return None
    try:
        found = cluster.priority_class_exists(name)
    except PermanentError as exc:
        # Missing RBAC must not stop tasks: the watcher's no-Workload grace is the backstop.
        log.warning("task %s: cannot check WorkloadPriorityClass %s: %s", task_id, name, exc)
        return None
    if found:
        meta.setdefault("annotations", {})[admission.PRIORITY_CHECKED] = name
        return None
    params = (doc.get("resources") or {}).get("backend_parameters") or {}
    ask = "ask for an existing one (backend_parameters.priority_class) or for it to be created"
    if params.get("priority_class") != name:
        ask = (
            "it is the class of preemptible tasks (KUEUE_TES_PREEMPTIBLE_PRIORITY_CLASS): the "
            "operator must create it"
        )
    return (
        f"WorkloadPriorityClass {name} does not exist, so Kueue would never queue the task; {ask}"
    )


def cancel(task_id: str) -> str:
    """Delete the task's Job; the task is CANCELED once nothing of it runs."""
    ctx = context.current()
    record = ctx.store.get(task_id)
    if record is None:
        log.warning("task %s: cancel found no such task; nothing to do", task_id)
        return "missing"
    if record.state is not State.CANCELING:
        log.info("task %s: cancel skipped, the task is %s", task_id, record.state.value)
        return f"skipped:{record.state.value}"
    if ctx.cluster is not None:
        cluster = ctx.cluster
        _retrying(task_id, "cancel", lambda: cluster.delete(task_id))
        if _retrying(task_id, "cancel", lambda: cluster.exists(task_id)):
            return "deleting"  # the watcher sees the pod go and finishes the cancel
    if record.doc.get("logs"):
        _end_attempt(ctx.store, task_id, states.CANCELED_NOTE)
    if ctx.store.transition(task_id, State.CANCELED, expect=[State.CANCELING]):
        log.info("task %s: CANCELED", task_id)
        return "canceled"
    return "raced"
