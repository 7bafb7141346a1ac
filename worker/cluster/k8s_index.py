"""Which task each Kubernetes object belongs to (pure bookkeeping, shared by the watch threads).

Jobs and Pods carry our ``kueue-tes/task-id`` label. Workloads and Events are not ours, so they
are matched through the Job they concern: a Workload carries the owning Job's uid in the
``kueue.x-k8s.io/job-uid`` label (and an owner reference to it), an Event names the Job in its
``involvedObject`` (uid and name). A Workload or an Event seen before its Job is parked and
reported as soon as the Job is seen. An Event is forgotten with its Job: Events outlive what they
are about (an hour by default), and a stale one must not bring back a task that is done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from worker import jobspec
from worker.cluster.base import TASK_ID, Kind, Observation

Json = dict[str, Any]

#: The label Kueue puts on a Workload: the uid of the Job it was made for.
JOB_UID = "kueue.x-k8s.io/job-uid"
#: The kinds matched to their task through a Job's uid.
DEPENDENTS: tuple[Kind, ...] = ("Workload", "Event")
#: Every Job of ours is named so (``tes-<task id>``); Events about other Jobs are not parked.
JOB_PREFIX = jobspec.job_name("")


def _meta(obj: Json) -> Json:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def name_of(obj: Json) -> str:
    """Return an object's name ("" if it has none)."""
    return str(_meta(obj).get("name") or "")


def labelled_task(obj: Json) -> str | None:
    """Return the task id in an object's ``kueue-tes/task-id`` label."""
    task = (_meta(obj).get("labels") or {}).get(TASK_ID)
    return str(task) if task else None


def job_uid(workload: Json) -> str | None:
    """Return the uid of the Job a Workload was made for: its label, else its owner reference."""
    meta = _meta(workload)
    uid = (meta.get("labels") or {}).get(JOB_UID)
    if uid:
        return str(uid)
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == "Job" and str(ref.get("apiVersion", "")).startswith("batch/"):
            return str(ref.get("uid") or "") or None
    return None


def involved_job(event: Json) -> tuple[str | None, str]:
    """Return the uid (None if absent) and the name of the Job an Event is about ("" if none)."""
    ref = event.get("involvedObject")
    if not isinstance(ref, dict) or ref.get("kind") != "Job":
        return None, ""
    return (str(ref["uid"]) if ref.get("uid") else None), str(ref.get("name") or "")


