"""The watcher: applies cluster observations to the store through compare-and-set (section 11).

It is level-triggered: every observation is judged against the task's stored state, so it can
be stopped at any point and restarted (a resync rebuilds what it knew) without losing or
repeating a transition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from app import ids
from app.models import State
from app.store.base import TERMINAL, TaskRecord, TaskStore
from worker import states
from worker.cluster.base import Cluster, ClusterError, Observation

log = logging.getLogger(__name__)

RUNTIME_NOTE = "kueue-tes/runtime-note"
REPORT_LIMIT = 8 * 1024 * 1024
Json = dict[str, Any]


def now() -> str:
    """Return the current UTC time as RFC 3339."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Watcher:
    """Turns what the cluster reports into task state, logs and clean-up."""

    def __init__(
        self,
        store: TaskStore,
        cluster: Cluster,
        resubmit: Callable[[str], None] | None = None,
        grace_seconds: float = 30.0,
    ) -> None:
        """Watch ``cluster`` for ``store``; ``resubmit`` re-enqueues lost submissions."""
        self.store, self.cluster, self.resubmit = store, cluster, resubmit
        self.grace_seconds = grace_seconds
        self.objects: dict[str, states.Objects] = {}
        self._stop = threading.Event()

    # -- observations -----------------------------------------------------------------------

    def apply(self, obs: Observation) -> None:
        """Record one observation and reconcile its task."""
        current = self.objects.get(obs.task_id, states.Objects())
        current = replace(current, **{obs.kind.lower(): obs.obj})
        if current.gone and current.workload is None:
            self.objects.pop(obs.task_id, None)
        else:
            self.objects[obs.task_id] = current
        try:
            self.reconcile(obs.task_id, current)
        except ClusterError as exc:
            log.warning("task %s: cluster error while reconciling: %s", obs.task_id, exc)

    def reconcile(self, task_id: str, objects: states.Objects) -> None:
        """Bring the stored task in line with ``objects``."""
        record = self.store.get(task_id)
        if record is None or record.state in TERMINAL:
            if not objects.gone:
                # Ours but finished (or unknown): the store has the record; remove the rest.
                self.cluster.delete(task_id)
            return
        decision = states.decide(record.state, objects)
        index = self._attempt(record)
        notes = list(decision.system_logs)
        note = ((objects.pod or {}).get("metadata") or {}).get("annotations", {}).get(RUNTIME_NOTE)
        if note:
            notes.insert(0, str(note))
        if decision.finished:
            self._finish(record, index, decision, notes)
        elif decision.requeued:
            self._requeue(record, index, notes)
        else:
            self._progress(record, index, decision, notes)

    def _attempt(self, record: TaskRecord) -> int:
        logs = record.doc.get("logs") or []
        if logs:
            return len(logs) - 1
        index = self.store.append_attempt(record.id, {"logs": [], "outputs": []})
        record.doc = dict(
            record.doc, logs=[{"logs": [], "outputs": [], "system_logs": record.notes}]
        )
        return index

    @staticmethod
    def _merged(record: TaskRecord, index: int, notes: list[str]) -> list[str] | None:
        current = list(record.doc["logs"][index].get("system_logs") or [])
        fresh = [n for n in notes if n not in current]
        return current + fresh if fresh else None

    def _progress(
        self, record: TaskRecord, index: int, decision: states.Decision, notes: list[str]
    ) -> None:
        changes: Json = {}
        merged = self._merged(record, index, notes)
        if merged is not None:
            changes["system_logs"] = merged
        attempt = record.doc["logs"][index]
        if decision.state in (State.INITIALIZING, State.RUNNING) and not attempt.get("start_time"):
            changes["start_time"] = now()
        if decision.executor_logs and decision.executor_logs != attempt.get("logs"):
            changes["logs"] = decision.executor_logs
        if changes:
            self.store.update_attempt(record.id, index, changes)
        target = decision.state
        if target is not None and target is not record.state:
            if target is State.RUNNING and record.state is State.QUEUED:
                self.store.transition(record.id, State.INITIALIZING)
            if self.store.transition(record.id, target):
                log.info("task %s: %s", record.id, target.value)

    def _finish(
        self, record: TaskRecord, index: int, decision: states.Decision, notes: list[str]
    ) -> None:
        final = decision.state or State.SYSTEM_ERROR
        changes: Json = {"end_time": now()}
        if final is not State.CANCELED:
            report = states.read_report(self._sequencer_log(record.id))
            final = report.verdict or final
            notes = notes + report.system_logs
            changes["logs"] = report.executors or decision.executor_logs or []
            changes["outputs"] = report.outputs
        else:
            notes = [*notes, "canceled; the task pod is gone"]
        merged = self._merged(record, index, notes)
        if merged is not None:
            changes["system_logs"] = merged
        # Logs first, then the state: a client that sees the final state sees its logs.
        self.store.update_attempt(record.id, index, changes)
        if self.store.transition(record.id, final):
            log.info("task %s: %s", record.id, final.value)
        if final is not State.CANCELED:
            self.cluster.delete(record.id)

    def _requeue(self, record: TaskRecord, index: int, notes: list[str]) -> None:
        changes: Json = {"end_time": now()}
        merged = self._merged(record, index, notes)
        if merged is not None:
            changes["system_logs"] = merged
        self.store.update_attempt(record.id, index, changes)
        if self.store.transition(record.id, State.QUEUED):
            self.store.append_attempt(record.id, {"logs": [], "outputs": []})
            log.info("task %s: evicted, QUEUED again", record.id)

    def _sequencer_log(self, task_id: str) -> str:
        try:
            return self.cluster.read_log(task_id, states.SEQUENCER, REPORT_LIMIT)
        except ClusterError as exc:
            log.warning("task %s: cannot read the sequencer's report: %s", task_id, exc)
            return ""

    # -- sweeps -----------------------------------------------------------------------------

    def resync(self) -> None:
        """Rebuild what the cluster shows from a full snapshot and reconcile every task."""
        seen: dict[str, states.Objects] = {}
        for obs in self.cluster.snapshot():
            current = seen.get(obs.task_id, states.Objects())
            seen[obs.task_id] = replace(current, **{obs.kind.lower(): obs.obj})
        self.objects = seen
        for task_id, objects in seen.items():
            try:
                self.reconcile(task_id, objects)
            except ClusterError as exc:
                log.warning("task %s: cluster error on resync: %s", task_id, exc)
        self.sweep()

    def sweep(self) -> None:
        """Finish cancels whose pod is gone, re-enqueue lost submissions, fail vanished Jobs."""
        for task_id in self.store.ids_in_states([State.CANCELING]):
            if task_id not in self.objects and not self.cluster.exists(task_id):
                self.reconcile(task_id, states.Objects())
        cutoff = time.time() - self.grace_seconds
        for task_id in self.store.ids_in_states([State.QUEUED]):
            if task_id in self.objects or ids.created_at(task_id) > cutoff:
                continue
            if self.resubmit is not None and not self.cluster.exists(task_id):
                log.info("task %s: QUEUED with no Job; submitting it again", task_id)
                self.resubmit(task_id)
        for task_id in self.store.ids_in_states([State.INITIALIZING, State.RUNNING]):
            if task_id not in self.objects and not self.cluster.exists(task_id):
                self._vanished(task_id)

    def _vanished(self, task_id: str) -> None:
        record = self.store.get(task_id)
        if record is None or record.state in TERMINAL:
            return
        index = self._attempt(record)
        merged = self._merged(record, index, ["the task's Job disappeared from the cluster"])
        self.store.update_attempt(task_id, index, {"end_time": now(), "system_logs": merged or []})
        self.store.transition(task_id, State.SYSTEM_ERROR)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, resync_seconds: float = 30.0, poll_seconds: float = 1.0) -> None:
        """Watch until stop(); resync in full every ``resync_seconds``."""
        last = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last > resync_seconds:
                    self.resync()
                    last = time.monotonic()
                for obs in self.cluster.watch(poll_seconds):
                    self.apply(obs)
                    if self._stop.is_set():
                        break
            except Exception:
                # One bad observation must not stop the watcher; the next resync repairs.
                log.exception("watcher iteration failed; resyncing")
                last = 0.0
                self._stop.wait(poll_seconds)

    def stop(self) -> None:
        """Ask run() to return."""
        self._stop.set()
