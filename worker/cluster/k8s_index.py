"""Which task each Kubernetes object belongs to (pure bookkeeping, shared by the watch threads).

Jobs and Pods carry our ``kueue-tes/task-id`` label. Workloads are Kueue's: they carry the
owning Job's uid in the ``kueue.x-k8s.io/job-uid`` label (and an owner reference to it), so a
Workload is matched to its task through the Job with that uid. A Workload seen before its Job is
parked and reported as soon as the Job is seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from worker.cluster.base import TASK_ID, Kind, Observation

Json = dict[str, Any]

#: The label Kueue puts on a Workload: the uid of the Job it was made for.
JOB_UID = "kueue.x-k8s.io/job-uid"


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


class Index:
    """Tasks of the objects reported so far; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uid_task: dict[str, str] = {}
        self._job_uid: dict[str, str] = {}  # Job name → uid, to forget the uid with the Job
        self._parked: dict[str, dict[str, Json]] = {}  # Job uid → Workloads waiting, by name
        self._known: dict[Kind, dict[str, str]] = {"Job": {}, "Pod": {}, "Workload": {}}

    def snapshot(
        self, jobs: Iterable[Json], pods: Iterable[Json], workloads: Iterable[Json]
    ) -> list[Observation]:
        """Map one full listing to observations; Workloads of unknown Jobs are left out."""
        out: list[Observation] = []
        with self._lock:
            for job in jobs:
                task = labelled_task(job)
                if task is None:
                    continue
                self._learn(task, job)
                out.append(Observation(task, "Job", name_of(job), job))
            for pod in pods:
                task = labelled_task(pod)
                if task is not None:
                    out.append(Observation(task, "Pod", name_of(pod), pod))
            for workload in workloads:
                task = self._workload_task(workload)
                if task is not None:
                    out.append(Observation(task, "Workload", name_of(workload), workload))
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
            if kind == "Workload":
                self._parked = {}
            out: list[Observation] = []
            for item in items:
                out.extend(self._update(kind, item))
            for name, task in before.items():
                if name not in self._known[kind]:
                    if kind == "Job":
                        self._forget(name)
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
        if uid is not None:
            self._uid_task.pop(uid, None)
            self._parked.pop(uid, None)

    def _workload_task(self, workload: Json) -> str | None:
        uid = job_uid(workload)
        if uid is not None and uid in self._uid_task:
            return self._uid_task[uid]
        # Its Job may be gone already (deleted in the background) while the Workload lingers.
        return self._known["Workload"].get(name_of(workload))

    def _update(self, kind: Kind, obj: Json) -> list[Observation]:
        name = name_of(obj)
        if kind == "Workload":
            task = self._workload_task(obj)
            if task is None:
                uid = job_uid(obj)
                if uid is not None:
                    self._parked.setdefault(uid, {})[name] = obj
                return []
            self._known["Workload"][name] = task
            return [Observation(task, "Workload", name, obj)]
        task = labelled_task(obj)
        if task is None:
            return []
        self._known[kind][name] = task
        out = [Observation(task, kind, name, obj)]
        uid = self._learn(task, obj) if kind == "Job" else None
        if uid is not None:
            for parked_name, workload in self._parked.pop(uid, {}).items():
                self._known["Workload"][parked_name] = task
                out.append(Observation(task, "Workload", parked_name, workload))
        return out

    def _remove(self, kind: Kind, obj: Json) -> list[Observation]:
        name = name_of(obj)
        task = self._known[kind].pop(name, None)
        if kind == "Workload":
            uid = job_uid(obj)
            if uid is not None:
                waiting = self._parked.get(uid)
                if waiting is not None:
                    waiting.pop(name, None)
                    if not waiting:
                        del self._parked[uid]
                if task is None:
                    task = self._uid_task.get(uid)
        else:
            task = task or labelled_task(obj)
        if kind == "Job":
            self._forget(name)
        return [Observation(task, kind, name, None)] if task else []
