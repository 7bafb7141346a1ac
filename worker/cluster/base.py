"""The cluster protocol, its observations and errors (design section 12)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

#: Labels every object we create carries.
MANAGED_BY = "app.kubernetes.io/managed-by"
TASK_ID = "kueue-tes/task-id"
QUEUE_NAME = "kueue.x-k8s.io/queue-name"

#: What an observation shows: one of our Jobs or Pods, Kueue's Workload of a Job, or a Warning
#: Event about a Job (the Kubernetes backend reports those; the local runtime has none).
Kind = Literal["Job", "Pod", "Workload", "Event"]


class ClusterError(Exception):
    """The cluster refused or failed a request."""


class TransientError(ClusterError):
    """Worth retrying with backoff (timeouts, 5xx, conflicts)."""


class PermanentError(ClusterError):
    """Retrying will not help (invalid object, forbidden); the message says what to change."""


@dataclass(frozen=True)
class Observation:
    """One object as the cluster reports it; ``obj`` None means it was deleted."""

    task_id: str
    kind: Kind
    name: str
    obj: dict[str, Any] | None


class Cluster(Protocol):
    """What the worker and the watcher need of a cluster."""

    def submit(self, task_id: str, configmap: dict[str, Any], job: dict[str, Any]) -> None:
        """Create the task's ConfigMap and suspended Job; existing objects are success."""
        ...

    def delete(self, task_id: str) -> None:
        """Delete the task's Job (and with it its pod, Workload and ConfigMap); absent is fine."""
        ...

    def exists(self, task_id: str) -> bool:
        """Tell whether the task's Job exists."""
        ...

    def snapshot(self) -> list[Observation]:
        """Return every object of ours that exists now (a full resync)."""
        ...

    def watch(self, timeout: float) -> Iterator[Observation]:
        """Yield changes as they happen, for at most ``timeout`` seconds."""
        ...

    def read_log(
        self,
        task_id: str,
        container: str,
        limit_bytes: int | None = None,
        *,
        pod: str | None = None,
    ) -> str:
        """Return a container's log of the task's pod (at most ``limit_bytes``), or "".

        ``pod`` names the pod (the watcher's current one); default: the task's newest.
        Kubernetes returns the first ``limit_bytes``, the local runtime the last; the
        sequencer's report is far smaller than the limit the watcher asks for.
        """
        ...

    def close(self) -> None:
        """Stop background work and release resources."""
        ...


@runtime_checkable
class PriorityClasses(Protocol):
    """A cluster that can tell whether a Kueue WorkloadPriorityClass exists (Kubernetes can)."""

    def priority_class_exists(self, name: str) -> bool:
        """Tell whether the WorkloadPriorityClass ``name`` exists (a cluster-scoped read)."""
        ...