class Index:
    """Tasks of the objects reported so far; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uid_task: dict[str, str] = {}
        self._job_uid: dict[str, str] = {}  # Job name → uid, to forget the uid with the Job
        # Workloads and Events waiting for their Job: kind → Job uid → objects by name.
        self._parked: dict[Kind, dict[str, dict[str, Json]]] = {k: {} for k in DEPENDENTS}
        self._event_job: dict[str, str] = {}  # Event name → its Job's uid, to forget it with it
        kinds: tuple[Kind, ...] = ("Job", "Pod", "Workload", "Event")
        self._known: dict[Kind, dict[str, str]] = {kind: {} for kind in kinds}

    def snapshot(self, listed: Mapping[Kind, Iterable[Json]]) -> list[Observation]:
        """Map one full listing per kind to observations; what no known Job explains is left out.

        An Event counts only if its Job is in this listing: one about a Job that is gone must
        not make a task look present (Events outlive their Jobs).
        """
        out: list[Observation] = []
        jobs, pods = listed.get("Job", ()), listed.get("Pod", ())
        workloads, events = listed.get("Workload", ()), listed.get("Event", ())
        with self._lock:
            uids: set[str] = set()
            for job in jobs:
                task = labelled_task(job)
                if task is None:
                    continue
                if (uid := self._learn(task, job)) is not None:
                    uids.add(uid)
                out.append(Observation(task, "Job", name_of(job), job))
            for pod in pods:
                task = labelled_task(pod)
                if task is not None:
                    out.append(Observation(task, "Pod", name_of(pod), pod))
            for workload in workloads:
                task = self._dependent_task("Workload", workload)
                if task is not None:
                    out.append(Observation(task, "Workload", name_of(workload), workload))
            for event in events:
                uid = self._event_uid(event)
                if uid is not None and uid in uids:
                    out.append(Observation(self._uid_task[uid], "Event", name_of(event), event))
        return out

    def update(self, kind: Kind, obj: Json) -> list[Observation]:
        """Record that ``obj`` exists as shown; return what to report."""
        with self._lock:
            return self._update(kind, obj)

    def remove(self, kind: Kind, obj: Json) -> list[Observation]:
        """Record that ``obj`` was deleted; return the deletion to report, if it was ours."""
        with self._lock:
            return self._remove(kind, obj)

    def relisted(self, kind: Kind, items: Iterable[Json]) -> list[Observation]:
        """Replace what is known of ``kind`` by a fresh listing; report it and what vanished."""
        with self._lock:
            before = self._known[kind]
            self._known[kind] = {}
            if kind in self._parked:
                self._parked[kind] = {}
            out: list[Observation] = []
            for item in items:
                out.extend(self._update(kind, item))
            for name, task in before.items():
                if name not in self._known[kind]:
                    if kind == "Job":
                        self._forget(name)
                    elif kind == "Event":
                        self._event_job.pop(name, None)
                    out.append(Observation(task, kind, name, None))
            return out

    # -- under the lock -----------------------------------------------------------------------

    def _learn(self, task: str, job: Json) -> str | None:
        uid = _meta(job).get("uid")
        if not uid:
            return None
        self._uid_task[str(uid)] = task
        self._job_uid[name_of(job)] = str(uid)
        return str(uid)

    def _forget(self, job_name: str) -> None:
        uid = self._job_uid.pop(job_name, None)
        if uid is None:
            return
        self._uid_task.pop(uid, None)
        for parked in self._parked.values():
            parked.pop(uid, None)
        for event in [name for name, job in self._event_job.items() if job == uid]:
            del self._event_job[event]
            self._known["Event"].pop(event, None)

    def _event_uid(self, event: Json) -> str | None:
        uid, name = involved_job(event)
        return uid or self._job_uid.get(name)

    def _owner_uid(self, kind: Kind, obj: Json) -> str | None:
        return job_uid(obj) if kind == "Workload" else self._event_uid(obj)

    def _dependent_task(self, kind: Kind, obj: Json) -> str | None:
        uid = self._owner_uid(kind, obj)
        if uid is not None and uid in self._uid_task:
            return self._uid_task[uid]
        # Its Job may be gone already (deleted in the background) while the Workload lingers.
        return self._known[kind].get(name_of(obj))

    def _dependent(self, kind: Kind, obj: Json) -> list[Observation]:
        name, uid = name_of(obj), self._owner_uid(kind, obj)
        task = self._dependent_task(kind, obj)
        if task is None:
            ours = kind == "Workload" or involved_job(obj)[1].startswith(JOB_PREFIX)
            if uid is not None and ours:
                self._parked[kind].setdefault(uid, {})[name] = obj
            return []
        self._known[kind][name] = task
        if kind == "Event" and uid is not None:
            self._event_job[name] = uid
        return [Observation(task, kind, name, obj)]

    def _update(self, kind: Kind, obj: Json) -> list[Observation]:
        if kind in DEPENDENTS:
            return self._dependent(kind, obj)
        name, task = name_of(obj), labelled_task(obj)
        if task is None:
            return []
        self._known[kind][name] = task
        out = [Observation(task, kind, name, obj)]
        uid = self._learn(task, obj) if kind == "Job" else None
        if uid is not None:
            for dependent in DEPENDENTS:
                for waiting in self._parked[dependent].pop(uid, {}).values():
                    out.extend(self._dependent(dependent, waiting))
        return out

    def _remove(self, kind: Kind, obj: Json) -> list[Observation]:
        name = name_of(obj)
        task = self._known[kind].pop(name, None)
        if kind in DEPENDENTS:
            uid = self._owner_uid(kind, obj)
            if uid is not None:
                waiting = self._parked[kind].get(uid)
                if waiting is not None:
                    waiting.pop(name, None)
                    if not waiting:
                        del self._parked[kind][uid]
                if task is None:
                    task = self._uid_task.get(uid)
            if kind == "Event":
                self._event_job.pop(name, None)
        else:
            task = task or labelled_task(obj)
        if kind == "Job":
            self._forget(name)
        return [Observation(task, kind, name, None)] if task else []
