"""The Kubernetes backend's object operations: submit, delete and the watcher's Lease.

A base of :class:`worker.cluster.kubernetes.KubernetesCluster`, written against its four plain
object calls (``_create``, ``_read``, ``_replace``, ``_delete``), which raise only our errors:
this module never touches the ``kubernetes`` client itself.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

from worker import jobspec
from worker.cluster import k8s_errors, k8s_lease
from worker.cluster.base import TransientError
from worker.cluster.k8s_errors import CONFIGMAPS, JOBS, LEASES

log = logging.getLogger("worker.cluster.kubernetes")

Json = dict[str, Any]


class TaskObjects:
    """Creates and deletes a task's objects, and holds the watcher's Lease."""

    def _create(self, resource: str, body: Json) -> Json:
        raise NotImplementedError

    def _read(self, resource: str, name: str) -> Json:
        raise NotImplementedError

    def _replace(self, resource: str, name: str, body: Json) -> Json:
        raise NotImplementedError

    def _delete(self, resource: str, name: str) -> bool:
        raise NotImplementedError

    def submit(self, task_id: str, configmap: Json, job: Json) -> None:
        """Create the task's Job, then its ConfigMap owned by the Job; existing ones are success."""
        name = job["metadata"]["name"]
        try:
            created = self._create(JOBS, job)
            log.info("task %s: Job %s created", task_id, name)
        except k8s_errors.Conflict:
            try:
                created = self._read(JOBS, name)
            except k8s_errors.NotFound as exc:
                raise TransientError(f"task {task_id}: Job {name} vanished during submit") from exc
            log.info("task %s: Job %s exists already", task_id, name)
        owned = jobspec.own(configmap, created)
        try:
            self._create(CONFIGMAPS, owned)
        except k8s_errors.Conflict:
            self._adopt_configmap(task_id, owned)

    def _adopt_configmap(self, task_id: str, owned: Json) -> None:
        """Make an existing ConfigMap ours again if an older Job of the same name owned it."""
        meta = owned["metadata"]
        current = self._read(CONFIGMAPS, meta["name"])
        owners = (current.get("metadata") or {}).get("ownerReferences") or ()
        if any(ref.get("uid") == meta["ownerReferences"][0]["uid"] for ref in owners):
            return
        # Owned by a Job that is gone: the garbage collector would delete it under our pod.
        version = current["metadata"]["resourceVersion"]
        self._replace(
            CONFIGMAPS, meta["name"], {**owned, "metadata": {**meta, "resourceVersion": version}}
        )
        log.info("task %s: ConfigMap %s now owned by the current Job", task_id, meta["name"])

    def delete(self, task_id: str) -> None:
        """Delete the task's Job; its pod, Workload and ConfigMap go with it. Absent is fine."""
        name = jobspec.job_name(task_id)
        if self._delete(JOBS, name):
            log.info("task %s: Job %s deleted", task_id, name)
        elif self._delete(CONFIGMAPS, name):
            # A submit that stopped between its two creates can leave the ConfigMap alone.
            log.info("task %s: orphaned ConfigMap %s deleted", task_id, name)

    # -- the watcher's election -------------------------------------------------------------

    def try_lease(self, name: str, identity: str, duration_seconds: float) -> bool:
        """Acquire or renew the Lease ``name`` for ``identity``; False while another holds it."""
        try:
            current: Json | None = self._read(LEASES, name)
        except k8s_errors.NotFound:
            current = None
        seconds = max(1, math.ceil(duration_seconds))  # leaseDurationSeconds is an integer
        plan = k8s_lease.plan(current, name, identity, seconds, datetime.now(UTC))
        if plan.body is None:
            return False
        try:
            if plan.action == "create":
                self._create(LEASES, plan.body)
            else:
                self._replace(LEASES, name, plan.body)
        except (k8s_errors.Conflict, k8s_errors.NotFound):
            return False  # another candidate wrote first; it holds the lease this round
        return True

    def release_lease(self, name: str, identity: str) -> None:
        """Give up the Lease ``name`` if ``identity`` holds it, so a standby takes over at once."""
        try:
            body = k8s_lease.released(self._read(LEASES, name), identity, datetime.now(UTC))
            if body is not None:
                self._replace(LEASES, name, body)
        except (k8s_errors.NotFound, k8s_errors.Conflict):
            pass  # nothing to release, or another candidate has it already
