"""The watcher: applies cluster observations to the store through compare-and-set (section 11).

It is level-triggered: every observation is judged against the task's stored state, so it can
be stopped at any point and restarted (a resync rebuilds what it knew) without losing or
repeating a transition.

Attempts (TES TaskLogs), one per admission, are kept as worker/attempts.py describes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from app import ids
from app.models import State
from app.store.base import TERMINAL, TaskRecord, TaskStore
from worker import attempts, pods, states
from worker.attempts import ACTIVE as _ACTIVE
from worker.attempts import name as _name
from worker.attempts import now
from worker.attempts import since as _since
from worker.cluster.base import Cluster, ClusterError, Observation
from worker.observer import Observer
from worker.progress import Progress
from worker.report import Report, read_report

log = logging.getLogger(__name__)

RUNTIME_NOTE = "kueue-tes/runtime-note"
REPORT_LIMIT = 8 * 1024 * 1024
TAIL_LIMIT = 64 * 1024  # an executor's log tail, read only where the report has none
Json = dict[str, Any]
__all__ = ["Watcher", "now"]  # (now: worker/jobs.py)


def _with(objects: states.Objects, obs: Observation) -> states.Objects:
    kind: str = obs.kind
    if kind == "Event":  # Warning Events about the Job, where the cluster reports them
        kept = tuple(e for e in objects.events if _name(e) != obs.name)
        return replace(objects, events=kept + ((obs.obj,) if obs.obj is not None else ()))
    if kind == "Pod":  # every live pod: reconcile() picks the current attempt's
        return pods.observed(objects, obs.name, obs.obj)
    changes: Json = {kind.lower(): obs.obj}
    return replace(objects, **changes)


class Watcher:
    """Turns what the cluster reports into task state, logs and clean-up."""

    def __init__(
        self,
        store: TaskStore,
        cluster: Cluster,
        resubmit: Callable[[str], None] | None = None,
        grace_seconds: float = 30.0,
        *,
        recancel: Callable[[str], None] | None = None,
        image_pull_grace_seconds: float = 300.0,
        no_workload_seconds: float = 120.0,
        pod_create_grace_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
        progress_seconds: float = 5.0,
        running_progress_seconds: float = 60.0,
        observer: Observer | None = None,
    ) -> None:
        """Watch ``cluster`` for ``store``; ``resubmit`` and ``recancel`` re-enqueue lost work."""
        self.store, self.cluster = store, cluster
        self.observer = observer or Observer()
        self.resubmit, self.recancel = resubmit, recancel
        self.grace_seconds = grace_seconds
        self.image_pull_grace = image_pull_grace_seconds
        self.no_workload_grace = no_workload_seconds
        self.pod_create_grace = pod_create_grace_seconds
        self.clock = clock
        self.objects: dict[str, states.Objects] = {}
        self.first_seen: dict[str, dict[str, float]] = {}  # task → wait → when first seen
        self._deleted: dict[str, float] = {}  # task → when we asked to delete its Job
        self._canceling: dict[str, float] = {}  # task → when its cancel was last (re)enqueued
        self._stop = threading.Event()

        def read(task_id: str, pod: str) -> str:
            return self._read(task_id, states.SEQUENCER, REPORT_LIMIT, pod or None)

        self.progress = Progress(read, clock, progress_seconds, running_progress_seconds)

    # -- observations -----------------------------------------------------------------------

    def apply(self, obs: Observation) -> None:
        """Record one observation and reconcile its task."""
        current = _with(self.objects.get(obs.task_id, states.Objects()), obs)
        if current.gone and current.workload is None:
            self._forget(obs.task_id)
        else:
            self.objects[obs.task_id] = current
        try:
            self.reconcile(obs.task_id, current)
        except ClusterError as exc:
            log.warning("task %s: cluster error while reconciling: %s", obs.task_id, exc)
        self.observer.applied()

    def _forget(self, task_id: str) -> None:
        self.progress.forget(task_id)
        self.objects.pop(task_id, None)
        self.first_seen.pop(task_id, None)
        self._deleted.pop(task_id, None)

    def reconcile(self, task_id: str, objects: states.Objects) -> None:
        """Bring the stored task in line with ``objects``."""
        record = self.store.get(task_id)
        if record is None or record.state in TERMINAL:
            if not objects.gone:
                # Ours but finished (or unknown): the store has the record; remove the rest.
                self._delete(task_id)
            return
        record, index = attempts.ensure(self.store, record)
        # Pods of ended attempts linger while they terminate; the current attempt's pod is not
        # always the one reported last (worker/pods.py).
        objects = pods.for_attempt(objects, record.doc["logs"])
        pod = _name(objects.pod)
        objects = replace(objects, report=self.progress.report(task_id, record.state, objects))
        decision = states.decide(record.state, objects, self._timing(task_id, objects))
        record, index = attempts.current(
            self.store, record, index, pod, decision, self._pod_replaced
        )
        note = ((objects.pod or {}).get("metadata") or {}).get("annotations", {}).get(RUNTIME_NOTE)
        if note:
            decision.system_logs.insert(0, str(note))
        if decision.finished:
            self._finish(record, index, decision, objects)
        elif decision.requeued:
            self._requeue(record, index, decision, objects)
        else:
            self._progress(record, index, decision, objects)

    def _timing(self, task_id: str, objects: states.Objects) -> states.Timing:
        at = self.clock()
        seen = self.first_seen.get(task_id, {})
        since = {key: seen.get(key, at) for key in states.waits(objects)}
        if since:
            self.first_seen[task_id] = since
        else:
            self.first_seen.pop(task_id, None)
        return states.Timing(
            at, since, self.image_pull_grace, self.no_workload_grace, self.pod_create_grace
        )

    def _pod_replaced(self, record: TaskRecord) -> None:
        self.observer.evicted(record, "PodReplaced")

    def _progress(
        self, record: TaskRecord, index: int, decision: states.Decision, objects: states.Objects
    ) -> None:
        attempt = record.doc["logs"][index]
        changes: Json = {}
        merged = states.merge_logs(attempt.get("system_logs") or [], decision.system_logs)
        if merged is not None:
            changes["system_logs"] = merged
        if decision.state in _ACTIVE and not attempt.get("start_time"):
            changes["start_time"] = _since(objects.workload, "Admitted")
        pod, meta = _name(objects.pod), attempt.get("metadata") or {}
        if pod is not None and not attempt.get("end_time") and meta.get("pod") != pod:
            changes["metadata"] = {**meta, "pod": pod}
        if decision.executor_logs and decision.executor_logs != attempt.get("logs"):
            changes["logs"] = decision.executor_logs
        if changes:
            self.store.update_attempt(record.id, index, changes)
        self.observer.admitted(record, index, changes.get("start_time"))
        target = decision.state
        if target is not None and target is not record.state:
            if target is State.RUNNING and record.state is State.QUEUED:
                self.store.transition(record.id, State.INITIALIZING)
            if self.store.transition(record.id, target):
                log.info("task %s: %s", record.id, target.value)

    def _finish(
        self, record: TaskRecord, index: int, decision: states.Decision, objects: states.Objects
    ) -> None:
        final = decision.state or State.SYSTEM_ERROR
        self.progress.forget(record.id)  # ended: nothing more to read until the Job is gone
        attempt = record.doc["logs"][index]
        changes: Json = {} if attempt.get("end_time") else {"end_time": now()}
        pod, meta = _name(objects.pod), attempt.get("metadata") or {}
        if pod is not None and meta.get("pod") != pod:
            changes["metadata"] = {**meta, "pod": pod}
        notes = list(decision.system_logs)
        if final is State.CANCELED:
            notes.append(states.CANCELED_NOTE)
        else:
            log_text = self._read(record.id, states.SEQUENCER, REPORT_LIMIT, pod) if pod else ""
            report = read_report(log_text)
            if decision.trust_report and report.verdict is not None:
                final = report.verdict
            notes = notes + report.system_logs
            executors = self._executor_logs(record.id, report, decision.executor_logs, pod)
            if executors:
                changes["logs"] = executors
            if report.outputs:
                changes["outputs"] = report.outputs
        merged = states.merge_logs(attempt.get("system_logs") or [], notes)
        if merged is not None:
            changes["system_logs"] = merged
        # Logs first, then the state: a client that sees the final state sees its logs.
        if changes:
            self.store.update_attempt(record.id, index, changes)
        if self.store.transition(record.id, final):
            log.info("task %s: %s", record.id, final.value)
            self.observer.finished(record, {**attempt, **changes}, final)
        if final is not State.CANCELED:
            self._delete(record.id)

    def _executor_logs(
        self, task_id: str, report: Report, from_pod: list[Json] | None, pod: str | None
    ) -> list[Json]:
        def tail(i: int) -> str:
            return self._read(task_id, f"executor-{i}", TAIL_LIMIT, pod)

        return attempts.executor_logs(report, from_pod, tail if pod is not None else None)

    def _requeue(
        self, record: TaskRecord, index: int, decision: states.Decision, objects: states.Objects
    ) -> None:
        attempt = record.doc["logs"][index]
        meta = attempt.get("metadata") or {}
        changes: Json = {}
        started = attempt.get("start_time") or record.state is not State.QUEUED
        if started and not attempt.get("end_time"):
            evicted = states.condition(objects.workload, "Evicted") or {}
            changes["end_time"] = _since(objects.workload, "Evicted")
            changes["metadata"] = {**meta, "evicted": str(evicted.get("reason") or "Evicted")}
            # What the evicted pod got done is in its sequencer's report: read it now, once.
            pod = _name(objects.pod)
            if pod is not None and "pod" not in meta:
                changes["metadata"]["pod"] = pod  # so that it counts as old once it lingers
            text = self._read(record.id, states.SEQUENCER, REPORT_LIMIT, pod) if pod else ""
            report = read_report(text)
            from_pod = states.executor_logs(objects.pod)
            if logs := self._executor_logs(record.id, report, from_pod, pod):
                changes["logs"] = logs
            decision.system_logs[:0] = report.system_logs
            self.observer.evicted(record, evicted.get("reason"))
        merged = states.merge_logs(attempt.get("system_logs") or [], decision.system_logs)
        if merged is not None:
            changes["system_logs"] = merged
        if changes:
            self.store.update_attempt(record.id, index, changes)
        if self.store.transition(record.id, State.QUEUED):
            log.info("task %s: evicted, QUEUED again", record.id)

    def _read(self, task_id: str, container: str, limit: int, pod: str | None = None) -> str:
        try:
            return self.cluster.read_log(task_id, container, limit, pod=pod)
        except ClusterError as exc:
            log.warning("task %s: cannot read the log of %s: %s", task_id, container, exc)
            return ""

    def _delete(self, task_id: str) -> None:
        # Once per Job: its deletion shows up as observations that must not delete it again.
        asked = self._deleted.get(task_id)
        if asked is not None and time.monotonic() - asked < self.grace_seconds:
            return
        self.cluster.delete(task_id)
        self._deleted[task_id] = time.monotonic()
        log.info("task %s: final state stored; its Job is deleted", task_id)

    # -- sweeps -----------------------------------------------------------------------------

    def resync(self) -> None:
        """Rebuild what the cluster shows from a full snapshot and reconcile every task."""
        seen: dict[str, states.Objects] = {}
        for obs in self.cluster.snapshot():
            seen[obs.task_id] = _with(seen.get(obs.task_id, states.Objects()), obs)
        for task_id in set(self.objects) - set(seen):
            self._forget(task_id)
        self.objects = seen
        for task_id, objects in seen.items():
            try:
                self.reconcile(task_id, objects)
            except ClusterError as exc:
                log.warning("task %s: cluster error on resync: %s", task_id, exc)
        self.sweep()

    def sweep(self) -> None:
        """Finish or re-send cancels, re-enqueue lost submissions, fail vanished Jobs."""
        at = self.clock()
        canceling = self.store.ids_in_states([State.CANCELING])
        self._canceling = {task_id: self._canceling.get(task_id, at) for task_id in canceling}
        for task_id in canceling:
            if task_id not in self.objects and not self.cluster.exists(task_id):
                self.reconcile(task_id, states.Objects())
                continue
            due = at - self._canceling[task_id] >= self.grace_seconds
            job = task_id not in self.objects or self.objects[task_id].job is not None
            if self.recancel is not None and due and job:
                log.info("task %s: CANCELING and its Job still exists; cancel again", task_id)
                self.recancel(task_id)
                self._canceling[task_id] = at
        cutoff = at - self.grace_seconds
        for task_id in self.store.ids_in_states([State.QUEUED]):
            if task_id in self.objects or ids.created_at(task_id) > cutoff:
                continue
            if self.resubmit is not None and not self.cluster.exists(task_id):
                log.info("task %s: QUEUED with no Job; submitting it again", task_id)
                self.resubmit(task_id)
        for task_id in self.store.ids_in_states(_ACTIVE):
            if task_id not in self.objects and not self.cluster.exists(task_id):
                self._vanished(task_id)
        self.store.render_pending(5000)  # tasks an older release stored (docs/upgrade.md)

    def _vanished(self, task_id: str) -> None:
        attempts.vanished(self.store, task_id)

    # -- the loop ---------------------------------------------------------------------------

    def run(
        self,
        resync_seconds: float = 30.0,
        poll_seconds: float = 1.0,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        """Watch until stop(); resync in full every ``resync_seconds``; work only as ``leader``."""
        last_resync = last_sweep = float("-inf")
        leading = leader is None
        while not self._stop.is_set():
            if leader is not None and not leader():
                if leading:
                    log.warning("watcher: lost the lease; standing by")
                leading = False
                self._stop.wait(poll_seconds)
                continue
            if not leading:
                # What happened while another watcher (or none) led is only in a full resync.
                log.info("watcher: holding the lease; resyncing")
                leading, last_resync = True, float("-inf")
            try:
                if time.monotonic() - last_resync >= resync_seconds:
                    self.resync()
                    last_resync = last_sweep = time.monotonic()
                elif time.monotonic() - last_sweep >= min(resync_seconds, self.grace_seconds):
                    self.sweep()
                    last_sweep = time.monotonic()
                for obs in self.cluster.watch(self.progress.wait(poll_seconds)):
                    if self._stop.is_set() or (leader is not None and not leader()):
                        break
                    self.apply(obs)
                self.read_progress()
                self.observer.applied()  # nothing more pending: the watcher is current
            except Exception as exc:
                # One bad observation must not stop the watcher; the next resync repairs. A
                # cluster error is expected now and then: no traceback for it.
                report = log.warning if isinstance(exc, ClusterError) else log.exception
                report("watcher iteration failed (%s); resyncing", exc)
                last_resync = float("-inf")
                self._stop.wait(poll_seconds)

    def read_progress(self) -> None:
        """Reconcile the tasks whose sequencer report is due to be read again (no event comes)."""
        for task_id in self.progress.due():
            if task_id in self.objects:
                self.reconcile(task_id, self.objects[task_id])

    def stop(self) -> None:
        """Ask run() to return."""
        self._stop.set()
