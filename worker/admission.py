"""Between a Job and its running pod: priority classes, admission checks, refused pods (pure).

* Kueue creates no Workload for a Job whose WorkloadPriorityClass does not exist. Only Kueue's
  main branch says so, in a Warning Event ``WorkloadPriorityClassNotFound``
  (kubernetes-sigs/kueue#13775); v0.15 to v0.19 only log it. So the worker checks the class
  when it submits and marks the Job with :data:`PRIORITY_CHECKED`, and a Job that asks for a
  class nobody checked and gets no Workload is put down to that class (:func:`unchecked_class`).
* Kueue reserves quota, then waits for the Workload's admission checks (ProvisioningRequest,
  MultiKueue, ...); meanwhile its ``Admitted`` condition only says "The workload has not all
  checks ready": :func:`checks_waiting` gives each check's own state and message instead.
* Once the Workload is admitted the Job controller creates the pod. When the API server refuses
  it, the Job controller only records a Warning Event ``FailedCreate`` on the Job ("Error
  creating: <the API server's message>") and tries again with backoff, while the Workload keeps
  its quota: :func:`refusal` reads those Events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Json = dict[str, Any]

PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
PRIORITY_MISSING = "WorkloadPriorityClassNotFound"
#: The worker's annotation on a Job: the WorkloadPriorityClass it found to exist at submission.
PRIORITY_CHECKED = "kueue-tes/priority-class-checked"
_NOT_FOUND = re.compile(r'"([^"]+)" not found')
#: The reason the Job controller gives a Warning Event when it cannot create a pod.
FAILED_CREATE = "FailedCreate"
_PREFIXES = ("(combined from similar events): ", "Error creating: ")
#: The ResourceQuota admission plugin's refusal: the quota frees up when other pods end.
QUOTA_EXCEEDED = "exceeded quota: "
#: Refusals that no retry heals: Pod Security, webhooks, LimitRange, quota needing limits, an
#: invalid pod. Anything else (a webhook that cannot be reached, a timeout) may pass.
_FINAL = (" is forbidden: ", "denied the request", " is invalid: ")
#: What to change, by what refused the pod (Kubernetes' own wording, see the tests' fixtures).
_HINTS = (
    (
        re.compile(r"violates PodSecurity"),
        "the task namespace's Pod Security level (pod-security.kubernetes.io/enforce) forbids "
        "the pod; hostPath volumes come from KUEUE_TES_FILE_ROOTS: the operator can drop them "
        "or label the namespace privileged (docs/troubleshooting.md)",
    ),
    (
        re.compile(r"denied the request"),
        "an admission webhook refused the pod; the operator must change its policy",
    ),
    (
        # LimitRanger refusing a request of "0", which what waits for its turn in the ready
        # layout asks for (worker/jobspec.py); older Kubernetes end the sentence with "."
        re.compile(r"request is 0(?!\w|\.\d)"),
        "in the ready pod layout (docs/task-pod.md) finish and the executors after the first "
        "request no cpu or memory of their own (they wait for their turn), which a LimitRange "
        "of the task namespace refuses (a per-Container min or maxLimitRequestRatio); the "
        "operator can drop those from it, or set KUEUE_TES_POD_LAYOUT=init, where every "
        "container requests the task's resources or KUEUE_TES_SIDECAR_CPU and "
        "KUEUE_TES_SIDECAR_MEMORY",
    ),
    (
        re.compile(r"usage per (Container|Pod) is"),
        "a LimitRange of the task namespace refuses the pod's requests or limits; ask for "
        "resources within it, or the operator can change it",
    ),
    (
        re.compile(QUOTA_EXCEEDED),
        "a ResourceQuota of the task namespace is used up; the pod is created once other pods "
        "end or the operator raises the quota",
    ),
    (
        re.compile(r"failed quota: "),
        "a ResourceQuota of the task namespace asks for what the pod does not set; the "
        "operator must change it",
    ),
)


@dataclass(frozen=True)
class Refusal:
    """The Job controller's latest refusal to create the task pod."""

    message: str  # the API server's message, without the Job controller's "Error creating: "
    final: bool  # no retry will succeed: the task ends
    since: float | None  # when the refusals began (epoch seconds), where the Events say

    @property
    def quota(self) -> bool:
        """A ResourceQuota of the namespace is full: it may free up."""
        return QUOTA_EXCEEDED in self.message


def checks_waiting(workload: Json | None) -> str | None:
    """Return what each admission check that is not Ready says, or None if none is listed."""
    checks = ((workload or {}).get("status") or {}).get("admissionChecks") or ()
    parts = []
    for check in checks:
        state = str(check.get("state") or "Pending")
        if state == "Ready":
            continue
        text = f"admission check {check.get('name', '?')} is {state}"
        message = str(check.get("message") or "").strip()
        parts.append(f"{text}: {message}" if message else text)
    return "; ".join(parts) or None


