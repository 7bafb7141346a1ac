"""LocalCluster: Kueue and kubelet on one machine, behind the same protocol as Kubernetes."""

from __future__ import annotations

import collections
import copy
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from worker.cluster.base import Kind, Observation, PermanentError
from worker.cluster.local import admission, layers, objects, persist, process
from worker.cluster.local.pod import PodRunner
from worker.cluster.local.podimages import ImageSource

logger = logging.getLogger(__name__)

#: Observations kept for the watcher; beyond this the oldest go (its resync covers them).
MAX_EVENTS = 100_000


@dataclass
class _Task:
    """Everything the local runtime holds for one task."""

    task_id: str
    seq: int
    configmap: dict[str, Any]
    job: dict[str, Any]
    workload: dict[str, Any]
    requests: dict[str, int]
    pod: dict[str, Any] | None = None
    runner: PodRunner | None = None
    started_at: float | None = None
    finished_at: float | None = None
    failure: tuple[str, str] | None = None
    deleting: bool = False
    gone: threading.Event = field(default_factory=threading.Event)

    def admitted(self) -> bool:
        """Tell whether Kueue's part admitted the Job (its pod exists from then on)."""
        return self.pod is not None


class LocalCluster:
    """Runs task Jobs on this machine: FIFO admission against a quota, pods in bwrap sandboxes."""

    def __init__(
        self,
        root: Path,
        cpu_quota: float,
        memory_quota_bytes: int,
        bwrap: str = "bwrap",
        keep: tuple[str, ...] = (),
        images: ImageSource | None = None,
    ) -> None:
        """Run pods under ``root``; ``keep`` are host paths every sandbox must still see;
        ``images`` pulls the images of containers (None: all run on the host's root)."""
        self._bwrap, self._keep, self._images = process.check_bwrap(bwrap), keep, images
        self._note = objects.runtime_note(
            images is not None, images.why_read_only if images else ""
        )
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._lockfile: TextIO = persist.lock(self._root, "runs the local runtime")
        if layers.detach_under(self._root):
            logger.info("detached the container layers a previous server left mounted")
        self._quota = {"cpu": round(cpu_quota * 1000), "memory": int(memory_quota_bytes)}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._events: collections.deque[Observation] = collections.deque()
        self._tasks: dict[str, _Task] = {}
        self._seq = 0
        self._version = 0
        self._closed = False
        self._stop = threading.Event()
        with self._lock:
            self._reload()
            self._admit()
        self._clock = threading.Thread(target=self._tick, name="local-cluster-clock", daemon=True)
        self._clock.start()

    # -- the protocol -----------------------------------------------------------------------

    def submit(self, task_id: str, configmap: dict[str, Any], job: dict[str, Any]) -> None:
        """Create the task's ConfigMap and suspended Job; existing objects are success."""
        try:
            objects.check_job(task_id, job)
            objects.check_configmap(configmap)
            requests = admission.pod_requests(job["spec"]["template"]["spec"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(f"task {task_id}: invalid Job or ConfigMap: {exc}") from exc
        with self._lock:
            if self._closed:
                raise PermanentError("the local runtime is closed")
            if task_id in self._tasks:
                return
            name = job["metadata"]["name"]
            if any(t.job["metadata"]["name"] == name for t in self._tasks.values()):
                raise PermanentError(f"task {task_id}: a Job named {name} exists for another task")
            namespace = job["metadata"].get("namespace", "default")
            stored_job = objects.new_job(job, namespace)
            self._seq += 1
            task = _Task(
                task_id,
                self._seq,
                objects.new_configmap(configmap, namespace),
                stored_job,
                objects.new_workload(stored_job, requests),
                requests,
            )
            self._tasks[task_id] = task
            self._save(task, "configmap", task.configmap)
            self._emit(task, "Job")
            self._emit(task, "Workload")
            logger.info("task %s: Job %s created, suspended", task_id, name)
            self._admit()

    def delete(self, task_id: str) -> None:
        """Kill the task's processes at once and delete its Job, Pod, Workload and ConfigMap."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            if task.deleting:
                gone = task.gone
                runner = None
            else:
                task.deleting = True
                runner, gone = task.runner, None
        if gone is not None:
            gone.wait()
            return
        if runner is not None:
            runner.kill()
        trash = self._root / ".trash" / uuid.uuid4().hex
        with self._lock:
            pairs: list[tuple[Kind, dict[str, Any] | None]] = [
                ("Pod", task.pod),
                ("Workload", task.workload),
                ("Job", task.job),
            ]
            for kind, obj in pairs:
                if obj is not None:
                    self._event(Observation(task_id, kind, obj["metadata"]["name"], None))
            del self._tasks[task_id]
            # Renamed under the lock, so a new submit of the same task finds a clean place.
            trash.mkdir(parents=True, exist_ok=True)
            for directory in self._dirs(task):
                if directory.exists():
                    directory.rename(trash / directory.name)
            logger.info("task %s: deleted", task_id)
            self._admit()
            task.gone.set()
        persist.remove(trash)

    def exists(self, task_id: str) -> bool:
        """Tell whether the task's Job exists."""
        with self._lock:
            return task_id in self._tasks

    def snapshot(self) -> list[Observation]:
        """Return every Job, Pod and Workload that exists now."""
        with self._lock:
            out: list[Observation] = []
            for task in self._tasks.values():
                pairs: list[tuple[Kind, dict[str, Any] | None]] = [
                    ("Job", task.job),
                    ("Workload", task.workload),
                    ("Pod", task.pod),
                ]
                for kind, obj in pairs:
                    if obj is not None:
                        name = obj["metadata"]["name"]
                        out.append(Observation(task.task_id, kind, name, copy.deepcopy(obj)))
            return out

    def watch(self, timeout: float) -> Iterator[Observation]:
        """Yield changes as they happen, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                while not self._events and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._changed.wait(left)
                if not self._events:
                    return
                observation = self._events.popleft()
            yield observation
            if time.monotonic() >= deadline:
                return

    def read_log(
        self,
        task_id: str,
        container: str,
        limit_bytes: int | None = None,
        *,
        pod: str | None = None,
    ) -> str:
        """Return the last ``limit_bytes`` of a container's log in ``pod`` (default: current)."""
        with self._lock:
            task = self._tasks.get(task_id)
            current = None if task is None or task.pod is None else task.pod["metadata"]["name"]
        pod = pod or (None if current is None else str(current))
        if pod is None or "/" in container or "/" in pod or pod.startswith("."):
            return ""
        return persist.read_log(self._root / pod / "logs" / f"{container}.log", limit_bytes)

    def close(self) -> None:
        """Kill every task's processes and stop the runtime's threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runners = [t.runner for t in self._tasks.values() if t.runner is not None]
            self._changed.notify_all()
        self._stop.set()
        for runner in runners:
            runner.kill()
        self._clock.join()
        self._lockfile.close()

    # -- admission and pods -------------------------------------------------------------------

    def _admit(self) -> None:
        """Run one StrictFIFO pass: admit the head while it fits, explain why the rest wait."""
        if self._closed:
            return  # close() is killing the pods it knows of; start no new ones
        waiting = {
            t.workload["metadata"]["name"]: t
            for t in sorted(self._tasks.values(), key=lambda t: t.seq)
            if not t.admitted() and not t.deleting
        }
        used = [t.requests for t in self._tasks.values() if t.admitted() and t.finished_at is None]
        queue = [admission.Candidate(name, t.requests) for name, t in waiting.items()]
        decision = admission.schedule(queue, used, self._quota)
        for name in decision.admitted:
            self._start(waiting[name])
        for name, message in decision.pending.items():
            task = waiting[name]
            if objects.workload_pending(task.workload, message):
                logger.info("task %s: pending: %s", task.task_id, message)
                self._emit(task, "Workload")

    def _start(self, task: _Task) -> None:
        task.started_at = time.monotonic()
        objects.workload_admitted(task.workload, task.requests, self._note)
        self._emit(task, "Workload")
        objects.job_resumed(task.job)
        self._emit(task, "Job")
        task.pod = objects.new_pod(task.job, self._note)
        pod_name = task.pod["metadata"]["name"]
        self._emit(task, "Pod")
        configmaps = {task.configmap["metadata"]["name"]: task.configmap}
        task.runner = PodRunner(
            task.pod,
            self._root / pod_name,
            configmaps,
            lambda status: self._pod_changed(task.task_id, pod_name, status),
            task_id=task.task_id,
            bwrap=self._bwrap,
            keep=self._keep,
            images=self._images,
        )
        logger.info("task %s: admitted; pod %s starts", task.task_id, pod_name)
        task.runner.start()

    def _pod_changed(self, task_id: str, pod_name: str, status: dict[str, Any]) -> None:
        """Take a pod's new status from its runner; finish the Job when the pod is done."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.deleting or task.pod is None:
                return
            if task.pod["metadata"]["name"] != pod_name:
                return
            task.pod["status"] = status
            self._emit(task, "Pod")
            before = copy.deepcopy(task.job["status"])
            phase = status.get("phase")
            if phase in {"Succeeded", "Failed"} and task.finished_at is None:
                self._finish(task, phase == "Succeeded")
                self._admit()
                return
            objects.job_follows_pod(task.job, status)
            if task.job["status"] != before:
                self._emit(task, "Job")

    def _finish(self, task: _Task, succeeded: bool) -> None:
        task.finished_at = time.monotonic()
        if succeeded:
            reason, message = "CompletionsReached", "Reached expected number of succeeded pods"
        else:
            reason, message = task.failure or (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        objects.job_finished(task.job, succeeded, reason, message)
        self._emit(task, "Job")
        done = "Job finished successfully" if succeeded else message
        objects.workload_finished(task.workload, succeeded, done)
        self._emit(task, "Workload")
        logger.info("task %s: Job %s", task.task_id, "complete" if succeeded else reason)

    def _tick(self) -> None:
        """Enforce activeDeadlineSeconds and ttlSecondsAfterFinished, as the controllers do."""
        while not self._stop.wait(0.5):
            expired: list[str] = []
            with self._lock:
                now = time.monotonic()
                for task in self._tasks.values():
                    spec = task.job["spec"]
                    ttl = spec.get("ttlSecondsAfterFinished")
                    if task.finished_at is not None:
                        if ttl is not None and now - task.finished_at >= float(ttl):
                            expired.append(task.task_id)
                        continue
                    deadline = spec.get("activeDeadlineSeconds")
                    if task.runner is None or deadline is None or task.failure is not None:
                        continue
                    if task.started_at is not None and now - task.started_at >= float(deadline):
                        task.failure = (
                            "DeadlineExceeded",
                            "Job was active longer than specified deadline",
                        )
                        task.runner.interrupt(*task.failure)
            for task_id in expired:
                logger.info("task %s: ttlSecondsAfterFinished passed; deleting", task_id)
                self.delete(task_id)

    # -- events and files ---------------------------------------------------------------------

    def _emit(self, task: _Task, kind: Kind) -> None:
        obj = {"Job": task.job, "Workload": task.workload, "Pod": task.pod}[kind]
        assert obj is not None
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        self._save(task, kind.lower(), obj)
        self._event(Observation(task.task_id, kind, obj["metadata"]["name"], copy.deepcopy(obj)))

    def _event(self, observation: Observation) -> None:
        if len(self._events) >= MAX_EVENTS:
            self._events.popleft()
            logger.warning("no watcher drains the local runtime's events; dropping the oldest")
        self._events.append(observation)
        self._changed.notify_all()

    def _dirs(self, task: _Task) -> list[Path]:
        dirs = [self._root / task.job["metadata"]["name"]]
        if task.pod is not None:
            dirs.append(self._root / task.pod["metadata"]["name"])
        return dirs

    def _save(self, task: _Task, what: str, obj: dict[str, Any]) -> None:
        directory = self._root / task.job["metadata"]["name"]
        persist.save(directory, task.task_id, task.seq, what, obj)

    def _reload(self) -> None:
        """Take back the objects a previous process left; its pods died with it."""
        for record in persist.load(self._root):
            job, pod = record.objects["job"], record.objects.get("pod")
            task = _Task(
                record.task_id,
                record.seq,
                record.objects["configmap"],
                job,
                record.objects["workload"],
                admission.pod_requests(job["spec"]["template"]["spec"]),
                pod=pod,
            )
            self._seq = max(self._seq, task.seq)
            self._tasks[task.task_id] = task
            if pod is not None and pod["status"].get("phase") not in {"Succeeded", "Failed"}:
                persist.orphan(pod)
                logger.info("task %s: its pod ended with the previous process", task.task_id)
                self._emit(task, "Pod")
                self._finish(task, False)
            elif pod is not None:
                task.finished_at = time.monotonic()
