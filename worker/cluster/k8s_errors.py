"""Kubernetes API answers → our cluster errors, with messages an operator can act on.

Pure: it sees an HTTP status and the API's ``Status`` body, never the client library, so that
only ``worker.cluster.kubernetes`` imports ``kubernetes`` (design section 3).
"""

from __future__ import annotations

import json
from typing import Any

from worker.cluster.base import ClusterError, PermanentError, TransientError

#: The RBAC name of each resource we touch, as a Role spells it.
JOBS = "jobs.batch"
PODS = "pods"
POD_LOGS = "pods/log"
CONFIGMAPS = "configmaps"
WORKLOADS = "workloads.kueue.x-k8s.io"
LEASES = "leases.coordination.k8s.io"
EVENTS = "events"
PRIORITY_CLASSES = "workloadpriorityclasses.kueue.x-k8s.io"
#: Resources that live in no namespace: RBAC for them is a ClusterRole.
CLUSTER_SCOPED = frozenset({PRIORITY_CLASSES})


class NotFound(PermanentError):
    """404: the object (or its namespace, or its API) does not exist."""


class Conflict(TransientError):
    """409: the object exists already, or changed since we read it."""


class Gone(TransientError):
    """410: a watch or list continuation is older than the API server keeps; list again."""


class Invalid(PermanentError):
    """400 or 422: the API server refused what we sent."""


def message(body: Any) -> str:
    """Return the ``message`` of a Kubernetes ``Status`` body (bytes, text or dict), or the text."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return body.strip()[:500]
        body = parsed
    if isinstance(body, dict):
        text = body.get("message") or body.get("reason")
        if text:
            return str(text)
    return "" if body is None else str(body)[:500]


def _hint_404(verb: str, resource: str, namespace: str) -> str:
    if resource == WORKLOADS and verb in ("list", "watch"):
        return (
            "the cluster does not serve kueue.x-k8s.io/v1beta2 Workloads; install a Kueue "
            "release that serves v1beta2"
        )
    if verb == "create":
        return f"check that the namespace {namespace} exists"
    return "it does not exist"


def from_status(
    status: int | None, body: Any, verb: str, resource: str, namespace: str
) -> ClusterError:
    """Return our error for an API answer of ``status`` to ``verb`` on ``resource``."""
    what = message(body) or "no message"
    scoped = resource in CLUSTER_SCOPED
    where = f"{verb} {resource} " + ("(cluster-scoped)" if scoped else f"in namespace {namespace}")
    if scoped and status == 403:
        return PermanentError(
            f"the service account lacks RBAC for {where} ({what}); grant it with a "
            "ClusterRole and ClusterRoleBinding (see docs/kubernetes-backend.md)"
        )
    if scoped and status == 404 and " not found" not in what:
        return NotFound(
            f"{where}: not found ({what}); the cluster does not serve kueue.x-k8s.io/v1beta2 "
            "WorkloadPriorityClasses: install Kueue v0.15 or newer"
        )
    if status == 404:
        return NotFound(f"{where}: not found ({what}); {_hint_404(verb, resource, namespace)}")
    if status == 409:
        return Conflict(f"{where}: conflict ({what})")
    if status == 410:
        return Gone(f"{where}: expired ({what})")
    if status == 401:
        return PermanentError(
            f"{where}: the API server did not accept our credentials ({what}); check the "
            "service account token, or the kubeconfig of the worker and watcher"
        )
    if status == 403:
        return PermanentError(
            f"the service account lacks RBAC for {verb} {resource} in namespace {namespace} "
            f"({what}); grant it with a Role and RoleBinding (see docs/kubernetes-backend.md)"
        )
    if status in (400, 422):
        return Invalid(f"{where}: the API server refused the request: {what}")
    if not status or status in (408, 429) or status >= 500:
        shown = "no answer" if not status else f"HTTP {status}"
        return TransientError(f"{where}: {shown} ({what}); will retry")
    return PermanentError(f"{where}: HTTP {status} ({what})")