def _epoch(stamp: object) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _last(event: Json) -> float | None:
    series = event.get("series") or {}
    stamp = series.get("lastObservedTime") or event.get("lastTimestamp") or event.get("eventTime")
    return _epoch(stamp)


def _first(event: Json) -> float | None:
    return _epoch(event.get("firstTimestamp") or event.get("eventTime"))


def refused_pod(events: Iterable[Json], admitted_at: float | None) -> Refusal | None:
    """Return the latest ``FailedCreate`` since the Workload's admission (``admitted_at``).

    Events outlive the attempt they were about: one seen last before this admission is old.
    """
    found = [
        e
        for e in events
        if e.get("reason") == FAILED_CREATE
        and not (admitted_at is not None and (_last(e) or admitted_at) < admitted_at)
    ]
    if not found:
        return None
    latest = max(found, key=lambda e: _last(e) or 0.0)
    message = str(latest.get("message") or "").strip()
    for prefix in _PREFIXES:  # the event recorder's, when it aggregates; the Job controller's
        message = message[len(prefix) :] if message.startswith(prefix) else message
    final = QUOTA_EXCEEDED not in message and any(word in message for word in _FINAL)
    starts = [s for s in (_first(e) for e in found) if s is not None]
    since = max(min(starts), admitted_at) if starts and admitted_at else min(starts, default=None)
    return Refusal(message or "no message", final, since)


def explain(refusal: Refusal) -> str:
    """Return the API server's message and, where known, what to change."""
    hint = next((text for pattern, text in _HINTS if pattern.search(refusal.message)), None)
    return f"{refusal.message}; {hint}" if hint else refusal.message


def _meta(obj: Json | None) -> Json:
    meta = (obj or {}).get("metadata")
    return meta if isinstance(meta, dict) else {}


def _text(item: Json) -> str:
    reason, message = item.get("reason") or "", item.get("message")
    return f"{reason}: {message}" if message else str(reason)


def priority_missing(job: Json | None, workload: Json | None, events: Iterable[Json]) -> str | None:
    """Return what to tell the user when Kueue said the task's priority class does not exist."""
    conditions = ((workload or {}).get("status") or {}).get("conditions") or ()
    hits = [_text(c) for c in [*conditions, *events] if PRIORITY_MISSING in _text(c)]
    if not hits:
        return None
    name = (_meta(job).get("labels") or {}).get(PRIORITY_CLASS)
    if name is None and (found := _NOT_FOUND.search(hits[0])):
        name = found.group(1)
    what = f"WorkloadPriorityClass {name}" if name else "the WorkloadPriorityClass it asks for"
    return f"Kueue cannot queue the task: {what} does not exist; {_ASK}"


_ASK = "ask for an existing one (backend_parameters.priority_class) or for it to be created"


def unchecked_class(job: Json) -> str | None:
    """Return the WorkloadPriorityClass a Job asks for that the worker did not find, or None."""
    meta = _meta(job)
    wanted = (meta.get("labels") or {}).get(PRIORITY_CLASS)
    checked = (meta.get("annotations") or {}).get(PRIORITY_CHECKED)
    return str(wanted) if wanted and checked != wanted else None


def no_workload_for(job: Json, wanted: str, grace: float) -> str:
    """Return why a Job that asks for an unchecked class has had no Workload for ``grace``."""
    meta = _meta(job)
    return (
        f"Kueue has created no Workload for Job {meta.get('name', '?')} in {grace:g} s: the task "
        f"asks for WorkloadPriorityClass {wanted}, and Kueue creates no Workload (and, up to "
        f"v0.19, reports nothing) when that class does not exist; {_ASK}. If it exists, the "
        f"operator should check that Kueue manages namespace {meta.get('namespace', '?')}"
    )


def refusal(events: Iterable[Json], workload: Json | None, pod: Json | None) -> Refusal | None:
    """Return the refusal that keeps the admitted task without a running pod, or None."""
    phase = ((pod or {}).get("status") or {}).get("phase")
    if pod is not None and phase not in ("Succeeded", "Failed"):
        return None  # the pod exists: an earlier refusal is over
    conditions = ((workload or {}).get("status") or {}).get("conditions") or ()
    admitted = [c.get("lastTransitionTime") for c in conditions if c.get("type") == "Admitted"]
    stamps = [_epoch(t) for t in [*admitted, _meta(pod).get("creationTimestamp")]]
    return refused_pod(events, max((t for t in stamps if t is not None), default=None))
